//! The `sluice` binary: parse the command line, start telemetry, run the chosen command.

use std::process::ExitCode;

use clap::Parser;
use sluice::{
    settings::{Cli, Command},
    startup::{self, Application},
    telemetry,
};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init_tracing(cli.settings.log_format);
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(cli.settings).await,
        Command::Migrate => startup::open_store(&cli.settings, true)
            .await
            .map(|_| tracing::info!("migrations applied")),
        Command::Token(args) => {
            startup::mint_token(&cli.settings, &args).map(|token| println!("{token}"))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line naming the problem; no backtrace.
            eprintln!("sluice: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: sluice::settings::Settings) -> Result<(), startup::StartupError> {
    let app = Application::build(settings).await?;
    app.run_until(shutdown_signal()).await
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
