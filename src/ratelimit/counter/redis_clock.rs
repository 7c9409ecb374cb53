//! [`RedisClock`]: where this process's deadlines fall on Redis's clock, so the sliding-window
//! script can refuse to record a call that reaches Redis after its caller gave up (a frozen or
//! slow Redis runs the commands queued on its socket when it resumes; without this, requests
//! already answered UNAVAILABLE or fail-open would spend quota afterwards).
//!
//! # The estimate
//! Every script reply carries Redis's `TIME` at execution. When it arrives, the sample
//! `redis_now − local_now` is the true offset between the clocks *minus* the reply's travel
//! time, so every sample is at most the true offset, and the largest recent sample is the
//! tightest bound. The deadline sent to Redis is `local deadline + estimate`, which is therefore
//! never later than the true instant: a script that runs after the local deadline always sees it
//! passed. The price is that a call which runs within one reply's travel time (well under a
//! millisecond on a healthy link) before its deadline may be refused although it was in time;
//! the caller then answers per the failure mode, exactly as if it had timed out.
//!
//! Samples are kept per period of [`PERIOD`], and the estimate is the largest sample of the
//! current and the previous period. A Redis clock that steps *forward* (a failover to a node
//! whose clock is ahead) makes every call look late for one call at most: the refusal's own
//! reply carries the new time and raises the estimate at once. A clock that steps *back* by S
//! leaves the bound S too late until the old samples age out, after at most two periods.
//!
//! On Redis Cluster each node has its own clock, so samples are kept per hash slot, with the
//! estimate of the whole cluster used for a slot that has none yet. Before the first reply there
//! is no estimate and the script records without a bound; the client's own command timeout still
//! keeps a call queued in this process from being sent after the deadline.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// How long a sample counts towards the estimate: between one and two periods.
pub const PERIOD: Duration = Duration::from_secs(5);
const PERIOD_US: u64 = PERIOD.as_micros() as u64;

/// Redis Cluster's hash slots.
const CLUSTER_SLOTS: usize = 16_384;

/// No sample in a period.
const NONE: i64 = i64::MIN;

/// This process's clock mapped onto Redis's; see the module doc.
#[derive(Debug)]
pub(crate) struct RedisClock {
    /// Zero of the local microsecond clock.
    epoch: Instant,
    /// Every sample, whatever its slot.
    whole: Estimate,
    /// Per hash slot on Redis Cluster; empty otherwise.
    slots: Box<[Estimate]>,
}

impl RedisClock {
    /// A clock for a standalone (or Sentinel) Redis, or per slot for a cluster.
    pub(crate) fn new(clustered: bool) -> Self {
        let slots = if clustered { CLUSTER_SLOTS } else { 0 };
        Self {
            epoch: Instant::now(),
            whole: Estimate::default(),
            slots: (0..slots).map(|_| Estimate::default()).collect(),
        }
    }

    /// `deadline` in Redis microseconds for a call on `slot`, or 0 (no bound) before the first
    /// sample.
    pub(crate) fn not_after_us(&self, slot: u16, deadline: Instant) -> i64 {
        let period = self.period(Instant::now());
        let estimate = self
            .slots
            .get(usize::from(slot))
            .and_then(|s| s.get(period))
            .or_else(|| self.whole.get(period));
        match estimate {
            Some(offset) => self.local_us(deadline).saturating_add(offset).max(1),
            None => 0,
        }
    }

    /// Learns from a reply on `slot` that reported Redis's time `redis_now_us`, received at
    /// `received`.
    pub(crate) fn observe(&self, slot: u16, redis_now_us: i64, received: Instant) {
        let sample = redis_now_us.saturating_sub(self.local_us(received));
        let period = self.period(received);
        self.whole.record(period, sample);
        if let Some(estimate) = self.slots.get(usize::from(slot)) {
            estimate.record(period, sample);
        }
    }

    fn local_us(&self, at: Instant) -> i64 {
        i64::try_from(at.saturating_duration_since(self.epoch).as_micros()).unwrap_or(i64::MAX)
    }

    fn period(&self, at: Instant) -> u64 {
        self.local_us(at).unsigned_abs() / PERIOD_US
    }
}

/// The largest sample of the current and the previous period. Lock-free; a sample that races a
/// period change may be lost, which only makes the bound a little earlier (safe).
#[derive(Debug)]
struct Estimate {
    period: AtomicU64,
    current: AtomicI64,
    previous: AtomicI64,
}

impl Default for Estimate {
    fn default() -> Self {
        Self {
            period: AtomicU64::new(0),
            current: AtomicI64::new(NONE),
            previous: AtomicI64::new(NONE),
        }
    }
}

impl Estimate {
    fn record(&self, period: u64, sample: i64) {
        let seen = self.period.load(Ordering::Acquire);
        if seen == period {
            self.current.fetch_max(sample, Ordering::AcqRel);
        } else if seen < period
            && self
                .period
                .compare_exchange(seen, period, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            let carried = if seen + 1 == period {
                self.current.load(Ordering::Acquire)
            } else {
                NONE
            };
            self.previous.store(carried, Ordering::Release);
            self.current.store(sample, Ordering::Release);
        }
    }

    fn get(&self, period: u64) -> Option<i64> {
        let seen = self.period.load(Ordering::Acquire);
        let best = if seen == period {
            self.current
                .load(Ordering::Acquire)
                .max(self.previous.load(Ordering::Acquire))
        } else if seen + 1 == period {
            self.current.load(Ordering::Acquire)
        } else {
            NONE
        };
        (best != NONE).then_some(best)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND_US: i64 = 1_000_000;

    #[tokio::test(start_paused = true)]
    async fn no_bound_before_the_first_reply() {
        let clock = RedisClock::new(false);
        assert_eq!(clock.not_after_us(0, Instant::now()), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_bound_is_the_largest_recent_sample() {
        let clock = RedisClock::new(false);
        let redis_epoch = 1_700_000_000 * SECOND_US;
        // Replies that took 3 ms and 1 ms to come back: the later one is the tighter bound.
        clock.observe(0, redis_epoch - 3_000, Instant::now());
        clock.observe(0, redis_epoch - 1_000, Instant::now());
        let deadline = Instant::now() + Duration::from_millis(50);
        assert_eq!(
            clock.not_after_us(0, deadline),
            redis_epoch - 1_000 + 50_000
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_clock_stepping_back_holds_for_two_periods_at_most() {
        let clock = RedisClock::new(false);
        let redis_epoch = 1_700_000_000 * SECOND_US;
        clock.observe(0, redis_epoch, Instant::now());
        // A clock stepping forward is learnt from the very next reply.
        clock.observe(0, redis_epoch + 10 * SECOND_US, Instant::now());
        assert_eq!(
            clock.not_after_us(0, Instant::now()),
            redis_epoch + 10 * SECOND_US
        );
        // The Redis clock steps back 10 s (a failover): the old, larger sample holds for up to
        // two periods, then the new one alone counts.
        clock.observe(0, redis_epoch, Instant::now());
        tokio::time::advance(PERIOD * 2).await;
        let now = Instant::now();
        clock.observe(0, redis_epoch + (PERIOD * 2).as_micros() as i64, now);
        assert_eq!(
            clock.not_after_us(0, now),
            redis_epoch + (PERIOD * 2).as_micros() as i64
        );
        tokio::time::advance(PERIOD * 3).await;
        assert_eq!(clock.not_after_us(0, Instant::now()), 0, "all aged out");
    }

    #[tokio::test(start_paused = true)]
    async fn cluster_slots_learn_their_own_node_and_fall_back_to_the_cluster() {
        let clock = RedisClock::new(true);
        let now = Instant::now();
        clock.observe(7, 5_000, now);
        clock.observe(9, 2_000, now);
        assert_eq!(clock.not_after_us(7, now), 5_000);
        assert_eq!(clock.not_after_us(9, now), 2_000);
        assert_eq!(clock.not_after_us(8, now), 5_000, "whole-cluster estimate");
    }
}
