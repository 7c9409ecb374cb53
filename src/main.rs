//! The `sluice` binary: parse the command line, start telemetry, run the chosen command.

use std::process::ExitCode;

use clap::{CommandFactory, Parser, error::ContextKind, error::ErrorKind};
use sluice::{
    settings::{Cli, Command},
    startup::{self, Application},
    telemetry,
};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err)
            if matches!(
                err.kind(),
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
            ) =>
        {
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("sluice: {}", settings_error_line(&err));
            return ExitCode::from(2);
        }
    };
    let telemetry = match telemetry::init_tracing(cli.settings.log_format) {
        Ok(guard) => guard,
        Err(err) => {
            eprintln!("sluice: {err}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(cli.settings).await,
        Command::Migrate => startup::open_store(&cli.settings, true)
            .await
            .map(|_| tracing::info!("migrations applied")),
        Command::Token(args) => {
            startup::mint_token(&cli.settings, &args).map(|token| println!("{token}"))
        }
    };
    // Last step of shutdown: flush buffered spans.
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line naming the problem, each cause once; no backtrace.
            eprintln!("sluice: {}", telemetry::error_chain(&err));
            ExitCode::FAILURE
        }
    }
}

/// A command-line or environment error as one line, naming the environment variable behind the
/// flag when there is one.
fn settings_error_line(err: &clap::Error) -> String {
    let rendered = err.render().to_string();
    let first = rendered
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ")
        .to_owned();
    let long = err.get(ContextKind::InvalidArg).and_then(|arg| {
        let shown = arg.to_string();
        Some(
            shown
                .split_whitespace()
                .next()?
                .trim_start_matches("--")
                .to_owned(),
        )
    });
    let env = long.as_deref().and_then(|long| {
        Cli::command()
            .get_arguments()
            .find(|a| a.get_long() == Some(long))
            .and_then(|a| a.get_env())
            .map(|env| env.to_string_lossy().into_owned())
    });
    match (long, env) {
        (Some(long), Some(env)) => format!("{first} (set by --{long} or {env})"),
        _ => first,
    }
}

async fn serve(settings: sluice::settings::Settings) -> Result<(), startup::StartupError> {
    // Handlers first: the listeners are bound during `build`, and a SIGTERM that arrives once
    // they accept connections must already mean "shut down cleanly", not the default "die".
    let shutdown = shutdown_signal()
        .map_err(|err| startup::StartupError::Serve(format!("signal handlers: {err}")))?;
    let app = Application::build(settings).await?;
    app.run_until(shutdown).await
}

/// Registers the SIGTERM and SIGINT handlers now; the future completes on either.
#[cfg(unix)]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {},
            _ = interrupt.recv() => {},
        }
    })
}

/// Completes on Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
