//! PostgreSQL for integration tests: the admin URL (given, a container, or a private server started
//! from the installed binaries) and one fresh database per test, dropped when the test is done.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::{AssertSqlSafe, Connection, PgConnection};
use tokio::sync::OnceCell;

use super::containers::{self, ContainerServer};
use super::process::{
    ServerThread, find_on_path, free_port, guarded_command, is_executable, pid_alive,
    running_as_root, user_ids,
};

const INSTALL_HINT: &str = "install PostgreSQL's server binaries (`apt-get install postgresql`, or \
     run `bash .ci/run`), or set SLUICE_TEST_DATABASE_URL to the admin URL of a PostgreSQL server";

/// Name prefix of the temporary directories private servers live in.
const DIR_PREFIX: &str = "sluice-test-pg-";

/// How long a private server may take from `initdb` to accepting connections.
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// The private server of this test process, when no URL was given; never dropped, so it lives until
/// the process exits and its parent-death signal stops it.
static SHARED_SERVER: OnceCell<PrivatePostgres> = OnceCell::const_new();

/// A container of the shared server, when a Docker engine answers; never dropped (the container
/// stops itself when this process exits, see `containers`).
static SHARED_CONTAINER: OnceCell<ContainerServer> = OnceCell::const_new();

/// PostgreSQL in a container on a free port (the image's own entrypoint runs `initdb`, trust
/// authentication for `postgres`), accepting connections.
async fn start_container() -> ContainerServer {
    let url = |port: u16| format!("postgres://postgres@127.0.0.1:{port}/postgres");
    containers::start_serving(
        "PostgreSQL",
        &containers::postgres_image(),
        &[("POSTGRES_HOST_AUTH_METHOD", "trust")],
        START_TIMEOUT,
        |port| {
            format!(
                "docker-entrypoint.sh postgres -p {port} -c listen_addresses=127.0.0.1 -c fsync=off"
            )
        },
        url,
        // The entrypoint starts a temporary server for initdb first; only the final one
        // listens on 127.0.0.1.
        |port| async move {
            match PgConnection::connect(&url(port)).await {
                Ok(mut connection) => sqlx::query("SELECT 1")
                    .execute(&mut connection)
                    .await
                    .is_ok(),
                Err(_) => false,
            }
        },
    )
    .await
}

/// Admin URL of a PostgreSQL server, in this order: `$SLUICE_TEST_DATABASE_URL` if set; else a
/// container this test process starts when a Docker engine answers (`containers`); else a private
/// server from the installed binaries. The server is shared by all tests of the binary.
///
/// Panics, saying what to install, when there is neither a URL nor PostgreSQL's binaries.
pub async fn postgres_admin_url() -> String {
    if let Some(url) = non_empty_env("SLUICE_TEST_DATABASE_URL") {
        return url;
    }
    if containers::use_containers() {
        return SHARED_CONTAINER
            .get_or_init(start_container)
            .await
            .url
            .clone();
    }
    SHARED_SERVER
        .get_or_init(start_private_postgres)
        .await
        .url
        .clone()
}

/// A PostgreSQL server started from the installed binaries in its own temporary directory, on a free
/// port of 127.0.0.1, with trust authentication for the `postgres` superuser.
///
/// Dropping it stops the server and removes the directory. If the process dies first, the server gets
/// SIGINT from the kernel and the next start in any test process removes the stale directory.
pub struct PrivatePostgres {
    /// Admin URL, `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub url: String,
    /// The port the server listens on.
    pub port: u16,
    /// Holds data directory, socket and log.
    root: PathBuf,
    server: ServerThread,
}

impl PrivatePostgres {
    /// The temporary directory holding the data directory, socket and log.
    pub fn root_dir(&self) -> &Path {
        &self.root
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        // SIGINT is PostgreSQL's fast shutdown: it disconnects clients and exits promptly.
        self.server.stop("INT");
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Starts a new private PostgreSQL server (ignoring `SLUICE_TEST_DATABASE_URL`).
///
/// Panics with what to install when PostgreSQL's binaries are missing, or with the server's log when
/// it does not come up within the start timeout.
pub async fn start_private_postgres() -> PrivatePostgres {
    let launched = ServerThread::start("sluice-test-postgres", launch_private_postgres).await;
    match launched {
        Ok((server, (url, port, root))) => PrivatePostgres {
            url,
            port,
            root,
            server,
        },
        Err(message) => panic!("cannot start a private PostgreSQL server: {message}"),
    }
}

/// Paths of the PostgreSQL programs a private server needs.
struct PostgresBinaries {
    initdb: PathBuf,
    postgres: PathBuf,
    pg_isready: Option<PathBuf>,
}

/// The newest `/usr/lib/postgresql/<version>/bin`, else `initdb` and `postgres` on `PATH`.
fn find_postgres_binaries() -> Option<PostgresBinaries> {
    let from_dir = |dir: &Path| -> Option<PostgresBinaries> {
        let initdb = dir.join("initdb");
        let postgres = dir.join("postgres");
        if !is_executable(&initdb) || !is_executable(&postgres) {
            return None;
        }
        let pg_isready = Some(dir.join("pg_isready")).filter(|p| is_executable(p));
        Some(PostgresBinaries {
            initdb,
            postgres,
            pg_isready,
        })
    };

    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versions.sort_by_key(|(version, _)| std::cmp::Reverse(*version));
    if let Some(found) = versions.iter().find_map(|(_, dir)| from_dir(dir)) {
        return Some(found);
    }

    let initdb = find_on_path("initdb")?;
    let real_dir = std::fs::canonicalize(&initdb)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf));
    if let Some(found) = real_dir.as_deref().and_then(from_dir) {
        return Some(found);
    }
    Some(PostgresBinaries {
        initdb,
        postgres: find_on_path("postgres")?,
        pg_isready: find_on_path("pg_isready"),
    })
}

/// Runs on the server thread: `initdb`, then `postgres` on a free port, then waits until it answers.
fn launch_private_postgres() -> Result<(std::process::Child, (String, u16, PathBuf)), String> {
    let binaries = find_postgres_binaries().ok_or_else(|| {
        format!("no initdb/postgres under /usr/lib/postgresql/*/bin or on PATH: {INSTALL_HINT}")
    })?;
    remove_stale_dirs();

    let root = std::env::temp_dir().join(format!(
        "{DIR_PREFIX}{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir(&root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
    let data = root.join("data");

    // initdb refuses to run as root, so root hands the directory to an unprivileged user.
    let run_as = if running_as_root() {
        let ids = user_ids("postgres")
            .or_else(|| user_ids("nobody"))
            .ok_or("running as root and neither the `postgres` nor the `nobody` OS user exists")?;
        std::os::unix::fs::chown(&root, Some(ids.0), Some(ids.1))
            .map_err(|e| format!("cannot chown {}: {e}", root.display()))?;
        Some(ids)
    } else {
        None
    };

    let initdb = guarded_command(&binaries.initdb, run_as, "KILL")
        .arg("-D")
        .arg(&data)
        .args([
            "--username=postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
        ])
        .current_dir(&root)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", binaries.initdb.display()))?;
    if !initdb.status.success() {
        return Err(format!(
            "initdb failed ({}): {}{}",
            initdb.status,
            String::from_utf8_lossy(&initdb.stdout),
            String::from_utf8_lossy(&initdb.stderr)
        ));
    }

    // Another process may take the free port before the server binds it: then try another.
    let mut last_error = String::new();
    for _ in 0..3 {
        let port = free_port();
        let log_path = root.join(format!("postgres-{port}.log"));
        let log = std::fs::File::create(&log_path)
            .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
        let log_err = log
            .try_clone()
            .map_err(|e| format!("cannot clone a log handle: {e}"))?;
        let mut child = guarded_command(&binaries.postgres, run_as, "INT")
            .arg("-D")
            .arg(&data)
            .arg("-k")
            .arg(&root)
            .args(["-p", &port.to_string()])
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=300",
                "-c",
                "lc_messages=C",
            ])
            .current_dir(&root)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", binaries.postgres.display()))?;

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                last_error = format!("postgres exited ({status}) on port {port}: {log}");
                break;
            }
            if postgres_ready(&binaries, port, &log_path) {
                let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
                return Ok((child, (url, port, root)));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(format!(
                    "postgres did not accept connections on 127.0.0.1:{port} within {}s: {log}",
                    START_TIMEOUT.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if !last_error.contains("already in use") {
            break;
        }
    }
    Err(last_error)
}

/// Whether the server on `port` accepts connections: `pg_isready` if installed, else its log line.
fn postgres_ready(binaries: &PostgresBinaries, port: u16, log_path: &Path) -> bool {
    match &binaries.pg_isready {
        Some(pg_isready) => Command::new(pg_isready)
            .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-t", "2"])
            .stdin(Stdio::null())
            .status()
            .is_ok_and(|s| s.success()),
        None => std::fs::read_to_string(log_path)
            .is_ok_and(|log| log.contains("ready to accept connections")),
    }
}

/// Removes the directories of private servers whose test process and postmaster are both gone
/// (left behind when a test process was killed).
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)) else {
            continue;
        };
        let Some(owner) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid_alive(owner) {
            continue;
        }
        let postmaster = std::fs::read_to_string(entry.path().join("data/postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<u32>().ok()));
        if postmaster.is_some_and(pid_alive) {
            continue;
        }
        let _ = std::fs::remove_dir_all(entry.path());
    }
}

/// A fresh, empty database for one test, dropped (`WITH (FORCE)`) when this guard drops.
pub struct TestDatabase {
    /// URL of the database (the admin URL with its database name replaced).
    pub url: String,
    /// The database's name, `sluice_test_<32 hex digits>`.
    pub name: String,
    admin_url: String,
}

/// Creates `sluice_test_<random>` on the server of [`postgres_admin_url`].
pub async fn fresh_database() -> TestDatabase {
    let admin_url = postgres_admin_url().await;
    let name = format!("sluice_test_{}", uuid::Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&admin_url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test PostgreSQL server: {e}"));
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("cannot create database {name}: {e}"));
    let _ = admin.close().await;
    TestDatabase {
        url: with_database(&admin_url, &name),
        name,
        admin_url,
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Our own thread and runtime: the test's runtime may be single-threaded and is blocked here.
        // Joining keeps the database from outliving a test process that exits right after.
        let dropper = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let Ok(runtime) = runtime else {
                return Err(format!("cannot build a runtime to drop database {name}"));
            };
            runtime.block_on(async move {
                let mut admin = PgConnection::connect(&admin_url)
                    .await
                    .map_err(|e| format!("cannot connect to drop database {name}: {e}"))?;
                sqlx::query(AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                )))
                .execute(&mut admin)
                .await
                .map_err(|e| format!("cannot drop database {name}: {e}"))?;
                let _ = admin.close().await;
                Ok(())
            })
        });
        match dropper.join() {
            Ok(Ok(())) => {}
            Ok(Err(message)) => eprintln!("warning: {message}"),
            Err(_) => eprintln!(
                "warning: the thread dropping database {} panicked",
                self.name
            ),
        }
    }
}

/// `url` with its database (path) replaced by `database`, keeping credentials and query parameters.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let authority_end = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{database}", &base[..authority_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// The value of an environment variable, if set and not blank.
pub(crate) fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}
