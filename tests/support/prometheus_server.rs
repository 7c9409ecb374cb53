//! A real Prometheus server for one test: [`PrometheusServer`] scrapes one target under
//! `job="sluice"` from a temporary directory (configuration, TSDB, log) and answers PromQL through
//! its HTTP API. Dropping it kills the server and removes the directory; if the test process dies
//! first, the server gets SIGKILL from the kernel (parent-death signal).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::process::{ServerThread, free_port, guarded_command};
use super::tools::prometheus_path;

/// How long the server may take to answer `GET /-/ready`.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one API call may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// A Prometheus server scraping one target. Fields drop in order: the server dies before its
/// directory is removed.
pub struct PrometheusServer {
    /// `127.0.0.1:<port>` of its web listener and HTTP API.
    pub addr: SocketAddr,
    server: ServerThread,
    dir: tempfile::TempDir,
}

/// One element of an instant vector: its labels and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: std::collections::BTreeMap<String, String>,
    pub value: f64,
}

impl PrometheusServer {
    /// Starts Prometheus on a free port of 127.0.0.1, scraping `GET /metrics` of `target` every
    /// `scrape_interval` under `job="sluice"`, and waits until it is ready (not until it scraped:
    /// see [`PrometheusServer::wait_for`]).
    ///
    /// Panics when it cannot start, with its log; names the install step when it is missing.
    pub async fn start(target: SocketAddr, scrape_interval: Duration) -> Self {
        let binary = prometheus_path();
        let dir = tempfile::Builder::new()
            .prefix("sluice-test-prometheus-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary directory for Prometheus: {e}"));
        let interval = format!("{}ms", scrape_interval.as_millis());
        let config = format!(
            "global:\n  scrape_interval: {interval}\n  scrape_timeout: {interval}\n  \
             evaluation_interval: {interval}\nscrape_configs:\n  - job_name: sluice\n    \
             static_configs:\n      - targets: [\"{target}\"]\n"
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", config_path.display()));
        let mut last_error = String::new();
        // A free port can be taken by someone else before the server binds it: then try another.
        for _ in 0..3 {
            let port = free_port();
            let (binary, root) = (binary.clone(), dir.path().to_owned());
            let launch = move || launch(&binary, &root, port);
            match ServerThread::start("sluice-test-prometheus", launch).await {
                Ok((server, ())) => {
                    return PrometheusServer {
                        addr: SocketAddr::from(([127, 0, 0, 1], port)),
                        server,
                        dir,
                    };
                }
                Err(message) => last_error = message,
            }
        }
        panic!(
            "cannot start Prometheus ({}): {last_error}",
            binary.display()
        );
    }

    /// Evaluates `expr` at the current time (`GET /api/v1/query`): the samples of an instant
    /// vector, or the one value of a scalar; an error for a query Prometheus refuses.
    pub async fn query(&self, expr: &str) -> Result<Vec<Sample>, String> {
        let path = format!("/api/v1/query?query={}", percent_encode(expr));
        let body = tokio::time::timeout(QUERY_TIMEOUT, http_get(self.addr, &path))
            .await
            .map_err(|_| format!("Prometheus did not answer within {QUERY_TIMEOUT:?}"))??;
        let answer: serde_json::Value = serde_json::from_str(&body)
            .map_err(|e| format!("Prometheus answered with invalid JSON ({e}): {body}"))?;
        if answer["status"] != "success" {
            return Err(format!(
                "Prometheus refused the query: {} ({})",
                answer["error"], answer["errorType"]
            ));
        }
        let data = &answer["data"];
        match data["resultType"].as_str() {
            Some("vector") => data["result"]
                .as_array()
                .ok_or_else(|| format!("no result array in {body}"))?
                .iter()
                .map(|element| {
                    let labels = element["metric"]
                        .as_object()
                        .ok_or_else(|| format!("no metric in {element}"))?
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect();
                    Ok(Sample {
                        labels,
                        value: sample_value(&element["value"])?,
                    })
                })
                .collect(),
            Some("scalar") => Ok(vec![Sample {
                labels: Default::default(),
                value: sample_value(&data["result"])?,
            }]),
            other => Err(format!("unexpected result type {other:?} in {body}")),
        }
    }

    /// Polls `expr` every 200 ms until `done` accepts its samples; panics after `timeout` with the
    /// last answer and the server's log.
    pub async fn wait_for(
        &self,
        what: &str,
        expr: &str,
        timeout: Duration,
        done: impl Fn(&[Sample]) -> bool,
    ) -> Vec<Sample> {
        let deadline = Instant::now() + timeout;
        loop {
            let answer = self.query(expr).await;
            if let Ok(samples) = &answer
                && done(samples)
            {
                return samples.clone();
            }
            if Instant::now() > deadline {
                panic!(
                    "waited {timeout:?} for {what} (`{expr}`); last answer: {answer:?}\n\
                     --- Prometheus log\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The last 4 KiB of the server's log, for failure messages.
    pub fn log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("prometheus.log"))
            .unwrap_or_else(|e| format!("(cannot read the log: {e})"));
        let start = log.len().saturating_sub(4096);
        let start = (start..log.len())
            .find(|&i| log.is_char_boundary(i))
            .unwrap_or(log.len());
        log[start..].to_owned()
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.server.pid()
    }
}

/// Spawns Prometheus listening on `port`, with its configuration, TSDB and log under `root`, and
/// waits (blocking, on the server thread) until `GET /-/ready` answers 200.
fn launch(binary: &Path, root: &Path, port: u16) -> Result<(Child, ()), String> {
    let log_path = root.join("prometheus.log");
    let log = std::fs::File::create(&log_path)
        .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
    let log_err = log
        .try_clone()
        .map_err(|e| format!("cannot share {}: {e}", log_path.display()))?;
    let mut child = guarded_command(binary, None, "KILL")
        .arg(format!(
            "--config.file={}",
            root.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            root.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(format!(
                "Prometheus exited ({status}) on port {port} (port taken?):\n{log}"
            ));
        }
        if blocking_ready(port) {
            return Ok((child, ()));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(format!(
                "Prometheus was not ready on 127.0.0.1:{port} within {}s:\n{log}",
                START_TIMEOUT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether `GET /-/ready` on 127.0.0.1:`port` answers 200.
fn blocking_ready(port: u16) -> bool {
    use std::io::{Read, Write};
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200))
    else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream
        .write_all(b"GET /-/ready HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200")
}

/// `GET path` as HTTP/1.0 (so the body is never chunked), read to the end: the body of a 2xx or of
/// an API error (Prometheus answers refused queries with 4xx and a JSON body).
async fn http_get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect to Prometheus at {addr}: {e}"))?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("cannot send to Prometheus: {e}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .await
        .map_err(|e| format!("cannot read Prometheus's answer: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("not an HTTP response: {text}"))?;
    let status = head.split_whitespace().nth(1).unwrap_or_default();
    if status.starts_with('2') || status.starts_with('4') || status == "503" {
        Ok(body.to_owned())
    } else {
        Err(format!("Prometheus answered {head}: {body}"))
    }
}

/// The number of a `[timestamp, "value"]` pair; Prometheus writes NaN and ±Inf as `NaN`, `+Inf`,
/// `-Inf`.
fn sample_value(pair: &serde_json::Value) -> Result<f64, String> {
    let text = pair[1]
        .as_str()
        .ok_or_else(|| format!("no value in {pair}"))?;
    match text {
        "NaN" => Ok(f64::NAN),
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        number => number
            .parse()
            .map_err(|e| format!("value {number:?} is not a number: {e}")),
    }
}

/// `text` with every byte outside RFC 3986's unreserved set percent-encoded, for a query string.
fn percent_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}
