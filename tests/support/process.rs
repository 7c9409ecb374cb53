//! Processes the test binary starts: free ports, finding programs, signals, and server children that
//! are stopped when the test process exits.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::thread::JoinHandle;

/// Settings a test's `sluice` process must never inherit from whoever runs the tests: each test
/// says what it wants.
const INHERITED_SETTINGS: [&str; 12] = [
    "DATABASE_URL",
    "REDIS_URL",
    "REDIS_PASSWORD",
    "SLUICE_JWT_HS256_SECRET",
    "SLUICE_JWT_HS256_SECRET_FILE",
    "SLUICE_JWT_PUBLIC_KEYS",
    "SLUICE_JWT_ISSUER",
    "SLUICE_JWT_AUDIENCE",
    "SLUICE_FAILURE_MODE",
    "SLUICE_MEMORY_MAX_KEYS",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
];

/// A command running this build's `sluice` binary with none of [`INHERITED_SETTINGS`] in its
/// environment.
pub fn sluice_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    for name in INHERITED_SETTINGS {
        command.env_remove(name);
    }
    command
}

/// A free TCP port on 127.0.0.1 (free when asked; a server should retry on another if it loses a race).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap_or_else(|e| panic!("cannot bind an ephemeral port on 127.0.0.1: {e}"));
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("cannot read the address of a bound listener: {e}"))
        .port()
}

/// Whether a Sluice on 127.0.0.1:`http_port` answers `GET /readyz` with 200 (policies loaded).
pub fn readyz_is_ok(http_port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", http_port)) else {
        return false;
    };
    let _ = stream.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200")
}

/// The first executable called `name` on `PATH`.
pub(crate) fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// Whether `path` is a regular file someone may execute.
pub(crate) fn is_executable(path: &Path) -> bool {
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Whether this process runs as root (the owner of `/proc/self` is our effective uid).
pub(crate) fn running_as_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// Whether a process with this id exists (zombies included).
pub(crate) fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Sends the named signal (`STOP`, `CONT`, `INT`, `KILL`, …) to `pid`.
pub(crate) fn send_signal(pid: u32, signal: &str) -> Result<(), String> {
    // The shell's own `kill` is always there and knows signal names on every architecture.
    let status = Command::new("sh")
        .args([
            "-c",
            "kill -s \"$1\" \"$2\"",
            "sh",
            signal,
            &pid.to_string(),
        ])
        .status()
        .map_err(|e| format!("cannot run sh to send SIG{signal} to {pid}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("kill -s {signal} {pid} failed: {status}"))
    }
}

/// A numeric uid and gid of an OS user, looked up with `id`.
pub(crate) fn user_ids(user: &str) -> Option<(u32, u32)> {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, user]).output().ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8(out.stdout).ok()?.trim().parse().ok()
    };
    Some((id("-u")?, id("-g")?))
}

/// A command running `program` that receives `death_signal` when the thread that spawns it exits
/// (through `setpriv --pdeathsig`, which then execs `program`, so the child's pid is the program's),
/// and, with `run_as`, under that uid/gid.
pub(crate) fn guarded_command(
    program: &Path,
    run_as: Option<(u32, u32)>,
    death_signal: &str,
) -> Command {
    match find_on_path("setpriv") {
        Some(setpriv) => {
            let mut command = Command::new(setpriv);
            if let Some((uid, gid)) = run_as {
                command.arg(format!("--reuid={uid}"));
                command.arg(format!("--regid={gid}"));
                command.arg("--clear-groups");
            }
            command.arg(format!("--pdeathsig={death_signal}"));
            command.arg(program);
            command
        }
        None => {
            assert!(
                run_as.is_none(),
                "setpriv is needed to run {} as an unprivileged user: apt-get install util-linux",
                program.display()
            );
            Command::new(program)
        }
    }
}

/// A server child owned by a thread that does nothing but wait for it.
///
/// The parent-death signal fires when the *thread* that forked the child ends, and test threads end
/// with their test; a dedicated thread lives until the child exits or the whole process does.
pub(crate) struct ServerThread {
    pid: u32,
    waiter: Option<JoinHandle<()>>,
}

impl ServerThread {
    /// Runs `launch` on a new thread; `launch` spawns the child and waits (blocking) until it is ready.
    /// The thread then reaps the child when it exits.
    pub(crate) async fn start<T, F>(name: &str, launch: F) -> Result<(ServerThread, T), String>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<(Child, T), String> + Send + 'static,
    {
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let waiter = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || match launch() {
                Ok((mut child, value)) => {
                    let pid = child.id();
                    if ready_tx.send(Ok((pid, value))).is_ok() {
                        let _ = child.wait();
                    } else {
                        let _ = child.kill();
                        let _ = child.wait();
                    }
                }
                Err(message) => {
                    let _ = ready_tx.send(Err(message));
                }
            })
            .map_err(|e| format!("cannot spawn the {name} thread: {e}"))?;
        match ready_rx.await {
            Ok(Ok((pid, value))) => Ok((
                ServerThread {
                    pid,
                    waiter: Some(waiter),
                },
                value,
            )),
            Ok(Err(message)) => Err(message),
            Err(_) => Err(format!("the {name} thread ended without reporting")),
        }
    }

    /// The server's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends `signal` and waits until the child has exited.
    pub(crate) fn stop(&mut self, signal: &str) {
        if let Some(waiter) = self.waiter.take() {
            let _ = send_signal(self.pid, signal);
            let _ = waiter.join();
        }
    }

    /// Whether the child is still being waited for.
    pub(crate) fn is_running(&self) -> bool {
        self.waiter.as_ref().is_some_and(|w| !w.is_finished())
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        self.stop("KILL");
    }
}
