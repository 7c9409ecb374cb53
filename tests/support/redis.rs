//! Redis for integration tests: the shared server's URL (given, a container, or a private
//! `redis-server`), a key prefix per test, and [`OwnedRedis`], a server one test owns so it can
//! freeze, kill and restart it.
//!
//! Servers a test freezes, kills or restarts ([`OwnedRedis`], [`OwnedRedisCluster`]) always come
//! from the installed `redis-server`: those tests send signals to the server process itself and
//! measure what Sluice sees within milliseconds, which `docker pause`/`kill` would only blur with
//! the engine's own timing. The shared server, which every other test counts in, comes from a
//! container whenever a Docker engine answers.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::OnceCell;

use super::containers::{self, ContainerServer};
use super::postgres::non_empty_env;
use super::process::{ServerThread, find_on_path, free_port, guarded_command};

const INSTALL_HINT: &str = "install redis-server (`apt-get install redis-server`, or run \
     `bash .ci/run`), or set SLUICE_TEST_REDIS_URL to the URL of a Redis server";

/// How long a private `redis-server` may take to answer PING.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The private server of this test process, when no URL was given; never dropped (see `process`).
static SHARED_SERVER: OnceCell<OwnedRedis> = OnceCell::const_new();

/// A container of the shared server, when a Docker engine answers; never dropped (the container
/// stops itself when this process exits, see `containers`).
static SHARED_CONTAINER: OnceCell<ContainerServer> = OnceCell::const_new();

/// Redis URL, in this order: `$SLUICE_TEST_REDIS_URL` if set; else a container this test process
/// starts when a Docker engine answers (`containers`); else a private `redis-server` from the
/// installed binaries. The server is shared by all tests of the binary and keeps nothing on disk.
///
/// Tests sharing it keep to their own [`unique_redis_prefix`] and never FLUSH.
pub async fn redis_url() -> String {
    if let Some(url) = non_empty_env("SLUICE_TEST_REDIS_URL") {
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
        .get_or_init(OwnedRedis::start)
        .await
        .url
        .clone()
}

/// Redis in a container on a free port, answering PING.
async fn start_container() -> ContainerServer {
    containers::start_serving(
        "Redis",
        &containers::redis_image(),
        &[],
        START_TIMEOUT,
        |port| format!("redis-server --port {port} --bind 127.0.0.1 --save '' --appendonly no"),
        |port| format!("redis://127.0.0.1:{port}"),
        |port| async move { blocking_ping(port) },
    )
    .await
}

/// A key prefix no other test uses: `sluice-test:<uuid>:`. Keys add their `{tenant}` hash tag after it.
pub fn unique_redis_prefix() -> String {
    format!("sluice-test:{}:", uuid::Uuid::new_v4().simple())
}

/// A `redis-server` owned by one test, for fault injection. Dropping it kills the server.
pub struct OwnedRedis {
    /// `redis://127.0.0.1:<port>`, the same across [`OwnedRedis::restart`].
    pub url: String,
    /// The port the server listens on.
    pub port: u16,
    server: Option<ServerThread>,
}

impl OwnedRedis {
    /// Starts a `redis-server` on a free port of 127.0.0.1 and waits until it answers PING.
    pub async fn start() -> Self {
        Self::start_with_args(Vec::new()).await
    }

    /// [`OwnedRedis::start`] with extra `redis-server` arguments.
    async fn start_with_args(args: Vec<String>) -> Self {
        let mut last_error = String::new();
        // A free port can be taken by someone else before the server binds it: then try another.
        for _ in 0..3 {
            let port = free_port();
            match spawn_redis_with(port, args.clone()).await {
                Ok(server) => {
                    return OwnedRedis {
                        url: format!("redis://127.0.0.1:{port}"),
                        port,
                        server: Some(server),
                    };
                }
                Err(message) => last_error = message,
            }
        }
        panic!("cannot start redis-server {args:?}: {last_error}");
    }

    /// Starts a `redis-server` that also serves TLS on `tls_port`, with `cert`/`key` (PEM) as its
    /// certificate; `url` stays the plain port, for readiness and for looking at the data.
    pub async fn start_tls(cert: &Path, key: &Path) -> (Self, u16) {
        let mut last_error = String::new();
        for _ in 0..3 {
            let (port, tls_port) = (free_port(), free_port());
            let args = vec![
                "--tls-port".to_owned(),
                tls_port.to_string(),
                "--tls-cert-file".to_owned(),
                cert.display().to_string(),
                "--tls-key-file".to_owned(),
                key.display().to_string(),
                "--tls-auth-clients".to_owned(),
                "no".to_owned(),
            ];
            match spawn_redis_with(port, args).await {
                Ok(server) => {
                    let redis = OwnedRedis {
                        url: format!("redis://127.0.0.1:{port}"),
                        port,
                        server: Some(server),
                    };
                    return (redis, tls_port);
                }
                Err(message) => last_error = message,
            }
        }
        panic!("cannot start redis-server with TLS: {last_error}");
    }

    /// A free port of 127.0.0.1 with no server on it yet: connections are refused until
    /// [`OwnedRedis::restart`] starts one there.
    pub fn not_started() -> Self {
        let port = free_port();
        OwnedRedis {
            url: format!("redis://127.0.0.1:{port}"),
            port,
            server: None,
        }
    }

    /// Starts a `redis-server` that refuses every client that does not `AUTH` with `password`.
    pub async fn start_with_password(password: &str) -> Self {
        Self::start_with_args(vec!["--requirepass".to_owned(), password.to_owned()]).await
    }

    /// Stops the server with SIGSTOP: connections stay open but nothing is answered until `thaw`.
    pub fn freeze(&self) {
        self.signal("STOP");
    }

    /// Resumes a frozen server with SIGCONT.
    pub fn thaw(&self) {
        self.signal("CONT");
    }

    /// Kills the server with SIGKILL and waits until it is gone; its data is lost.
    pub fn kill(&mut self) {
        if let Some(mut server) = self.server.take() {
            server.stop("KILL");
        }
    }

    /// Starts a new, empty server on the same port (killing the current one if it still runs).
    pub async fn restart(&mut self) {
        self.kill();
        match spawn_redis(self.port).await {
            Ok(server) => self.server = Some(server),
            Err(message) => panic!(
                "cannot restart redis-server on port {}: {message}",
                self.port
            ),
        }
    }

    fn signal(&self, signal: &str) {
        let server = self
            .server
            .as_ref()
            .unwrap_or_else(|| panic!("redis-server on port {} is not running", self.port));
        if let Err(message) = super::process::send_signal(server.pid(), signal) {
            panic!(
                "cannot signal redis-server on port {}: {message}",
                self.port
            );
        }
    }
}

/// Starts `redis-server` on `port` from a dedicated thread and waits until it answers PING.
async fn spawn_redis(port: u16) -> Result<ServerThread, String> {
    spawn_redis_with(port, Vec::new()).await
}

async fn spawn_redis_with(port: u16, extra_args: Vec<String>) -> Result<ServerThread, String> {
    let binary = find_on_path("redis-server")
        .or_else(|| Some(PathBuf::from("/usr/bin/redis-server")).filter(|p| p.exists()))
        .unwrap_or_else(|| panic!("redis-server not found: {INSTALL_HINT}"));
    let launch = move || -> Result<(Child, ()), String> {
        let mut child = guarded_command(&binary, None, "KILL")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--loglevel", "warning"])
            .args(&extra_args)
            .arg("--dir")
            .arg(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "redis-server exited ({status}) on port {port} (port taken?)"
                ));
            }
            if blocking_ping(port) {
                return Ok((child, ()));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "redis-server did not answer PING on 127.0.0.1:{port} within {}s",
                    START_TIMEOUT.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    ServerThread::start("sluice-test-redis", launch)
        .await
        .map(|(server, ())| server)
}

/// One PING over a fresh connection, with short blocking timeouts: whether the server answers.
fn blocking_ping(port: u16) -> bool {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    // A server started with a password answers NOAUTH: it is up all the same.
    stream.read_exact(&mut reply).is_ok() && (&reply == b"+PONG\r\n" || &reply == b"-NOAUTH")
}

/// Sends PING to the server at `url` (`redis://host:port[/db]`, no TLS) over a new connection and
/// waits at most `timeout` for PONG.
pub async fn redis_ping(url: &str, timeout: Duration) -> Result<(), String> {
    let address = url
        .strip_prefix("redis://")
        .ok_or_else(|| format!("not a redis:// URL: {url}"))?;
    let address = address.rsplit('@').next().unwrap_or(address);
    let address = address.split('/').next().unwrap_or(address).to_owned();
    let exchange = async move {
        let mut stream = tokio::net::TcpStream::connect(&address)
            .await
            .map_err(|e| format!("cannot connect to {address}: {e}"))?;
        stream
            .write_all(b"PING\r\n")
            .await
            .map_err(|e| format!("cannot send PING to {address}: {e}"))?;
        let mut reply = [0u8; 7];
        stream
            .read_exact(&mut reply)
            .await
            .map_err(|e| format!("no reply from {address}: {e}"))?;
        if &reply == b"+PONG\r\n" {
            Ok(())
        } else {
            Err(format!(
                "unexpected reply from {address}: {:?}",
                String::from_utf8_lossy(&reply)
            ))
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("no PONG from {url} within {timeout:?}"))?
}

/// A Redis Cluster one test owns, on free ports, started from the installed `redis-server` and
/// joined with `redis-cli --cluster create`: three primaries ([`OwnedRedisCluster::start`]), or
/// primaries with replicas that take over when one fails
/// ([`OwnedRedisCluster::start_with_replicas`]; node timeout 2 s).
pub struct OwnedRedisCluster {
    /// `redis-cluster://` URL naming every node.
    pub url: String,
    pub ports: Vec<u16>,
    /// One per port, in the same order; `None` once killed.
    nodes: Vec<Option<ServerThread>>,
    /// The nodes' cluster state files (in the temp dir), removed on drop.
    config_files: Vec<PathBuf>,
    /// Ports of frozen nodes, which the helpers do not ask (they would wait for a reply).
    frozen: std::sync::Mutex<Vec<u16>>,
}

impl OwnedRedisCluster {
    /// Three primaries, no replicas.
    pub async fn start() -> Self {
        Self::start_nodes(3, 0).await
    }

    /// `primaries` primaries with one replica each, every replica in sync before this returns.
    pub async fn start_with_replicas(primaries: usize) -> Self {
        Self::start_nodes(primaries, 1).await
    }

    async fn start_nodes(primaries: usize, replicas: usize) -> Self {
        let mut nodes = Vec::new();
        let mut ports = Vec::new();
        let mut config_files = Vec::new();
        while nodes.len() < primaries * (1 + replicas) {
            let port = free_port();
            let config = format!(
                "sluice-test-cluster-{port}-{}.conf",
                uuid::Uuid::new_v4().simple()
            );
            config_files.push(std::env::temp_dir().join(&config));
            let args = vec![
                "--cluster-enabled".to_owned(),
                "yes".to_owned(),
                "--cluster-config-file".to_owned(),
                config,
                "--cluster-node-timeout".to_owned(),
                "2000".to_owned(),
                // What docs/scaling.md tells operators: a primary without a replica to take over
                // must not stop the other primaries from answering for their own slots.
                "--cluster-require-full-coverage".to_owned(),
                "no".to_owned(),
            ];
            if let Ok(server) = spawn_redis_with(port, args).await {
                nodes.push(Some(server));
                ports.push(port);
            }
        }
        let addresses: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let cli = find_on_path("redis-cli")
            .unwrap_or_else(|| panic!("redis-cli not found: install redis-tools"));
        let output = std::process::Command::new(cli)
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli runs");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let deadline = Instant::now() + START_TIMEOUT;
        for port in &ports {
            while !cluster_ok(*port) {
                assert!(
                    Instant::now() < deadline,
                    "the cluster never reached state ok"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let url = format!(
            "redis-cluster://{}?{}",
            addresses[0],
            addresses[1..]
                .iter()
                .map(|a| format!("node={a}"))
                .collect::<Vec<_>>()
                .join("&")
        );
        let cluster = Self {
            url,
            ports,
            nodes,
            config_files,
            frozen: std::sync::Mutex::default(),
        };
        // A replica that has not synced yet could not take over.
        while cluster.primaries().len() != primaries
            || !cluster.replicas_in_sync(primaries * replicas)
        {
            assert!(
                Instant::now() < deadline,
                "the replicas never synced with their primaries"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster
    }

    /// The cluster's view of itself (`CLUSTER NODES`), asked of the first node that answers:
    /// one entry per live node.
    fn nodes_view(&self) -> Vec<NodeView> {
        let reply = self
            .live_ports()
            .into_iter()
            .find_map(|port| raw_command(port, "CLUSTER NODES"))
            .unwrap_or_default();
        reply
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let address = fields.get(1)?;
                let flags = fields.get(2)?;
                if flags.contains("fail") || flags.contains("noaddr") {
                    return None;
                }
                let port = address.split(['@', ':']).nth(1)?.parse().ok()?;
                let ranges = fields
                    .iter()
                    .skip(8)
                    .filter_map(|range| {
                        let (start, end) = range.split_once('-').unwrap_or((range, range));
                        Some((start.parse().ok()?, end.parse().ok()?))
                    })
                    .collect();
                Some(NodeView {
                    port,
                    primary: flags.contains("master"),
                    ranges,
                })
            })
            .collect()
    }

    /// Ports of the live primaries that hold slots.
    pub fn primaries(&self) -> Vec<u16> {
        self.nodes_view()
            .into_iter()
            .filter(|node| node.primary && !node.ranges.is_empty())
            .map(|node| node.port)
            .collect()
    }

    /// The port of the live primary that holds `slot`, as the cluster sees it now.
    pub fn primary_of_slot(&self, slot: u16) -> Option<u16> {
        self.nodes_view()
            .into_iter()
            .find(|node| {
                node.primary
                    && node
                        .ranges
                        .iter()
                        .any(|(start, end)| (*start..=*end).contains(&slot))
            })
            .map(|node| node.port)
    }

    /// The hash slot of a key (or of a hash tag's content), as the cluster computes it.
    pub fn slot_of(&self, key: &str) -> u16 {
        let port = self.live_ports()[0];
        let reply = raw_command(port, &format!("CLUSTER KEYSLOT {key}")).unwrap_or_default();
        reply
            .trim()
            .trim_start_matches(':')
            .parse()
            .unwrap_or_else(|_| panic!("CLUSTER KEYSLOT {key} answered {reply:?}"))
    }

    fn replicas_in_sync(&self, expected: usize) -> bool {
        let synced = self
            .live_ports()
            .into_iter()
            .filter_map(|port| raw_command(port, "INFO replication"))
            .filter(|info| info.contains("role:slave") && info.contains("master_link_status:up"))
            .count();
        synced >= expected
    }

    fn live_ports(&self) -> Vec<u16> {
        let frozen = self.frozen.lock().unwrap().clone();
        self.ports
            .iter()
            .zip(&self.nodes)
            .filter(|(port, node)| {
                node.as_ref().is_some_and(ServerThread::is_running) && !frozen.contains(port)
            })
            .map(|(port, _)| *port)
            .collect()
    }

    fn node(&self, port: u16) -> &ServerThread {
        let index = self
            .ports
            .iter()
            .position(|p| *p == port)
            .unwrap_or_else(|| panic!("no node of this cluster on port {port}"));
        self.nodes[index]
            .as_ref()
            .unwrap_or_else(|| panic!("the node on port {port} was killed"))
    }

    /// Moves hash slot `slot`, with its keys, from its primary to the primary on `to`, the way a
    /// live resharding does: the target imports, the source migrates, the keys go over in one
    /// `MIGRATE`, and every primary learns the new owner. Calls for the slot meanwhile meet `ASK`
    /// and then `MOVED`.
    pub fn move_slot(&self, slot: u16, to: u16) {
        let from = self
            .primary_of_slot(slot)
            .unwrap_or_else(|| panic!("no primary holds slot {slot}"));
        assert_ne!(from, to, "slot {slot} is already on {to}");
        let id = |port: u16| {
            let reply = raw_command(port, "CLUSTER MYID").unwrap_or_default();
            reply
                .lines()
                .map(str::trim)
                .find(|line| line.len() == 40)
                .unwrap_or_else(|| panic!("CLUSTER MYID on {port} answered {reply:?}"))
                .to_owned()
        };
        let (from_id, to_id) = (id(from), id(to));
        let ok = |port: u16, command: &str| {
            let reply = raw_command(port, command).unwrap_or_default();
            assert!(reply.starts_with("+OK"), "{command} on {port}: {reply:?}");
        };
        ok(to, &format!("CLUSTER SETSLOT {slot} IMPORTING {from_id}"));
        ok(from, &format!("CLUSTER SETSLOT {slot} MIGRATING {to_id}"));
        let listed =
            raw_command(from, &format!("CLUSTER GETKEYSINSLOT {slot} 1000")).unwrap_or_default();
        // A RESP array of bulk strings: `*n`, then `$len` and the key, a line each.
        let keys: Vec<&str> = listed
            .lines()
            .skip(1)
            .filter(|line| !line.starts_with('$'))
            .collect();
        if !keys.is_empty() {
            let reply = raw_command(
                from,
                &format!("MIGRATE 127.0.0.1 {to} \"\" 0 5000 KEYS {}", keys.join(" ")),
            )
            .unwrap_or_default();
            assert!(reply.starts_with("+OK"), "MIGRATE of {keys:?}: {reply:?}");
        }
        for port in self.primaries() {
            ok(port, &format!("CLUSTER SETSLOT {slot} NODE {to_id}"));
        }
    }

    /// Kills the node on `port` with SIGKILL; its data is lost.
    pub fn kill(&mut self, port: u16) {
        let index = self.ports.iter().position(|p| *p == port).unwrap();
        if let Some(mut node) = self.nodes[index].take() {
            node.stop("KILL");
        }
    }

    /// Freezes the node on `port` with SIGSTOP.
    pub fn freeze(&self, port: u16) {
        let pid = self.node(port).pid();
        super::process::send_signal(pid, "STOP").unwrap_or_else(|e| panic!("{e}"));
        self.frozen.lock().unwrap().push(port);
    }

    /// Resumes a frozen node with SIGCONT.
    pub fn thaw(&self, port: u16) {
        let pid = self.node(port).pid();
        super::process::send_signal(pid, "CONT").unwrap_or_else(|e| panic!("{e}"));
        self.frozen.lock().unwrap().retain(|p| *p != port);
    }

    /// Keys held by the node on `port`.
    pub fn keys_on(&self, port: u16) -> u64 {
        let reply = raw_command(port, "DBSIZE").unwrap_or_default();
        reply
            .trim()
            .trim_start_matches(':')
            .parse()
            .unwrap_or_default()
    }
}

impl Drop for OwnedRedisCluster {
    fn drop(&mut self) {
        for node in self.nodes.iter_mut().flatten() {
            // A frozen node gets the SIGKILL too.
            node.stop("KILL");
        }
        for file in &self.config_files {
            let _ = std::fs::remove_file(file);
        }
    }
}

/// One node as `CLUSTER NODES` describes it.
struct NodeView {
    port: u16,
    primary: bool,
    /// The slot ranges it holds, inclusive.
    ranges: Vec<(u16, u16)>,
}

fn cluster_ok(port: u16) -> bool {
    raw_command(port, "CLUSTER INFO").is_some_and(|info| info.contains("cluster_state:ok"))
}

/// One inline command over a fresh connection; the raw reply.
fn raw_command(port: u16, command: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.write_all(format!("{command}\r\n").as_bytes()).ok()?;
    let mut buffer = [0u8; 4096];
    let n = stream.read(&mut buffer).ok()?;
    Some(String::from_utf8_lossy(&buffer[..n]).into_owned())
}
