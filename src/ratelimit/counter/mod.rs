//! The counter step of the hot path: an exact sliding-window counter behind one trait,
//! [`SlidingWindowCounter`], with two implementations that decide identically —
//! [`RedisCounter`] (one atomic Lua script, shared by every Sluice instance, with concurrent
//! checks batched into one script call by `group_commit`; on Redis Cluster each call goes to the
//! primary holding its slot over a pool of its own, `cluster_nodes`) and
//! [`InMemoryCounter`] (one process, no Redis).
//!
//! # Semantics
//! A call carries all of one tenant's checks of one request and is decided in one atomic step.
//! - A check *fits* when (hits counted in the last `window_ms`) + `hits` ≤ `max_requests` and,
//!   with a `burst_limit`, (hits counted in the last 1000 ms) + `hits` ≤ `burst_limit`. A check
//!   naming the same counter as an earlier fitting check of the call is judged with that check's
//!   hits included.
//! - All or nothing: when any *enforcing* check does not fit, nothing is recorded. Otherwise every
//!   fitting check records its `hits` as one weighted entry; a shadow check that does not fit
//!   records nothing, as if it had been denied.
//! - Each verdict says whether its check fit, and describes the counter after the call:
//!   `remaining` = `max_requests` − counted (saturating; with a burst limit, the smaller of that
//!   and the burst remaining), `reset_after_ms` = time until the oldest counted hit leaves the
//!   window (0 when the window is empty).
//!
//! The caller bounds the whole step with a deadline and passes it in. What both implementations
//! promise is that a call *answered* as failed by the deadline is never recorded afterwards:
//! [`RedisCounter`] answers by the deadline itself — [`CounterError::Overloaded`] for a check that
//! was still queued (never sent), [`CounterError::Timeout`] for one sent but not answered — and
//! sends the deadline on Redis's clock, where the script records nothing once it has passed
//! ([`CounterError::Late`]); [`InMemoryCounter`] decides synchronously, so it can never run after
//! its caller gave up.

mod batch;
mod cluster_nodes;
mod group_commit;
mod memory;
mod redis;
mod redis_clock;

pub use memory::InMemoryCounter;
pub use redis::{
    DEFAULT_COMMAND_TIMEOUT, FirstConnect, RedisCounter, RedisHealth, RedisStartError, RedisState,
};

use std::sync::Arc;

use async_trait::async_trait;
use tokio::time::Instant;

/// The longest window a check may ask for: a year and a day, above any unit Envoy can send.
pub const MAX_WINDOW_MS: u64 = 366 * 24 * 60 * 60 * 1000;

/// One descriptor's check within a tenant's atomic step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterCheck<'a> {
    /// Identifies the counter within the tenant, e.g. `p:<policy-uuid>` or `o:<hash>`. The full
    /// key is `{prefix}{{{tenant}}}:{key_suffix}`, so every key of one tenant shares a Redis
    /// Cluster slot.
    pub key_suffix: &'a str,
    /// Hits allowed in any `window_ms` span.
    pub max_requests: u32,
    /// Window length in milliseconds, 1 ..= [`MAX_WINDOW_MS`].
    pub window_ms: u64,
    /// 0 = none; else at most this many hits in any 1-second span, on top of the window.
    pub burst_limit: u32,
    /// Hits this request adds; 0 checks without counting.
    pub hits: u32,
    /// `false` = shadow: counted and reported, never blocks the other checks.
    pub enforcing: bool,
}

/// The outcome of one [`CounterCheck`], describing its counter after the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterVerdict {
    /// Whether the check fit. For a shadow check, `false` means "would have been denied".
    pub allowed: bool,
    /// Hits still allowed now: window remaining, or the burst remaining when that is smaller.
    pub remaining: u32,
    /// Milliseconds until the oldest counted hit leaves the window; 0 when the window is empty.
    pub reset_after_ms: u64,
}

/// Why the counter step could not give a decision.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CounterError {
    /// The counter store could not be reached, or the connection broke mid-call.
    #[error("cannot reach the counter store")]
    Connection(#[source] fred::error::Error),
    /// The counter store did not answer within the counter's own command timeout.
    #[error("the counter store timed out")]
    Timeout(#[source] fred::error::Error),
    /// The store ran the sliding-window script and reported an error.
    #[error("the sliding-window script failed")]
    Script(#[source] fred::error::Error),
    /// The script answered with something other than three integers per check.
    #[error("unexpected reply from the sliding-window script: {0}")]
    UnexpectedReply(String),
    /// The counter could not be set up (bad URL, key prefix or pool size).
    #[error("invalid counter configuration: {0}")]
    Config(String),
    /// The in-process counter tracks as many counters as `SLUICE_MEMORY_MAX_KEYS` allows and the
    /// call needs a new one. Says nothing about the counter's health, so the breaker ignores it.
    #[error("{0}")]
    Full(String),
    /// `error` befell the whole script call `call` (a number unique within this counter), which
    /// carried this request among others: the circuit breaker counts one failed call once, not
    /// once per request it carried (one timed-out batch of 200 must not open it by itself).
    #[error("{error}")]
    InCall {
        call: u64,
        #[source]
        error: Box<CounterError>,
    },
    /// The call reached the counter store after its deadline, so the script recorded nothing.
    #[error("the call reached the counter store after its deadline; nothing was recorded")]
    Late,
    /// The check waited for a script call until its deadline and was never sent, so nothing was
    /// recorded. Says the counter is busy, not that the store failed: the breaker ignores it.
    #[error(
        "the check waited for a free call until its deadline and was never sent; nothing was recorded"
    )]
    Overloaded,
    /// Redis Cluster refused the call while a slot changes owner (`TRYAGAIN` for keys split
    /// mid-migration, `CLUSTERDOWN`, or a redirection that was redirected again), so the script did
    /// not run. Says the cluster is changing, not that the node failed: the breaker ignores it.
    #[error("the cluster refused the call while a slot changes owner; nothing was recorded")]
    Redirected(#[source] fred::error::Error),
    /// The caller passed a check the counter cannot represent.
    #[error("invalid counter check: {0}")]
    InvalidCheck(String),
}

impl CounterError {
    /// The failure itself, and the script call it befell when several requests shared it.
    pub fn call_and_cause(&self) -> (Option<u64>, &CounterError) {
        match self {
            Self::InCall { call, error } => (Some(*call), error),
            other => (None, other),
        }
    }

    fn in_call(call: u64, error: CounterError) -> Self {
        Self::InCall {
            call,
            error: Box::new(error),
        }
    }
}

/// Exact sliding-window rate counting, decided atomically per tenant per request.
/// Where a tenant's counters live, as far as failures go (see
/// [`SlidingWindowCounter::shard_of`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Shard {
    /// A store that fails as a whole: one Redis server (with Sentinel, whichever is primary) or
    /// the in-process counter.
    Whole,
    /// The Redis Cluster primary (`host:port`) that holds the tenant's hash slot: when it fails,
    /// only the tenants whose slots it holds are affected.
    Node(Arc<str>),
}

#[async_trait]
pub trait SlidingWindowCounter: Send + Sync + 'static {
    /// The part of the store that holds `tenant`'s counters: the unit that fails as one, and
    /// so the scope of a circuit breaker. The whole store unless it is split over nodes.
    fn shard_of(&self, _tenant: &str) -> Shard {
        Shard::Whole
    }

    /// Whether the node `host:port` (a [`Shard::Node`]) still holds slots; its breaker is dropped
    /// once it does not.
    fn holds_slots(&self, _node: &str) -> bool {
        true
    }

    /// All of one tenant's descriptors of one request, decided in one atomic step. Returns one
    /// verdict per check, in order. Nothing is recorded once `deadline` has passed (see the
    /// module doc).
    async fn check(
        &self,
        tenant: &str,
        checks: &[CounterCheck<'_>],
        deadline: Instant,
    ) -> Result<Vec<CounterVerdict>, CounterError>;
}

/// Rejects what neither implementation can count: an empty tenant or one with braces (it would
/// break the `{tenant}` hash tag), and a window outside 1 ..= [`MAX_WINDOW_MS`].
fn validate(tenant: &str, checks: &[CounterCheck<'_>]) -> Result<(), CounterError> {
    if tenant.is_empty() {
        return Err(CounterError::InvalidCheck(
            "tenant must not be empty".into(),
        ));
    }
    if tenant.contains(['{', '}']) {
        return Err(CounterError::InvalidCheck(
            "tenant must not contain '{' or '}'".into(),
        ));
    }
    if let Some(check) = checks
        .iter()
        .find(|c| c.window_ms == 0 || c.window_ms > MAX_WINDOW_MS)
    {
        return Err(CounterError::InvalidCheck(format!(
            "window_ms must be 1 ..= {MAX_WINDOW_MS}, got {} for counter {:?}",
            check.window_ms, check.key_suffix
        )));
    }
    Ok(())
}
