//! Test servers from containers, with the `testcontainers` crate, whenever a Docker engine answers
//! and no server URL was given: the official `redis` and `postgres` images by default, or the
//! images `SLUICE_TEST_REDIS_IMAGE` / `SLUICE_TEST_POSTGRES_IMAGE` name (`.ci/run` builds local
//! ones where no registry can be reached).
//!
//! Every container runs on the host network on a port the test picked, so test traffic stays on
//! loopback. It shares the host's process namespace and watches the test process: when that exits
//! (statics are never dropped, and a failed test may abort), the server inside stops and Docker
//! removes the container, so nothing outlives the test run.
//!
//! `SLUICE_TEST_CONTAINERS=0` turns this off (servers then come from the installed binaries);
//! an engine that answers but cannot start the image is an error that says so, never a silent
//! fall-back.

use std::future::Future;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use testcontainers::{ContainerAsync, GenericImage, ImageExt, core::WaitFor, runners::AsyncRunner};

use super::postgres::non_empty_env;

/// The official images, used unless an environment variable names another.
pub(crate) const DEFAULT_REDIS_IMAGE: &str = "redis:7";
pub(crate) const DEFAULT_POSTGRES_IMAGE: &str = "postgres:16";

/// Whether servers should come from containers: a Docker engine answers `/_ping` on its socket
/// (`DOCKER_HOST=unix://…` or `/var/run/docker.sock`), and `SLUICE_TEST_CONTAINERS` is not `0`.
pub fn use_containers() -> bool {
    static ANSWERS: OnceLock<bool> = OnceLock::new();
    *ANSWERS.get_or_init(|| {
        if non_empty_env("SLUICE_TEST_CONTAINERS").as_deref() == Some("0") {
            return false;
        }
        engine_socket().is_some_and(|socket| ping(&socket))
    })
}

fn engine_socket() -> Option<PathBuf> {
    match non_empty_env("DOCKER_HOST") {
        Some(host) => host.strip_prefix("unix://").map(PathBuf::from),
        None => Some(PathBuf::from("/var/run/docker.sock")),
    }
}

fn ping(socket: &PathBuf) -> bool {
    let Ok(mut stream) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    if stream
        .write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.") && answer.contains(" 200 ") && answer.ends_with("OK")
}

/// A shared server in a container; the container lives as long as this value (for the shared
/// servers: until the test process exits).
pub(crate) struct ContainerServer {
    /// How tests reach it.
    pub(crate) url: String,
    _container: ContainerAsync<GenericImage>,
}

/// A server (`what`, for messages) in a container of `image` on a free port: `command(port)`
/// starts it, `answers(port)` says whether it serves yet, `url(port)` is how tests reach it. A
/// container that exits before it answers (most likely its port was taken meanwhile) is replaced
/// on another port; `timeout` bounds the whole start.
pub(crate) async fn start_serving<Answers, Ready>(
    what: &str,
    image: &str,
    env: &[(&str, &str)],
    timeout: Duration,
    command: impl Fn(u16) -> String,
    url: impl Fn(u16) -> String,
    answers: Answers,
) -> ContainerServer
where
    Answers: Fn(u16) -> Ready,
    Ready: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let port = super::process::free_port();
        let container = start(image, &command(port), env)
            .await
            .unwrap_or_else(|message| panic!("{message}"));
        while Instant::now() < deadline {
            if answers(port).await {
                return ContainerServer {
                    url: url(port),
                    _container: container,
                };
            }
            if !container.is_running().await.unwrap_or(false) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            Instant::now() < deadline,
            "{what} in a container of {image} did not answer within {timeout:?}"
        );
    }
}

/// A server in a container of `image`, on the host network, running `command` (a shell command
/// line) until the test process exits.
async fn start(
    image: &str,
    command: &str,
    env: &[(&str, &str)],
) -> Result<ContainerAsync<GenericImage>, String> {
    let (name, tag) = image.rsplit_once(':').unwrap_or((image, "latest"));
    let test_pid = std::process::id();
    // The server runs in the background; the shell ends it once the test process is gone.
    let script = format!(
        "{command} & server=$!; \
         while kill -0 {test_pid} 2>/dev/null && kill -0 $server 2>/dev/null; do sleep 1; done; \
         kill $server 2>/dev/null; wait $server"
    );
    let mut request = GenericImage::new(name, tag)
        .with_wait_for(WaitFor::Nothing)
        .with_entrypoint("sh")
        .with_cmd(["-c", script.as_str()])
        .with_network("host")
        .with_startup_timeout(Duration::from_secs(60))
        .with_host_config_modifier(|config| {
            config.pid_mode = Some("host".to_owned());
            config.auto_remove = Some(true);
        });
    for (key, value) in env {
        request = request.with_env_var(*key, *value);
    }
    request.start().await.map_err(|err| {
        format!(
            "a Docker engine answers, but the container of {image} did not start: {err}. Set \
             SLUICE_TEST_REDIS_IMAGE / SLUICE_TEST_POSTGRES_IMAGE to an image this engine has \
             (`bash .ci/run` builds local ones), or SLUICE_TEST_CONTAINERS=0 to use the installed \
             servers"
        )
    })
}

/// The image for Redis: `SLUICE_TEST_REDIS_IMAGE`, else the official one.
pub(crate) fn redis_image() -> String {
    non_empty_env("SLUICE_TEST_REDIS_IMAGE").unwrap_or_else(|| DEFAULT_REDIS_IMAGE.to_owned())
}

/// The image for PostgreSQL: `SLUICE_TEST_POSTGRES_IMAGE`, else the official one.
pub(crate) fn postgres_image() -> String {
    non_empty_env("SLUICE_TEST_POSTGRES_IMAGE").unwrap_or_else(|| DEFAULT_POSTGRES_IMAGE.to_owned())
}
