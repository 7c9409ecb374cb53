//! [`RedisCounter`]: the sliding-window counter shared by every Sluice instance pointed at one
//! Redis. Every check is decided by `sliding_window.lua` (run by SHA, reloaded on `NOSCRIPT`), so
//! the check and the increment of all of a tenant's counters are one atomic step, timed by Redis's
//! own clock; checks that arrive while calls are in flight share the next call
//! (`group_commit.rs`), so a busy Redis decides many requests per round trip.
//!
//! # Key layout
//! `{prefix}{{{tenant}}}:{key_suffix}`, e.g. `sluice:{acme}:p:6f1c…`: a sorted set with one
//! member `"<cumulative:016>:<weight>"` per recorded call, scored by Redis `TIME` in
//! microseconds, with a `PEXPIRE` of the window plus one second. The `{tenant}` hash tag puts all
//! of a tenant's keys in one Redis Cluster slot, which the multi-key script requires.
//!
//! # URLs
//! Anything `fred::types::config::Config::from_url` takes: `redis://[user:pass@]host[:port][/db]`,
//! `rediss://…` for TLS (rustls on aws-lc-rs, system root certificates — or, when the standard
//! `SSL_CERT_FILE` / `SSL_CERT_DIR` are set, the certificates they name, for a private CA), and
//! Redis Cluster as
//! `redis-cluster://[user:pass@]host:port[?node=host2:port2&node=…]` or `rediss-cluster://…`
//! with TLS; the other nodes are discovered from any one of them. Sentinel
//! (`redis-sentinel://…?sentinelServiceName=…`) works too.
//!
//! # Connection
//! [`RedisCounter::start`] tells a Redis that refuses Sluice's settings (URL, password, TLS
//! certificate, the script) — which stops start-up — from one that merely does not answer yet,
//! which the pool keeps reconnecting to in the background (backoff capped at
//! [`RECONNECT_MAX_DELAY`]) while checks fail and the caller answers per its failure mode. A
//! background ping keeps [`RedisHealth`] (`/readyz`, `sluice_redis_up`) current and reloads the
//! script into a Redis that answers again.

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use fred::interfaces::{ClientLike, EventInterface};
use fred::prelude::{Builder, Config, ErrorKind, Pool, ReconnectPolicy};
use fred::types::config::Options;
use fred::types::scripts::Script;
use prometheus::IntGauge;

use tokio::time::Instant;

use super::{
    CounterCheck, CounterError, CounterVerdict, Shard, SlidingWindowCounter,
    batch::LIMITS_PER_CHECK, cluster_nodes::ClusterNodes, group_commit::GroupCommit, validate,
};

/// The sliding-window script; its header documents KEYS, ARGV and the reply.
const SLIDING_WINDOW_LUA: &str = include_str!("sliding_window.lua");

/// The per-call timeout [`RedisCounter::connect`] sets; see [`RedisCounter::set_command_timeout`].
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(1);

/// How long one connection attempt (TCP, TLS, `AUTH`, `SELECT`) may take.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// The reconnect backoff after a connection is lost (or never made): 50 ms, doubling up to
/// [`RECONNECT_MAX_DELAY`], each plus up to [`RECONNECT_JITTER`], without end. The cap bounds how
/// late Sluice notices a Redis that answers again (at most 300 ms, so counting resumes within
/// 1 s together with the breaker's [`super::super::breaker::PROBE_EVERY`]); a refused connection
/// costs Redis nothing, so four attempts a second per pooled connection do not hammer it, and
/// the jitter keeps many instances from reconnecting in lockstep.
pub const RECONNECT_MAX_DELAY: Duration = Duration::from_millis(250);
const RECONNECT_MIN_DELAY: Duration = Duration::from_millis(50);
const RECONNECT_JITTER: Duration = Duration::from_millis(50);

/// How often the health task pings Redis for [`RedisCounter::health`].
pub const HEALTH_PING_EVERY: Duration = Duration::from_millis(500);
/// How long a health ping may wait for PONG before Redis counts as not answering.
const HEALTH_PING_TIMEOUT: Duration = Duration::from_secs(1);

/// URL schemes `connect` takes: plain, TLS, Cluster and Sentinel, under either name.
const SCHEMES: [&str; 12] = [
    "redis",
    "rediss",
    "redis-cluster",
    "rediss-cluster",
    "redis-sentinel",
    "rediss-sentinel",
    "valkey",
    "valkeys",
    "valkey-cluster",
    "valkeys-cluster",
    "valkey-sentinel",
    "valkeys-sentinel",
];

/// Exact sliding-window counters in Redis (standalone, TLS, Cluster or Sentinel).
pub struct RedisCounter {
    pool: Pool,
    /// The queues, the script and Redis's clock: every call goes through it.
    group: Arc<GroupCommit>,
    /// Namespaces Sluice's keys in a shared Redis, and each test's keys in the test server.
    key_prefix: String,
    /// Whether Redis answers, for `/readyz` and `sluice_redis_up`; kept current by the task
    /// [`RedisCounter::start`] spawns, which ends once the counter and every handle from
    /// [`RedisCounter::health`] are dropped.
    health: Arc<RedisHealth>,
    /// On Redis Cluster: which primary holds each slot, and a pool to each primary
    /// (see [`SlidingWindowCounter::shard_of`]).
    nodes: Option<Arc<ClusterNodes>>,
}

impl RedisCounter {
    /// Wraps a pool the caller has built and connected. `key_prefix` (e.g. `sluice:`) must not
    /// contain `{` or `}`, which would move the Redis Cluster hash tag off the tenant.
    pub fn new(pool: Pool, key_prefix: impl Into<String>) -> Result<Self, CounterError> {
        let key_prefix = checked_prefix(key_prefix.into())?;
        // Nobody watches a pool the caller built: its health is what it was when handed over.
        let connected = pool.clients().iter().any(|client| client.is_connected());
        let nodes = cluster_nodes(&pool);
        Ok(Self {
            group: Arc::new(GroupCommit::new(
                pool.clone(),
                Script::from_lua(SLIDING_WINDOW_LUA),
                nodes.clone(),
            )),
            nodes,
            pool,
            key_prefix,
            health: Arc::new(RedisHealth::new(if connected {
                RedisState::Up
            } else {
                RedisState::Connecting
            })),
        })
    }

    /// Connects a pool of `pool_size` connections to `url` (see the module doc for the URL
    /// forms), with `password`, when given, replacing the URL's, and loads the script. Unlike
    /// [`RedisCounter::start`], a server that does not answer is an error
    /// ([`CounterError::Connection`] or [`CounterError::Timeout`]); a setting Redis refuses is
    /// [`CounterError::Config`].
    pub async fn connect(
        url: &str,
        password: Option<&str>,
        pool_size: usize,
        key_prefix: impl Into<String>,
    ) -> Result<Self, CounterError> {
        let (counter, first) = Self::start(url, password, pool_size, key_prefix)
            .await
            .map_err(|err| match err {
                RedisStartError::Config(reason) => CounterError::Config(reason),
                refused => CounterError::Config(refused.to_string()),
            })?;
        match first {
            FirstConnect::Connected => Ok(counter),
            FirstConnect::Unreachable(err) => {
                quit(&counter.pool).await;
                Err(err)
            }
        }
    }

    /// Starts a pool of `pool_size` connections to `url` (see the module doc for the URL
    /// forms), with `password`, when given, replacing the URL's, and waits for the first
    /// connection attempt. A setting Sluice cannot run with — a bad URL, a password Redis
    /// refuses, a certificate it cannot trust — is a [`RedisStartError`]. A server that merely
    /// does not answer yet is [`FirstConnect::Unreachable`]: the counter is returned anyway and
    /// keeps connecting in the background (its checks fail until then, and the caller answers
    /// per its failure mode).
    ///
    /// After that the pool reconnects on its own (see `RECONNECT_MAX_DELAY`), and a
    /// background task pings Redis every `HEALTH_PING_EVERY` to keep [`RedisCounter::health`]
    /// current and to load the script into a server that answers again (a restarted Redis has
    /// lost it).
    pub async fn start(
        url: &str,
        password: Option<&str>,
        pool_size: usize,
        key_prefix: impl Into<String>,
    ) -> Result<(Self, FirstConnect), RedisStartError> {
        if pool_size == 0 {
            return Err(RedisStartError::Config(
                "the Redis pool needs at least one connection".into(),
            ));
        }
        let key_prefix = checked_prefix(key_prefix.into()).map_err(|err| match err {
            CounterError::Config(reason) => RedisStartError::Config(reason),
            other => RedisStartError::Config(other.to_string()),
        })?;
        let mut config = config_from_url(url, password)?;
        // The first connection is retried like any later one, so a Redis that is down at
        // start-up is waited for in the background instead of stopping Sluice.
        config.fail_fast = false;
        let mut reconnect = ReconnectPolicy::new_exponential(
            0,
            RECONNECT_MIN_DELAY.as_millis() as u32,
            RECONNECT_MAX_DELAY.as_millis() as u32,
            2,
        );
        reconnect.set_jitter(RECONNECT_JITTER.as_millis() as u32);
        let pool = Builder::from_config(config)
            .with_connection_config(|connection| {
                connection.connection_timeout = CONNECTION_TIMEOUT;
                connection.internal_command_timeout = CONNECTION_TIMEOUT;
                // A call whose connection drops mid-flight may already have run; resending it
                // could count the request twice. Fail it instead and let the caller decide.
                connection.max_command_attempts = 1;
            })
            .with_performance_config(|performance| {
                performance.default_command_timeout = DEFAULT_COMMAND_TIMEOUT;
            })
            .set_policy(reconnect)
            .build_pool(pool_size)
            .map_err(|e| RedisStartError::Config(format!("cannot build the Redis pool: {e}")))?;
        let script = Script::from_lua(SLIDING_WINDOW_LUA);
        let first = match first_connect(&pool).await {
            Ok(()) => script.load(pool.next_connected()).await,
            Err(err) => Err(err),
        };
        let first = match first {
            Ok(()) => FirstConnect::Connected,
            Err(err) => match refused_setting(&err) {
                // The pool would keep retrying a setting Redis refuses: stop it.
                Some(refused) => {
                    quit(&pool).await;
                    return Err(refused);
                }
                None => FirstConnect::Unreachable(classify(err)),
            },
        };
        let health = Arc::new(RedisHealth::new(match first {
            FirstConnect::Connected => RedisState::Up,
            FirstConnect::Unreachable(_) => RedisState::Connecting,
        }));
        let nodes = cluster_nodes(&pool);
        tokio::spawn(watch_health(
            pool.clone(),
            nodes.as_ref().map(Arc::downgrade),
            script.clone(),
            Arc::downgrade(&health),
        ));
        let counter = Self {
            group: Arc::new(GroupCommit::new(pool.clone(), script, nodes.clone())),
            nodes,
            pool,
            key_prefix,
            health,
        };
        Ok((counter, first))
    }

    /// Whether Redis answers, as the background ping last saw it (see [`RedisHealth`]).
    pub fn health(&self) -> Arc<RedisHealth> {
        Arc::clone(&self.health)
    }

    /// Observes every script call from now on in `series`: its duration, and how many requests it
    /// decided (`sluice_redis_call_duration_seconds`, `sluice_redis_batch_requests`). The first
    /// series given stays.
    pub fn report_calls_to(&self, series: crate::telemetry::RedisCallSeries) {
        self.group.report_calls_to(series);
    }

    /// Sets how long one call may wait for Redis before failing with [`CounterError::Timeout`]
    /// (see [`DEFAULT_COMMAND_TIMEOUT`]). A call still queued when its timeout passes — Redis
    /// down or slow — is dropped, never sent later, so a request already answered by the
    /// failure mode is not counted after the fact. Set it to the hot path's deadline; a caller
    /// that merely drops the future does not get that guarantee.
    pub fn set_command_timeout(&self, timeout: Duration) {
        let mut performance = self.pool.perf_config();
        performance.default_command_timeout = timeout;
        self.pool.update_perf_config(performance);
        if let Some(nodes) = &self.nodes {
            nodes.set_command_timeout(timeout);
        }
    }

    /// The Redis key of one counter.
    fn key(&self, tenant: &str, key_suffix: &str) -> String {
        crate::ratelimit::keys::counter_key(&self.key_prefix, tenant, key_suffix)
    }
}

impl fmt::Debug for RedisCounter {
    // By hand: the pool's config holds the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCounter")
            .field("key_prefix", &self.key_prefix)
            .field("pool_size", &self.pool.size())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl SlidingWindowCounter for RedisCounter {
    /// On Redis Cluster, the primary holding the tenant's slot; else the whole store.
    fn shard_of(&self, tenant: &str) -> Shard {
        match &self.nodes {
            Some(nodes) => nodes.shard_of(tenant),
            None => Shard::Whole,
        }
    }

    fn holds_slots(&self, node: &str) -> bool {
        self.nodes
            .as_ref()
            .is_none_or(|nodes| nodes.holds_slots(node))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(tenant = tenant, checks = checks.len()))]
    async fn check(
        &self,
        tenant: &str,
        checks: &[CounterCheck<'_>],
        deadline: Instant,
    ) -> Result<Vec<CounterVerdict>, CounterError> {
        validate(tenant, checks)?;
        if checks.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = checks
            .iter()
            .map(|c| self.key(tenant, c.key_suffix))
            .collect();
        // Every key of the call shares the tenant's hash tag, so the first names the slot.
        let slot = self.group.slot_of(&keys[0]);
        let mut limits: Vec<i64> = Vec::with_capacity(checks.len() * LIMITS_PER_CHECK);
        for check in checks {
            limits.extend([
                i64::from(check.max_requests),
                // validate() capped it at MAX_WINDOW_MS, far below i64::MAX.
                i64::try_from(check.window_ms).unwrap_or(i64::MAX),
                i64::from(check.burst_limit),
                i64::from(check.hits),
                i64::from(check.enforcing),
            ]);
        }
        self.group.check(slot, keys, limits, deadline).await
    }
}

/// On Redis Cluster, the per-primary pools and their topology (see `cluster_nodes`).
fn cluster_nodes(pool: &Pool) -> Option<Arc<ClusterNodes>> {
    let client = pool.next();
    client
        .is_clustered()
        .then(|| ClusterNodes::start(pool.clone(), client.perf_config().default_command_timeout))
}

/// A key prefix with a brace would move the Redis Cluster hash tag off the tenant.
fn checked_prefix(key_prefix: String) -> Result<String, CounterError> {
    if key_prefix.contains(['{', '}']) {
        return Err(CounterError::Config(
            "the Redis key prefix must not contain '{' or '}'".into(),
        ));
    }
    Ok(key_prefix)
}

/// How [`RedisCounter::start`]'s first connection attempt went.
#[derive(Debug)]
pub enum FirstConnect {
    /// Connected, and the script is loaded.
    Connected,
    /// Redis did not answer (refused, timed out, not resolvable yet); the pool keeps trying.
    Unreachable(CounterError),
}

/// A Redis setting Sluice cannot run with: start-up stops, naming the setting.
#[derive(Debug, thiserror::Error)]
pub enum RedisStartError {
    /// The URL (scheme, syntax), the pool size or the key prefix.
    #[error("{0}")]
    Config(String),
    /// Redis refused the password or user (`WRONGPASS`, `NOAUTH`).
    #[error("Redis refused the credentials: {0}")]
    Credentials(String),
    /// The TLS handshake failed, e.g. on a certificate no trusted CA signed.
    #[error("TLS with Redis failed: {0}")]
    Tls(String),
    /// Redis answers but refuses the sliding-window script (an ACL without `SCRIPT`/`EVALSHA`,
    /// scripting disabled).
    #[error("Redis refused to load the sliding-window script: {0}")]
    Script(String),
}

/// Whether Redis answers, as `/readyz` and `sluice_redis_up` report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisState {
    /// Not answered yet since start-up.
    Connecting,
    /// The last ping was answered.
    Up,
    /// Answered before; the last ping was not.
    Down,
}

impl RedisState {
    /// `connecting`, `up` or `down`.
    pub fn as_str(self) -> &'static str {
        match self {
            RedisState::Connecting => "connecting",
            RedisState::Up => "up",
            RedisState::Down => "down",
        }
    }

    fn from_u8(value: u8) -> Self {
        match value {
            1 => RedisState::Up,
            2 => RedisState::Down,
            _ => RedisState::Connecting,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            RedisState::Connecting => 0,
            RedisState::Up => 1,
            RedisState::Down => 2,
        }
    }
}

/// The [`RedisState`] of one counter, shared with whoever reports it; optionally mirrored into
/// a gauge (1 = up, 0 = connecting or down).
#[derive(Debug)]
pub struct RedisHealth {
    state: AtomicU8,
    gauge: OnceLock<IntGauge>,
}

impl RedisHealth {
    fn new(state: RedisState) -> Self {
        Self {
            state: AtomicU8::new(state.as_u8()),
            gauge: OnceLock::new(),
        }
    }

    pub fn state(&self) -> RedisState {
        RedisState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Mirrors the state into `gauge` from now on (the first gauge given stays).
    pub fn report_to(&self, gauge: IntGauge) {
        let gauge = self.gauge.get_or_init(|| gauge);
        gauge.set(i64::from(self.state() == RedisState::Up));
    }

    /// Sets the state; returns the previous one.
    fn set(&self, state: RedisState) -> RedisState {
        let previous = RedisState::from_u8(self.state.swap(state.as_u8(), Ordering::AcqRel));
        if let Some(gauge) = self.gauge.get() {
            gauge.set(i64::from(state == RedisState::Up));
        }
        previous
    }
}

/// Waits for the pool's first connection attempt: `Ok` once every connection is up, else the
/// first error any of them reports (or a timeout, for a server that never answers at all).
async fn first_connect(pool: &Pool) -> Result<(), fred::error::Error> {
    // Subscribed before connecting, so no error is missed.
    let mut errors: Vec<_> = pool.clients().iter().map(|c| c.error_rx()).collect();
    // The returned handle drives the connections; dropping it detaches the task, which ends
    // when the pool quits.
    let _connection_task = pool.connect();
    // A little past one connection timeout: by then every first attempt has reported. Polled,
    // because fred's connect notifications race with its connection state.
    let deadline = tokio::time::Instant::now() + CONNECTION_TIMEOUT + Duration::from_secs(1);
    loop {
        if pool.clients().iter().all(|client| client.is_connected()) {
            return Ok(());
        }
        for rx in &mut errors {
            if let Ok((err, _server)) = rx.try_recv() {
                return Err(err);
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(fred::error::Error::new(
                ErrorKind::Timeout,
                "no connection within the connection timeout",
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The setting at fault when `error` says Redis refuses how Sluice is configured (rather than
/// being down), so retrying cannot help.
fn refused_setting(error: &fred::error::Error) -> Option<RedisStartError> {
    let details = error.details().to_owned();
    match error.kind() {
        ErrorKind::Auth => Some(RedisStartError::Credentials(details)),
        ErrorKind::Tls => Some(RedisStartError::Tls(details)),
        ErrorKind::Config | ErrorKind::Url => Some(RedisStartError::Config(details)),
        // fred reports a failed TLS handshake as the I/O error rustls gave, e.g.
        // `Custom { kind: InvalidData, error: InvalidCertificate(UnknownIssuer) }`.
        ErrorKind::IO if details.contains("Certificate") || details.contains("certificate") => {
            Some(RedisStartError::Tls(details))
        }
        // Down, slow or restarting: worth waiting for.
        ErrorKind::IO
        | ErrorKind::Timeout
        | ErrorKind::Canceled
        | ErrorKind::Routing
        | ErrorKind::Cluster
        | ErrorKind::Sentinel
        | ErrorKind::Backpressure
        | ErrorKind::Protocol => None,
        // Redis answered, with an error reply to the script load (e.g. `NOPERM`).
        _ => Some(RedisStartError::Script(details)),
    }
}

/// Stops the pool's connections and their reconnection. Bounded: a pool still waiting to
/// reconnect never answers the `QUIT` itself, it just ends.
async fn quit(pool: &Pool) {
    let _ = tokio::time::timeout(Duration::from_secs(1), pool.quit()).await;
}

/// Pings Redis every [`HEALTH_PING_EVERY`] and records the answer in `health` (on Redis Cluster:
/// every primary, over Sluice's own pool to it; up when all answer); when Redis answers
/// again after not answering, loads the script (a restarted server has none) so the first check
/// does not pay for the reload. Ends once the counter owning `health` is dropped.
async fn watch_health(
    pool: Pool,
    nodes: Option<Weak<ClusterNodes>>,
    script: Script,
    health: Weak<RedisHealth>,
) {
    let options = Options {
        timeout: Some(HEALTH_PING_TIMEOUT),
        // A disconnected client answers at once instead of queueing the ping.
        fail_fast: true,
        ..Options::default()
    };
    loop {
        tokio::time::sleep(HEALTH_PING_EVERY).await;
        let Some(health) = health.upgrade() else {
            return;
        };
        // On Cluster, every primary over its own pool (a stalled cluster client must not hide
        // that the others answer, nor a dead primary behind one that answers).
        let mut clients = nodes
            .as_ref()
            .and_then(Weak::upgrade)
            .map(|nodes| nodes.primary_clients())
            .unwrap_or_default();
        if clients.is_empty() {
            clients.push(pool.next_connected().clone());
        }
        let pings = futures_util::future::join_all(clients.iter().map(|client| async {
            client
                .with_options(&options)
                .ping::<fred::types::Value>(None)
                .await
        }))
        .await;
        let answered = pings
            .into_iter()
            .find(Result::is_err)
            .unwrap_or(Ok(fred::types::Value::Null));
        match answered {
            Ok(_) => {
                if health.set(RedisState::Up) != RedisState::Up {
                    for client in &clients {
                        if let Err(err) = script.load(client).await {
                            tracing::warn!(error = %err, "Redis answers again, but loading the sliding-window script failed; checks reload it on demand");
                        }
                    }
                    tracing::info!(
                        redis = RedisState::Up.as_str(),
                        "Redis answers: counting in Redis"
                    );
                }
            }
            Err(err) => {
                let now = match health.state() {
                    RedisState::Connecting => RedisState::Connecting,
                    RedisState::Up | RedisState::Down => RedisState::Down,
                };
                if health.set(now) == RedisState::Up {
                    tracing::warn!(
                        redis = now.as_str(),
                        error = %err,
                        "Redis does not answer: checks answer per SLUICE_FAILURE_MODE until it does"
                    );
                }
            }
        }
    }
}

/// Builds the client config for `url`, with `password` replacing the URL's when given. The URL
/// never appears in an error: it may hold a password.
fn config_from_url(url: &str, password: Option<&str>) -> Result<Config, RedisStartError> {
    // fred reads any other scheme as a plain server, so `http://…` would be taken silently.
    let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
    if !SCHEMES.contains(&scheme) {
        return Err(RedisStartError::Config(format!(
            "the Redis URL scheme must be one of {}",
            SCHEMES.join(", ")
        )));
    }
    let mut config = Config::from_url(url)
        .map_err(|e| RedisStartError::Config(format!("not a usable Redis URL: {}", e.details())))?;
    if let Some(password) = password {
        config.password = Some(password.to_owned());
    }
    Ok(config)
}

/// Sorts a client error into the caller-facing kinds.
pub(super) fn classify(error: fred::error::Error) -> CounterError {
    match error.kind() {
        ErrorKind::Timeout => CounterError::Timeout(error),
        ErrorKind::IO
        | ErrorKind::Routing
        | ErrorKind::Cluster
        | ErrorKind::Tls
        | ErrorKind::Canceled
        | ErrorKind::Sentinel
        | ErrorKind::Backpressure
        | ErrorKind::Auth
        | ErrorKind::Config
        | ErrorKind::Url
        | ErrorKind::Protocol => CounterError::Connection(error),
        ErrorKind::Parse | ErrorKind::NotFound => {
            CounterError::UnexpectedReply(error.details().to_owned())
        }
        _ => CounterError::Script(error),
    }
}

#[cfg(test)]
mod tests {
    use fred::types::config::ServerConfig;

    use super::*;

    #[test]
    fn plain_url_is_a_centralized_server_without_tls() {
        let config = config_from_url("redis://127.0.0.1:6379/2", None).expect("valid URL");
        assert!(matches!(config.server, ServerConfig::Centralized { .. }));
        assert!(config.tls.is_none());
        assert_eq!(config.database, Some(2));
    }

    #[test]
    fn rediss_url_turns_tls_on() {
        let config = config_from_url("rediss://cache.example.com:6380", None).expect("valid URL");
        assert!(config.tls.is_some());
    }

    #[test]
    fn cluster_url_lists_every_given_node() {
        let config = config_from_url(
            "redis-cluster://10.0.0.1:7000?node=10.0.0.2:7001&node=10.0.0.3:7002",
            None,
        )
        .expect("valid URL");
        match config.server {
            ServerConfig::Clustered { hosts, .. } => assert_eq!(hosts.len(), 3),
            other => panic!("expected a cluster config, got {other:?}"),
        }
        let tls = config_from_url("rediss-cluster://10.0.0.1:7000", None).expect("valid URL");
        assert!(tls.tls.is_some());
    }

    #[test]
    fn password_setting_overrides_the_url() {
        let config =
            config_from_url("redis://user:from-url@127.0.0.1", Some("from-env")).expect("valid");
        assert_eq!(config.password.as_deref(), Some("from-env"));
        assert_eq!(config.username.as_deref(), Some("user"));
    }

    #[test]
    fn bad_url_error_does_not_echo_the_url() {
        let err = config_from_url("http://user:hunter2@host", None).expect_err("not Redis");
        assert!(matches!(err, RedisStartError::Config(_)));
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn only_what_redis_refuses_stops_start_up() {
        use fred::error::Error;
        let cases = [
            (
                ErrorKind::Auth,
                "WRONGPASS invalid username-password pair",
                "credentials",
            ),
            (
                ErrorKind::Auth,
                "NOAUTH Authentication required.",
                "credentials",
            ),
            (
                ErrorKind::IO,
                "Custom { kind: InvalidData, error: InvalidCertificate(UnknownIssuer) }",
                "tls",
            ),
            (
                ErrorKind::Unknown,
                "NOPERM this user has no permissions",
                "script",
            ),
            (
                ErrorKind::IO,
                "Os { code: 111, kind: ConnectionRefused }",
                "wait",
            ),
            (
                ErrorKind::Timeout,
                "no connection within the connection timeout",
                "wait",
            ),
            (
                ErrorKind::Canceled,
                "Connection closed unexpectedly.",
                "wait",
            ),
        ];
        for (kind, details, expected) in cases {
            let got = match refused_setting(&Error::new(kind, details)) {
                Some(RedisStartError::Credentials(_)) => "credentials",
                Some(RedisStartError::Tls(_)) => "tls",
                Some(RedisStartError::Script(_)) => "script",
                Some(RedisStartError::Config(_)) => "config",
                None => "wait",
            };
            assert_eq!(got, expected, "{details}");
        }
    }

    #[test]
    fn health_mirrors_into_the_gauge_once_given() {
        let health = RedisHealth::new(RedisState::Connecting);
        let gauge = IntGauge::new("test_redis_up", "test").unwrap();
        health.report_to(gauge.clone());
        assert_eq!(gauge.get(), 0);
        assert_eq!(health.set(RedisState::Up), RedisState::Connecting);
        assert_eq!((health.state().as_str(), gauge.get()), ("up", 1));
        health.set(RedisState::Down);
        assert_eq!((health.state().as_str(), gauge.get()), ("down", 0));
    }
}
