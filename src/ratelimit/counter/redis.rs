//! [`RedisCounter`]: the sliding-window counter shared by every Sluice instance pointed at one
//! Redis. Each call is one `EVALSHA` of `sliding_window.lua` (run by SHA, reloaded on
//! `NOSCRIPT`), so the check and the increment of all of a tenant's counters are one atomic step
//! and one round trip, timed by Redis's own clock.
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

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::{Builder, ClientLike, Config, ErrorKind, Pool, ReconnectPolicy};
use fred::types::scripts::Script;

use tokio::time::Instant;

use super::{
    CounterCheck, CounterError, CounterVerdict, SlidingWindowCounter, redis_clock::RedisClock,
    validate,
};

/// The sliding-window script; its header documents KEYS, ARGV and the reply.
const SLIDING_WINDOW_LUA: &str = include_str!("sliding_window.lua");

/// The per-call timeout [`RedisCounter::connect`] sets; see [`RedisCounter::set_command_timeout`].
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(1);

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

/// Arguments the script takes per key.
const ARGS_PER_CHECK: usize = 5;
/// Integers the script returns per key.
const REPLY_PER_CHECK: usize = 3;

/// Exact sliding-window counters in Redis (standalone, TLS, Cluster or Sentinel).
pub struct RedisCounter {
    pool: Pool,
    /// Holds the Lua source and its SHA-1, so `NOSCRIPT` (after a restart or failover) reloads it.
    script: Script,
    /// Namespaces Sluice's keys in a shared Redis, and each test's keys in the test server.
    key_prefix: String,
    /// Where a call's deadline falls on Redis's clock, so a late call records nothing.
    clock: RedisClock,
    /// Redis Cluster: each node has its own clock, so the clock is learnt per hash slot.
    clock_per_slot: bool,
}

impl RedisCounter {
    /// Wraps a pool the caller has built and connected. `key_prefix` (e.g. `sluice:`) must not
    /// contain `{` or `}`, which would move the Redis Cluster hash tag off the tenant.
    pub fn new(pool: Pool, key_prefix: impl Into<String>) -> Result<Self, CounterError> {
        let key_prefix = checked_prefix(key_prefix.into())?;
        let clock_per_slot = pool.next().is_clustered();
        Ok(Self {
            pool,
            script: Script::from_lua(SLIDING_WINDOW_LUA),
            key_prefix,
            clock: RedisClock::new(clock_per_slot),
            clock_per_slot,
        })
    }

    /// Connects a pool of `pool_size` connections to `url` (see the module doc for the URL
    /// forms), with `password`, when given, replacing the URL's. Waits for every connection and
    /// loads the script, so a wrong URL or password fails here rather than on the first request.
    /// After that the pool reconnects on its own, with exponential backoff up to 5 s.
    pub async fn connect(
        url: &str,
        password: Option<&str>,
        pool_size: usize,
        key_prefix: impl Into<String>,
    ) -> Result<Self, CounterError> {
        if pool_size == 0 {
            return Err(CounterError::Config(
                "the Redis pool needs at least one connection".into(),
            ));
        }
        let key_prefix = checked_prefix(key_prefix.into())?;
        let config = config_from_url(url, password)?;
        let pool = Builder::from_config(config)
            .with_connection_config(|connection| {
                connection.connection_timeout = Duration::from_secs(5);
                connection.internal_command_timeout = Duration::from_secs(5);
                // A call whose connection drops mid-flight may already have run; resending it
                // could count the request twice. Fail it instead and let the caller decide.
                connection.max_command_attempts = 1;
            })
            .with_performance_config(|performance| {
                performance.default_command_timeout = DEFAULT_COMMAND_TIMEOUT;
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
            .build_pool(pool_size)
            .map_err(|e| CounterError::Config(format!("cannot build the Redis pool: {e}")))?;
        // The returned handle drives the connections; dropping it detaches the task, which ends
        // when the pool quits.
        let _connection_task = pool.init().await.map_err(classify)?;
        let counter = Self::new(pool, key_prefix)?;
        counter
            .script
            .load(counter.pool.next_connected())
            .await
            .map_err(classify)?;
        Ok(counter)
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
    }

    /// The Redis key of one counter.
    fn key(&self, tenant: &str, key_suffix: &str) -> String {
        format!("{}{{{tenant}}}:{key_suffix}", self.key_prefix)
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
        let slot = if self.clock_per_slot {
            fred::util::redis_keyslot(keys[0].as_bytes())
        } else {
            0
        };
        let mut args: Vec<i64> = Vec::with_capacity(1 + checks.len() * ARGS_PER_CHECK);
        args.push(self.clock.not_after_us(slot, deadline));
        for check in checks {
            args.extend([
                i64::from(check.max_requests),
                // validate() capped it at MAX_WINDOW_MS, far below i64::MAX.
                i64::try_from(check.window_ms).unwrap_or(i64::MAX),
                i64::from(check.burst_limit),
                i64::from(check.hits),
                i64::from(check.enforcing),
            ]);
        }
        let reply: Vec<i64> = self
            .script
            .evalsha_with_reload(self.pool.next_connected(), keys, args)
            .await
            .map_err(classify)?;
        let Some(&[redis_now_us, late]) = reply.get(..2) else {
            return Err(CounterError::UnexpectedReply(format!(
                "{} integers, without the time and lateness header",
                reply.len()
            )));
        };
        self.clock.observe(slot, redis_now_us, Instant::now());
        if late != 0 {
            return Err(CounterError::Late);
        }
        verdicts_from_reply(&reply[2..], checks.len())
    }
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

/// Builds the client config for `url`, with `password` replacing the URL's when given. The URL
/// never appears in an error: it may hold a password.
fn config_from_url(url: &str, password: Option<&str>) -> Result<Config, CounterError> {
    // fred reads any other scheme as a plain server, so `http://…` would be taken silently.
    let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
    if !SCHEMES.contains(&scheme) {
        return Err(CounterError::Config(format!(
            "the Redis URL scheme must be one of {}",
            SCHEMES.join(", ")
        )));
    }
    let mut config = Config::from_url(url)
        .map_err(|e| CounterError::Config(format!("not a usable Redis URL: {}", e.details())))?;
    if let Some(password) = password {
        config.password = Some(password.to_owned());
    }
    Ok(config)
}

/// Sorts a client error into the caller-facing kinds.
fn classify(error: fred::error::Error) -> CounterError {
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

/// Turns the script's flat `[allowed, remaining, reset_after_ms, …]` into verdicts.
fn verdicts_from_reply(reply: &[i64], checks: usize) -> Result<Vec<CounterVerdict>, CounterError> {
    if reply.len() != checks * REPLY_PER_CHECK {
        return Err(CounterError::UnexpectedReply(format!(
            "{} integers for {checks} checks",
            reply.len()
        )));
    }
    reply
        .chunks_exact(REPLY_PER_CHECK)
        .map(|chunk| {
            let [allowed, remaining, reset_after_ms] = [chunk[0], chunk[1], chunk[2]];
            let out_of_range = || {
                CounterError::UnexpectedReply(format!(
                    "verdict [{allowed}, {remaining}, {reset_after_ms}] out of range"
                ))
            };
            Ok(CounterVerdict {
                allowed: match allowed {
                    0 => false,
                    1 => true,
                    _ => return Err(out_of_range()),
                },
                remaining: u32::try_from(remaining).map_err(|_| out_of_range())?,
                reset_after_ms: u64::try_from(reset_after_ms).map_err(|_| out_of_range())?,
            })
        })
        .collect()
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
        assert!(matches!(err, CounterError::Config(_)));
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn reply_of_the_wrong_shape_is_an_error() {
        assert!(matches!(
            verdicts_from_reply(&[1, 2], 1),
            Err(CounterError::UnexpectedReply(_))
        ));
        assert!(matches!(
            verdicts_from_reply(&[2, 0, 0], 1),
            Err(CounterError::UnexpectedReply(_))
        ));
        assert_eq!(
            verdicts_from_reply(&[1, 4, 1000, 0, 0, 0], 2).expect("well formed"),
            vec![
                CounterVerdict {
                    allowed: true,
                    remaining: 4,
                    reset_after_ms: 1000
                },
                CounterVerdict {
                    allowed: false,
                    remaining: 0,
                    reset_after_ms: 0
                },
            ]
        );
    }
}
