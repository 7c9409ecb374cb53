//! [`InMemoryCounter`]: the sliding-window counter of a single Sluice instance without Redis.
//! It decides exactly as `sliding_window.lua` does (the same three phases over the same
//! one-entry-per-call log), on the process's monotonic clock (`tokio::time::Instant`, so tests can
//! pause time).
//!
//! Counters live in shards chosen by tenant — the in-process twin of the `{tenant}` hash tag — so
//! one call takes exactly one lock, held only for the synchronous decision, never across an
//! await. Memory is bounded two ways: a counter whose last hit has left its window is dropped by
//! a sweep of its shard (at most once a second per shard, on access; and of every shard once a
//! second while the key cap is reached), and at most `max_tracked_keys` counters exist at once
//! (`SLUICE_MEMORY_MAX_KEYS`). A counter holds one `Entry` (24 bytes, up to twice that while its
//! ring buffer has spare room) per recorded call still in its window — at most `max_requests` —
//! plus roughly 150 bytes for the counter itself and its key.
//!
//! At the cap, a call whose recording would need a counter not yet tracked fails as a whole with
//! [`CounterError::Full`] naming the setting: nothing is recorded for any of its checks, and the
//! caller answers per `SLUICE_FAILURE_MODE`, as for any counter failure. Calls that only use
//! tracked counters, and calls that record nothing (denied, or `hits` 0), go on as usual. A
//! warning is logged at most once a minute.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use tokio::time::Instant;

use super::{CounterCheck, CounterError, CounterVerdict, SlidingWindowCounter, validate};

/// Shards of the counter map; enough that two cores rarely meet on one lock.
const SHARDS: usize = 64;
/// How often a shard (and, at the key cap, every shard) is swept for expired counters.
const SWEEP_EVERY_US: u64 = 1_000_000;
/// How often the key-cap warning may be logged.
const CAP_WARNING_EVERY_US: u64 = 60_000_000;
/// The span of a burst limit.
const BURST_SPAN_US: u64 = 1_000_000;

/// Exact sliding-window counters held in this process.
pub struct InMemoryCounter {
    shards: Box<[Mutex<Shard>]>,
    shard_hasher: RandomState,
    /// Zero of the microsecond clock the hit logs are stamped with.
    epoch: Instant,
    max_tracked_keys: usize,
    /// Counters across all shards, kept apart from the maps so the cap needs no lock.
    tracked_keys: AtomicUsize,
    next_full_sweep_us: AtomicU64,
    next_cap_warning_us: AtomicU64,
}

#[derive(Default)]
struct Shard {
    logs: HashMap<String, HitLog>,
    next_sweep_us: u64,
}

/// One counter: the in-process twin of the Redis sorted set, one entry per recorded call.
#[derive(Default)]
struct HitLog {
    /// Ordered by `at_us`, oldest first.
    entries: VecDeque<Entry>,
    /// When the last entry leaves the longest window this counter is used with.
    expires_at_us: u64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    at_us: u64,
    /// Running total of hits recorded in this log, this entry included.
    cumulative: u64,
    weight: u32,
}

/// A counter as seen at one instant.
#[derive(Debug, Default, Clone, Copy)]
struct CounterState {
    counted: u64,
    burst: u64,
    oldest_at_us: Option<u64>,
}

impl HitLog {
    fn trim(&mut self, now_us: u64, window_us: u64) {
        while let Some(front) = self.entries.front() {
            if now_us.saturating_sub(front.at_us) < window_us {
                break;
            }
            self.entries.pop_front();
        }
    }

    /// Hits recorded less than `span_us` before `now_us`, with the oldest such entry's time:
    /// two binary-search reads, whatever the number of entries.
    fn hits_within(&self, now_us: u64, span_us: u64) -> (u64, Option<u64>) {
        let Some(last) = self.entries.back() else {
            return (0, None);
        };
        let first = self
            .entries
            .partition_point(|e| now_us.saturating_sub(e.at_us) >= span_us);
        match self.entries.get(first) {
            Some(first) => (
                last.cumulative - first.cumulative + u64::from(first.weight),
                Some(first.at_us),
            ),
            None => (0, None),
        }
    }

    fn state(&self, now_us: u64, window_us: u64) -> CounterState {
        let (counted, oldest_at_us) = self.hits_within(now_us, window_us);
        let (burst, _) = self.hits_within(now_us, BURST_SPAN_US);
        CounterState {
            counted,
            burst,
            oldest_at_us,
        }
    }

    fn record(&mut self, now_us: u64, hits: u32, expiry_window_us: u64) {
        let (cumulative, at_us) = match self.entries.back() {
            Some(last) => (last.cumulative, last.at_us.max(now_us)),
            None => (0, now_us),
        };
        self.entries.push_back(Entry {
            at_us,
            cumulative: cumulative + u64::from(hits),
            weight: hits,
        });
        self.expires_at_us = self.expires_at_us.max(at_us + expiry_window_us);
    }
}

impl InMemoryCounter {
    /// A counter that tracks at most `max_tracked_keys` counters at once (0 tracks none: every
    /// call that would record then fails).
    pub fn new(max_tracked_keys: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            shard_hasher: RandomState::new(),
            epoch: Instant::now(),
            max_tracked_keys,
            tracked_keys: AtomicUsize::new(0),
            next_full_sweep_us: AtomicU64::new(0),
            next_cap_warning_us: AtomicU64::new(0),
        }
    }

    /// Counters currently held, expired ones not yet swept included.
    pub fn tracked_keys(&self) -> usize {
        self.tracked_keys.load(Ordering::Relaxed)
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn shard(&self, tenant: &str) -> MutexGuard<'_, Shard> {
        // hash_one is a u64; the modulo keeps it below SHARDS, so the cast cannot truncate.
        let index = (self.shard_hasher.hash_one(tenant) % SHARDS as u64) as usize;
        lock(&self.shards[index])
    }

    fn sweep(&self, shard: &mut Shard, now_us: u64) {
        let before = shard.logs.len();
        shard.logs.retain(|_, log| log.expires_at_us > now_us);
        self.tracked_keys
            .fetch_sub(before - shard.logs.len(), Ordering::Relaxed);
        shard.next_sweep_us = now_us + SWEEP_EVERY_US;
    }

    /// At the key cap, sweeps every shard, at most once a second, one lock at a time.
    fn sweep_all_if_full(&self, now_us: u64) {
        if self.tracked_keys() < self.max_tracked_keys {
            return;
        }
        let due = self.next_full_sweep_us.load(Ordering::Relaxed);
        if now_us < due
            || self
                .next_full_sweep_us
                .compare_exchange(
                    due,
                    now_us + SWEEP_EVERY_US,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return;
        }
        for shard in self.shards.iter() {
            self.sweep(&mut lock(shard), now_us);
        }
    }

    /// Takes `wanted` slots for new counters, all or none: none when they would pass the cap.
    fn reserve_keys(&self, wanted: usize) -> bool {
        self.tracked_keys
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                n.checked_add(wanted)
                    .filter(|total| *total <= self.max_tracked_keys)
            })
            .is_ok()
    }

    /// The error of a call that needs a counter while the cap is reached.
    fn full(&self) -> CounterError {
        CounterError::Full(format!(
            "the in-process counter is full: it already tracks SLUICE_MEMORY_MAX_KEYS={} \
             counters (raise --memory-max-keys / SLUICE_MEMORY_MAX_KEYS, or set REDIS_URL)",
            self.max_tracked_keys
        ))
    }

    fn warn_cap_reached(&self, now_us: u64) {
        let due = self.next_cap_warning_us.load(Ordering::Relaxed);
        if now_us >= due
            && self
                .next_cap_warning_us
                .compare_exchange(
                    due,
                    now_us + CAP_WARNING_EVERY_US,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            tracing::warn!(
                max_keys = self.max_tracked_keys,
                "in-process rate counter is full: checks that need a new counter fail per \
                 SLUICE_FAILURE_MODE until old counters expire (raise SLUICE_MEMORY_MAX_KEYS, \
                 --memory-max-keys, or set REDIS_URL)"
            );
        }
    }

    /// The whole atomic step, under the tenant's shard lock, in the script's three phases. Fails,
    /// recording nothing, when it would record into a new counter beyond the key cap.
    fn decide(
        &self,
        shard: &mut Shard,
        now_us: u64,
        keys: &[String],
        checks: &[CounterCheck<'_>],
    ) -> Result<Vec<CounterVerdict>, CounterError> {
        let window_us = |i: usize| checks[i].window_ms * 1000;
        // A counter named by several checks is tracked under its first index.
        let first: Vec<usize> = (0..keys.len())
            .map(|i| keys[..i].iter().position(|k| *k == keys[i]).unwrap_or(i))
            .collect();
        let mut longest_window_us = vec![0; keys.len()];
        for (i, &f) in first.iter().enumerate() {
            longest_window_us[f] = longest_window_us[f].max(window_us(i));
        }
        for (i, &f) in first.iter().enumerate() {
            if i == f
                && let Some(log) = shard.logs.get_mut(&keys[i])
            {
                log.trim(now_us, longest_window_us[i]);
            }
        }
        let read = |shard: &Shard, i: usize| {
            shard
                .logs
                .get(&keys[i])
                .map(|log| log.state(now_us, window_us(i)))
                .unwrap_or_default()
        };

        // Phase 1: decide, counting the hits earlier fitting checks will add to the same counter.
        let mut pending = vec![0u64; keys.len()];
        let mut states = Vec::with_capacity(keys.len());
        let mut fits = Vec::with_capacity(keys.len());
        let mut every_enforcing_fits = true;
        for (i, check) in checks.iter().enumerate() {
            let state = read(shard, i);
            let extra = pending[first[i]] + u64::from(check.hits);
            let fit = state.counted + extra <= u64::from(check.max_requests)
                && (check.burst_limit == 0 || state.burst + extra <= u64::from(check.burst_limit));
            if fit {
                pending[first[i]] += u64::from(check.hits);
            } else if check.enforcing {
                every_enforcing_fits = false;
            }
            states.push(state);
            fits.push(fit);
        }

        // Phase 2: record, all or nothing — the slots of new counters included, so a call cannot
        // record into some of its counters and then find no room for another.
        let mut written = vec![false; keys.len()];
        if every_enforcing_fits {
            let new_counters = (0..keys.len())
                .filter(|&i| first[i] == i && pending[i] > 0 && !shard.logs.contains_key(&keys[i]))
                .count();
            if !self.reserve_keys(new_counters) {
                self.warn_cap_reached(now_us);
                return Err(self.full());
            }
            for (i, check) in checks.iter().enumerate() {
                if !fits[i] || check.hits == 0 {
                    continue;
                }
                let expiry_window_us = longest_window_us[first[i]];
                // get_mut first: the key is cloned only for a new counter, not on every call.
                if let Some(log) = shard.logs.get_mut(&keys[i]) {
                    log.record(now_us, check.hits, expiry_window_us);
                } else {
                    let mut log = HitLog::default();
                    log.record(now_us, check.hits, expiry_window_us);
                    shard.logs.insert(keys[i].clone(), log);
                }
                written[first[i]] = true;
            }
        }

        // Phase 3: report the counters as they are after the call.
        Ok(checks
            .iter()
            .enumerate()
            .map(|(i, check)| {
                let state = if written[first[i]] {
                    read(shard, i)
                } else {
                    states[i]
                };
                verdict(check, fits[i], state, now_us)
            })
            .collect())
    }
}

fn verdict(
    check: &CounterCheck<'_>,
    fits: bool,
    state: CounterState,
    now_us: u64,
) -> CounterVerdict {
    let mut remaining = u64::from(check.max_requests).saturating_sub(state.counted);
    if check.burst_limit > 0 {
        remaining = remaining.min(u64::from(check.burst_limit).saturating_sub(state.burst));
    }
    let window_us = check.window_ms * 1000;
    let reset_after_ms = state.oldest_at_us.map_or(0, |oldest| {
        let left_us = (oldest + window_us).saturating_sub(now_us);
        left_us.div_ceil(1000).min(check.window_ms)
    });
    CounterVerdict {
        allowed: fits,
        // Never above max_requests, a u32.
        remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
        reset_after_ms,
    }
}

/// Locks a shard. A panic while holding the lock cannot leave a log half-written in a way that
/// breaks later reads, so a poisoned lock is used as is.
fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

impl fmt::Debug for InMemoryCounter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InMemoryCounter")
            .field("max_tracked_keys", &self.max_tracked_keys)
            .field("tracked_keys", &self.tracked_keys())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl SlidingWindowCounter for InMemoryCounter {
    #[tracing::instrument(level = "debug", skip_all, fields(tenant = tenant, checks = checks.len()))]
    async fn check(
        &self,
        tenant: &str,
        checks: &[CounterCheck<'_>],
        // Decided synchronously when first polled: a caller that gave up never sees it run.
        _deadline: Instant,
    ) -> Result<Vec<CounterVerdict>, CounterError> {
        validate(tenant, checks)?;
        if checks.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = checks
            .iter()
            .map(|c| crate::ratelimit::keys::counter_key("", tenant, c.key_suffix))
            .collect();
        let now_us = self.now_us();
        self.sweep_all_if_full(now_us);
        let mut shard = self.shard(tenant);
        if now_us >= shard.next_sweep_us {
            self.sweep(&mut shard, now_us);
        }
        self.decide(&mut shard, now_us, &keys, checks)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A deadline no test reaches: the in-process counter decides when polled.
    fn far_deadline() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    fn hit(key_suffix: &str, max_requests: u32, window_ms: u64) -> CounterCheck<'_> {
        CounterCheck {
            key_suffix,
            max_requests,
            window_ms,
            burst_limit: 0,
            hits: 1,
            enforcing: true,
        }
    }

    async fn allowed(counter: &InMemoryCounter, tenant: &str, check: CounterCheck<'_>) -> bool {
        counter
            .check(tenant, &[check], far_deadline())
            .await
            .expect("in-memory check")[0]
            .allowed
    }

    fn is_full_error(result: &Result<Vec<CounterVerdict>, CounterError>) -> bool {
        matches!(result, Err(CounterError::Full(message)) if message.contains("SLUICE_MEMORY_MAX_KEYS"))
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_key_cap_a_new_counter_fails_and_tracked_ones_still_count() {
        let counter = InMemoryCounter::new(2);
        assert!(allowed(&counter, "acme", hit("a", 1, 60_000)).await);
        assert!(allowed(&counter, "acme", hit("b", 1, 60_000)).await);
        assert_eq!(counter.tracked_keys(), 2);

        for _ in 0..3 {
            let result = counter
                .check("acme", &[hit("c", 1, 60_000)], far_deadline())
                .await;
            assert!(is_full_error(&result), "{result:?}");
        }
        // What records nothing needs no slot: a probe with 0 hits, and hits that cannot fit.
        let probe = counter
            .check(
                "acme",
                &[CounterCheck {
                    hits: 0,
                    ..hit("c", 1, 60_000)
                }],
                far_deadline(),
            )
            .await
            .expect("a check without hits needs no counter");
        assert!(probe[0].allowed);
        let over = counter
            .check(
                "acme",
                &[CounterCheck {
                    hits: 2,
                    ..hit("c", 1, 60_000)
                }],
                far_deadline(),
            )
            .await
            .expect("a check that does not fit records nothing");
        assert!(!over[0].allowed);
        assert_eq!(counter.tracked_keys(), 2);
        assert!(!allowed(&counter, "acme", hit("a", 1, 60_000)).await);
        assert!(!allowed(&counter, "acme", hit("b", 1, 60_000)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_key_cap_a_step_with_an_untrackable_counter_records_nothing() {
        let counter = InMemoryCounter::new(2);
        assert!(allowed(&counter, "acme", hit("tracked", 5, 60_000)).await);

        // One slot is left; this step needs two new counters besides the tracked one.
        let step = [
            hit("tracked", 5, 60_000),
            hit("new-1", 5, 60_000),
            hit("new-2", 5, 60_000),
        ];
        let result = counter.check("acme", &step, far_deadline()).await;
        assert!(is_full_error(&result), "{result:?}");

        assert_eq!(counter.tracked_keys(), 1, "no slot was taken");
        let after = counter
            .check(
                "acme",
                &[
                    CounterCheck {
                        hits: 0,
                        ..hit("tracked", 5, 60_000)
                    },
                    CounterCheck {
                        hits: 0,
                        ..hit("new-1", 5, 60_000)
                    },
                ],
                far_deadline(),
            )
            .await
            .expect("probe");
        assert_eq!(
            after[0].remaining, 4,
            "the tracked counter kept only its first hit"
        );
        assert_eq!(after[1].remaining, 5, "the new counter was not created");

        // With one new counter the step fits in the last slot.
        assert!(
            counter
                .check("acme", &step[..2], far_deadline())
                .await
                .expect("fits")[1]
                .allowed
        );
        assert_eq!(counter.tracked_keys(), 2);
    }

    #[test]
    fn an_entry_is_the_24_bytes_the_docs_count() {
        assert_eq!(std::mem::size_of::<Entry>(), 24);
    }

    #[tokio::test(start_paused = true)]
    async fn expired_counters_are_reclaimed_and_free_their_slots() {
        let counter = InMemoryCounter::new(2);
        assert!(allowed(&counter, "acme", hit("a", 1, 1_000)).await);
        assert!(allowed(&counter, "globex", hit("b", 1, 1_000)).await);
        assert_eq!(counter.tracked_keys(), 2);

        tokio::time::advance(Duration::from_millis(1_500)).await;
        // The cap is reached, so this call sweeps every shard before taking a slot.
        assert!(allowed(&counter, "initech", hit("c", 1, 60_000)).await);
        assert_eq!(counter.tracked_keys(), 1);
        assert!(
            !allowed(&counter, "initech", hit("c", 1, 60_000)).await,
            "the new counter is tracked, not failing open"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_shard_sweeps_expired_counters_on_access_below_the_cap() {
        let counter = InMemoryCounter::new(1_000);
        assert!(allowed(&counter, "acme", hit("short", 5, 1_000)).await);
        assert!(allowed(&counter, "acme", hit("long", 5, 60_000)).await);
        assert_eq!(counter.tracked_keys(), 2);

        tokio::time::advance(Duration::from_millis(2_000)).await;
        let verdicts = counter
            .check(
                "acme",
                &[CounterCheck {
                    hits: 0,
                    ..hit("long", 5, 60_000)
                }],
                far_deadline(),
            )
            .await
            .expect("in-memory check");
        assert_eq!(verdicts[0].remaining, 4);
        assert_eq!(counter.tracked_keys(), 1, "the expired counter is gone");
    }

    #[tokio::test(start_paused = true)]
    async fn weighted_hits_take_one_entry_per_call() {
        let counter = InMemoryCounter::new(10);
        let check = CounterCheck {
            hits: 5,
            ..hit("w", 10, 60_000)
        };
        assert!(allowed(&counter, "acme", check).await);
        let shard = counter.shard("acme");
        let log = shard.logs.get("{acme}:w").expect("the counter is tracked");
        assert_eq!(log.entries.len(), 1);
        assert_eq!(log.entries[0].weight, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_key_cap_tracks_nothing() {
        let counter = InMemoryCounter::new(0);
        for _ in 0..3 {
            let result = counter
                .check("acme", &[hit("a", 1, 60_000)], far_deadline())
                .await;
            assert!(is_full_error(&result), "{result:?}");
        }
        assert_eq!(counter.tracked_keys(), 0);
    }
}
