//! Denies from memory what Redis would deny, so a tenant hammering past its limit costs no Redis
//! round trip.
//!
//! When the counter reports that a counter has `remaining` R and its oldest counted hit leaves the
//! window after T, then until T the count can only grow (other instances add hits; nothing
//! expires), so R can only shrink: a request needing more than R hits is certainly denied. The
//! cache keeps (R, T) for enforcing counters without a burst limit (a burst count recovers every
//! second, so it is not monotonic) and only when R is exhausted for the request that saw it. T is
//! measured from when the request was *sent*, so the local deadline never outlives Redis's own.
//! The counter rounds T *up* to whole milliseconds, so the cache stops denying [`ROUNDING`]
//! before the reported reset: with a sub-millisecond round trip, the reported instant can lie up
//! to 1 ms after the oldest hit really left the window.
//!
//! Entries are bound to the policy snapshot generation they were learnt under: any policy change
//! invalidates them all. Memory is bounded per shard; expired entries are swept on insert.

use std::{
    collections::HashMap,
    hash::{BuildHasher, Hash, Hasher, RandomState},
    sync::Mutex,
    time::{Duration, Instant},
};

/// Shards, so concurrent checks of different tenants rarely share a lock.
const SHARDS: usize = 16;
/// Entries one shard keeps at most.
const MAX_ENTRIES_PER_SHARD: usize = 4096;

/// What a cached denial reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachedDenial {
    pub remaining: u32,
    pub reset_after: Duration,
}

#[derive(Debug)]
struct Entry {
    tenant: Box<str>,
    suffix: Box<str>,
    max_requests: u32,
    window_ms: u64,
    generation: u64,
    remaining: u32,
    /// When the counter said the oldest counted hit leaves the window (rounded up).
    reset_at: Instant,
    /// Until when denying is certain: `reset_at` − [`ROUNDING`].
    until: Instant,
}

/// How much the counter may have rounded `reset_after_ms` up (it reports whole milliseconds,
/// rounded up). A cached denial holds only until this much before the reported reset.
pub const ROUNDING: Duration = Duration::from_millis(1);

/// How often a full shard may be swept for expired entries.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct Shard {
    entries: HashMap<u64, Entry>,
    /// A full shard is swept at most once per [`SWEEP_EVERY`], so inserts stay O(1).
    next_sweep: Option<Instant>,
}

/// The cache of counters known to be exhausted.
#[derive(Debug)]
pub struct OverLimitCache {
    shards: Vec<Mutex<Shard>>,
    hasher: RandomState,
}

impl Default for OverLimitCache {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: RandomState::new(),
        }
    }
}

/// Identifies one counter under one policy configuration.
#[derive(Debug, Clone, Copy)]
pub struct CounterId<'a> {
    pub tenant: &'a str,
    pub suffix: &'a str,
    pub max_requests: u32,
    pub window_ms: u64,
    pub generation: u64,
}

impl OverLimitCache {
    fn slot(&self, id: &CounterId<'_>) -> (u64, &Mutex<Shard>) {
        let mut hasher = self.hasher.build_hasher();
        id.tenant.hash(&mut hasher);
        id.suffix.hash(&mut hasher);
        let hash = hasher.finish();
        (hash, &self.shards[(hash as usize) % SHARDS])
    }

    /// A denial for a check of `hits` on `id`, if one is certain as of `now`.
    pub fn deny(&self, id: &CounterId<'_>, hits: u32, now: Instant) -> Option<CachedDenial> {
        let (hash, shard) = self.slot(id);
        let shard = shard
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = shard.entries.get(&hash)?;
        let same = &*entry.tenant == id.tenant
            && &*entry.suffix == id.suffix
            && entry.max_requests == id.max_requests
            && entry.window_ms == id.window_ms
            && entry.generation == id.generation;
        (same && now < entry.until && hits > entry.remaining).then(|| CachedDenial {
            remaining: entry.remaining,
            // As the counter reported it, so a cached answer reads like Redis's.
            reset_after: entry.reset_at - now,
        })
    }

    /// Records what the counter reported for a request sent at `sent`.
    pub fn learn(&self, id: &CounterId<'_>, remaining: u32, reset_after_ms: u64, sent: Instant) {
        let reset_at = sent + Duration::from_millis(reset_after_ms);
        let until = reset_at.checked_sub(ROUNDING).unwrap_or(sent).max(sent);
        let (hash, shard) = self.slot(id);
        let mut shard = shard
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if shard.entries.len() >= MAX_ENTRIES_PER_SHARD && !shard.entries.contains_key(&hash) {
            let now = Instant::now();
            if shard.next_sweep.is_none_or(|at| now >= at) {
                shard.entries.retain(|_, e| e.until > now);
                shard.next_sweep = Some(now + SWEEP_EVERY);
            }
            if shard.entries.len() >= MAX_ENTRIES_PER_SHARD {
                return;
            }
        }
        shard.entries.insert(
            hash,
            Entry {
                tenant: id.tenant.into(),
                suffix: id.suffix.into(),
                max_requests: id.max_requests,
                window_ms: id.window_ms,
                generation: id.generation,
                remaining,
                reset_at,
                until,
            },
        );
    }

    /// Entries held, expired or not (for tests and metrics).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).entries.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(generation: u64) -> CounterId<'static> {
        CounterId {
            tenant: "acme",
            suffix: "p:1",
            max_requests: 10,
            window_ms: 60_000,
            generation,
        }
    }

    #[test]
    fn denies_only_requests_needing_more_than_remaining_until_the_reset() {
        let cache = OverLimitCache::default();
        let sent = Instant::now();
        cache.learn(&id(1), 2, 1_000, sent);
        assert_eq!(cache.deny(&id(1), 2, sent), None, "2 hits still fit");
        let denial = cache
            .deny(&id(1), 3, sent)
            .expect("3 hits never fit before the reset");
        assert_eq!(denial.remaining, 2);
        assert_eq!(denial.reset_after, Duration::from_millis(1_000));
        assert_eq!(
            cache.deny(&id(1), 3, sent + Duration::from_millis(1_000)),
            None
        );
    }

    #[test]
    fn stops_denying_before_a_reset_the_counter_rounded_up() {
        // The counter reported 1,000 ms, rounded up from anything above 999 ms: the oldest hit
        // may leave the window just after `sent + 999 ms`.
        let cache = OverLimitCache::default();
        let sent = Instant::now();
        cache.learn(&id(1), 0, 1_000, sent);
        let almost = sent + Duration::from_micros(998_900);
        assert_eq!(
            cache.deny(&id(1), 1, almost).map(|d| d.reset_after),
            Some(Duration::from_micros(1_100)),
            "still certain, reported as the counter said"
        );
        assert_eq!(
            cache.deny(&id(1), 1, sent + Duration::from_millis(999)),
            None
        );
        // A reset of at most 1 ms is never cached.
        cache.learn(&id(2), 0, 1, sent);
        assert_eq!(cache.deny(&id(2), 1, sent), None);
    }

    #[test]
    fn a_policy_change_or_other_numbers_invalidate() {
        let cache = OverLimitCache::default();
        let sent = Instant::now();
        cache.learn(&id(1), 0, 5_000, sent);
        assert!(cache.deny(&id(1), 1, sent).is_some());
        assert!(cache.deny(&id(2), 1, sent).is_none(), "new generation");
        let mut bigger = id(1);
        bigger.max_requests = 20;
        assert!(
            cache.deny(&bigger, 1, sent).is_none(),
            "an override with other numbers"
        );
        let mut other = id(1);
        other.tenant = "globex";
        assert!(cache.deny(&other, 1, sent).is_none());
    }

    #[test]
    fn memory_is_bounded() {
        let cache = OverLimitCache::default();
        let sent = Instant::now();
        let suffixes: Vec<String> = (0..SHARDS * MAX_ENTRIES_PER_SHARD * 2)
            .map(|i| format!("p:{i}"))
            .collect();
        for suffix in &suffixes {
            let id = CounterId { suffix, ..id(1) };
            cache.learn(&id, 0, 60_000, sent);
        }
        assert!(cache.len() <= SHARDS * MAX_ENTRIES_PER_SHARD);
    }
}
