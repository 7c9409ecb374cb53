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
//! invalidates them all. Memory is bounded: at about [`MAX_ENTRIES`], expired entries are swept
//! (at most once a second) and new ones are not kept until there is room.
//!
//! No lock: the entries live in a concurrent hash map ([`papaya`]) whose reads are lock-free, so
//! checks on every core consult it without waiting on each other or on an insert.

use std::{
    hash::Hash,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use papaya::Equivalent;

/// Entries kept at most (concurrent inserts may overshoot it by a few).
pub const MAX_ENTRIES: usize = 65_536;

/// How much the counter may have rounded `reset_after_ms` up (it reports whole milliseconds,
/// rounded up). A cached denial holds only until this much before the reported reset.
pub const ROUNDING: Duration = Duration::from_millis(1);

/// How often a full cache may be swept for expired entries.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// What a cached denial reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachedDenial {
    pub remaining: u32,
    pub reset_after: Duration,
}

/// A counter: its tenant and key suffix. Hashes exactly as [`KeyRef`], so a lookup needs no
/// allocation.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Key {
    tenant: Box<str>,
    suffix: Box<str>,
}

#[derive(Hash)]
struct KeyRef<'a> {
    tenant: &'a str,
    suffix: &'a str,
}

impl Equivalent<Key> for KeyRef<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        *key.tenant == *self.tenant && *key.suffix == *self.suffix
    }
}

/// What the counter reported, under which numbers. Never changed in place: a newer report
/// replaces the whole entry.
#[derive(Debug)]
struct Entry {
    max_requests: u32,
    window_ms: u64,
    generation: u64,
    remaining: u32,
    /// When the counter said the oldest counted hit leaves the window (rounded up).
    reset_at: Instant,
    /// Until when denying is certain: `reset_at` − [`ROUNDING`].
    until: Instant,
}

/// The cache of counters known to be exhausted.
#[derive(Debug)]
pub struct OverLimitCache {
    entries: papaya::HashMap<Key, Entry>,
    /// Zero of `next_sweep_ms`.
    created: Instant,
    /// Milliseconds since `created` before which a full cache is not swept again.
    next_sweep_ms: AtomicU64,
}

impl Default for OverLimitCache {
    fn default() -> Self {
        Self {
            entries: papaya::HashMap::new(),
            created: Instant::now(),
            next_sweep_ms: AtomicU64::new(0),
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

impl CounterId<'_> {
    fn key(&self) -> KeyRef<'_> {
        KeyRef {
            tenant: self.tenant,
            suffix: self.suffix,
        }
    }
}

impl OverLimitCache {
    /// A denial for a check of `hits` on `id`, if one is certain as of `now`.
    pub fn deny(&self, id: &CounterId<'_>, hits: u32, now: Instant) -> Option<CachedDenial> {
        let entries = self.entries.pin();
        let entry = entries.get(&id.key())?;
        let same = entry.max_requests == id.max_requests
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
        let entries = self.entries.pin();
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(&id.key()) {
            let now = Instant::now();
            if self.sweep_due(now) {
                entries.retain(|_, e| e.until > now);
            }
            if entries.len() >= MAX_ENTRIES {
                return;
            }
        }
        entries.insert(
            Key {
                tenant: id.tenant.into(),
                suffix: id.suffix.into(),
            },
            Entry {
                max_requests: id.max_requests,
                window_ms: id.window_ms,
                generation: id.generation,
                remaining,
                reset_at,
                until,
            },
        );
    }

    /// Whether this caller may sweep now: at most once per [`SWEEP_EVERY`], one caller at a time.
    fn sweep_due(&self, now: Instant) -> bool {
        let now_ms = now.saturating_duration_since(self.created).as_millis() as u64;
        let due = self.next_sweep_ms.load(Ordering::Relaxed);
        now_ms >= due
            && self
                .next_sweep_ms
                .compare_exchange(
                    due,
                    now_ms + SWEEP_EVERY.as_millis() as u64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// Entries held, expired or not (for tests and metrics).
    pub fn len(&self) -> usize {
        self.entries.len()
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
    fn expired_entries_make_room_when_full() {
        let cache = OverLimitCache::default();
        let sent = Instant::now();
        let suffixes: Vec<String> = (0..MAX_ENTRIES).map(|i| format!("p:{i}")).collect();
        for suffix in &suffixes {
            cache.learn(&CounterId { suffix, ..id(1) }, 0, 1, sent);
        }
        assert_eq!(cache.len(), MAX_ENTRIES);
        std::thread::sleep(Duration::from_millis(5));
        // Full, but every entry has expired: the sweep makes room for the new one.
        cache.learn(
            &CounterId {
                suffix: "p:new",
                ..id(1)
            },
            0,
            60_000,
            Instant::now(),
        );
        assert!(
            cache
                .deny(
                    &CounterId {
                        suffix: "p:new",
                        ..id(1)
                    },
                    1,
                    Instant::now()
                )
                .is_some()
        );
        assert!(cache.len() < MAX_ENTRIES);
    }

    #[test]
    fn memory_is_bounded() {
        let cache = OverLimitCache::default();
        let sent = Instant::now();
        let suffixes: Vec<String> = (0..MAX_ENTRIES * 2).map(|i| format!("p:{i}")).collect();
        for suffix in &suffixes {
            let id = CounterId { suffix, ..id(1) };
            cache.learn(&id, 0, 60_000, sent);
        }
        assert!(cache.len() <= MAX_ENTRIES);
    }
}
