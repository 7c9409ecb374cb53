//! Sluice's real [`Application`] started in-process for the benchmarks (`benches/checks.rs` and
//! `benches/tower_layer.rs` include this file with `#[path]`): its own tokio runtime with threads
//! named `sluice-srv`, an SQLite database, and the CPU each group of threads used.

use std::{collections::BTreeMap, net::SocketAddr, path::Path, time::Duration};

use clap::Parser;
use sluice::{
    settings::{Cli, Settings},
    startup::{Application, StartupError},
};
use tokio::{runtime::Runtime, sync::oneshot, task::JoinHandle};

/// A running Sluice; [`Server::shutdown`] stops it.
pub struct Server {
    /// The server's runtime (a benchmark may run admin calls on it).
    pub runtime: Runtime,
    pub grpc_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), StartupError>>,
}

/// Starts Sluice on `threads` worker threads, with its policies in the SQLite file `database`,
/// tokens signed with `hs256_secret`, in-process counters unless `configure` sets a Redis URL.
/// No setting comes from the environment of whoever runs the benchmark.
pub fn start(
    threads: usize,
    database: &Path,
    hs256_secret: &str,
    configure: impl FnOnce(&mut Settings),
) -> Server {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("sluice-srv")
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let cli = Cli::try_parse_from([
        "sluice".to_owned(),
        "--grpc-addr=127.0.0.1:0".to_owned(),
        "--http-addr=127.0.0.1:0".to_owned(),
        format!("--database-url=sqlite://{}", database.display()),
        format!("--jwt-hs256-secret={hs256_secret}"),
    ])
    .expect("bench settings parse");
    let mut settings: Settings = cli.settings;
    settings.jwt_hs256_secret_file = None;
    settings.jwt_public_keys = None;
    settings.jwt_issuer = None;
    settings.jwt_audience = None;
    settings.redis_url = None;
    settings.redis_password = None;
    configure(&mut settings);
    let app = runtime
        .block_on(Application::build(settings))
        .unwrap_or_else(|err| panic!("Sluice did not start: {err}"));
    let grpc_addr = app.grpc_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = runtime.spawn(app.run_until(async move {
        let _ = stopped.await;
    }));
    Server {
        runtime,
        grpc_addr,
        stop: Some(stop),
        task,
    }
}

impl Server {
    /// Stops the server and waits (at most 10 s) for it.
    pub fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self.task;
        let _ = self
            .runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(10), task).await });
        self.runtime.shutdown_timeout(Duration::from_secs(2));
    }
}

/// CPU seconds used by this process's threads, by thread-name prefix: `sluice` (`sluice-srv`),
/// `loadgen`, and `other`.
pub fn thread_cpu() -> BTreeMap<String, f64> {
    let mut by_name = BTreeMap::new();
    let ticks = 100.0; // USER_HZ on Linux.
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return by_name;
    };
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // Fields after the parenthesised name: state is 3rd, utime 14th, stime 15th.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let cpu = fields
            .get(11)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            + fields
                .get(12)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0);
        let name = comm.trim();
        let group = if name.starts_with("sluice-srv") {
            "sluice"
        } else if name.starts_with("loadgen") {
            "loadgen"
        } else {
            "other"
        };
        *by_name.entry(group.to_owned()).or_insert(0.0) += cpu / ticks;
    }
    by_name
}
