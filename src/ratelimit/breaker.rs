//! The circuit breaker in front of the counter store: after [`FAILURES_TO_OPEN`] consecutive
//! failures it opens, and checks answer at once (per `SLUICE_FAILURE_MODE`) without waiting on
//! Redis; every [`PROBE_EVERY`] one check is let through as a probe, and its success closes the
//! breaker. Lock-free: a handful of atomics read on every check.

use std::{
    sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use prometheus::IntGauge;

/// Consecutive failures that open the breaker.
pub const FAILURES_TO_OPEN: u32 = 5;
/// How long the breaker stays open before it lets a probe through.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);

/// What a check may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: call the store.
    Call,
    /// Open, and this check is the probe: call the store and report the outcome.
    Probe,
    /// Open: do not call the store.
    Reject,
}

/// Shared by every check of one instance.
#[derive(Debug)]
pub struct CircuitBreaker {
    started: Instant,
    consecutive_failures: AtomicU32,
    /// Milliseconds since `started` before which no probe is let through.
    open_until_ms: AtomicU64,
    probe_in_flight: AtomicBool,
    gauge: IntGauge,
}

impl CircuitBreaker {
    pub fn new(gauge: IntGauge) -> Self {
        gauge.set(0);
        Self {
            started: Instant::now(),
            consecutive_failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            probe_in_flight: AtomicBool::new(false),
            gauge,
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub fn is_open(&self) -> bool {
        self.consecutive_failures.load(Ordering::Relaxed) >= FAILURES_TO_OPEN
    }

    /// Decides whether a check may call the store.
    pub fn admit(&self) -> Admission {
        if !self.is_open() {
            return Admission::Call;
        }
        if self.now_ms() < self.open_until_ms.load(Ordering::Relaxed) {
            return Admission::Reject;
        }
        match self.probe_in_flight.compare_exchange(
            false,
            true,
            Ordering::AcqRel,
            Ordering::Relaxed,
        ) {
            Ok(_) => Admission::Probe,
            Err(_) => Admission::Reject,
        }
    }

    /// The store answered.
    pub fn record_success(&self) {
        if self.consecutive_failures.swap(0, Ordering::Relaxed) >= FAILURES_TO_OPEN {
            tracing::info!("counter store answered again: circuit breaker closed");
        }
        self.probe_in_flight.store(false, Ordering::Release);
        self.gauge.set(0);
    }

    /// The store failed or missed the deadline.
    pub fn record_failure(&self) {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= FAILURES_TO_OPEN {
            self.open_until_ms.store(
                self.now_ms() + PROBE_EVERY.as_millis() as u64,
                Ordering::Relaxed,
            );
            if failures == FAILURES_TO_OPEN {
                tracing::warn!(
                    failures,
                    "counter store keeps failing: circuit breaker open, answering without it"
                );
            }
            self.gauge.set(1);
        }
        self.probe_in_flight.store(false, Ordering::Release);
    }
}

/// Held by the check that is the breaker's probe. If that check is dropped before it recorded an
/// outcome (its RPC was cancelled), dropping the slot frees it, so the breaker cannot stay open
/// forever waiting on a probe that will never report.
#[must_use = "dropping the slot at once frees the probe"]
pub struct ProbeSlot<'a> {
    breaker: &'a CircuitBreaker,
    armed: bool,
}

impl ProbeSlot<'_> {
    /// The probe is about to record its outcome; keep the slot as that leaves it.
    pub fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for ProbeSlot<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.breaker.probe_in_flight.store(false, Ordering::Release);
        }
    }
}

impl CircuitBreaker {
    /// The slot of the probe [`CircuitBreaker::admit`] just granted.
    pub fn hold_probe(&self) -> ProbeSlot<'_> {
        ProbeSlot {
            breaker: self,
            armed: true,
        }
    }
}

/// A warning logged at most once a second, with the count of the ones suppressed meanwhile.
#[derive(Debug)]
pub struct RateLimitedWarning {
    started: Instant,
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl Default for RateLimitedWarning {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }
}

impl RateLimitedWarning {
    /// Calls `log(suppressed_since_last)` if a second has passed since the last logged one.
    pub fn warn(&self, log: impl FnOnce(u64)) {
        // +1000 so the very first call logs.
        let now = self.started.elapsed().as_millis() as u64 + 1000;
        let last = self.last_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 1000
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            log(self.suppressed.swap(0, Ordering::Relaxed));
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(IntGauge::new("test_circuit_open", "test").unwrap())
    }

    #[test]
    fn opens_after_consecutive_failures_and_closes_on_a_good_probe() {
        let b = breaker();
        for _ in 0..FAILURES_TO_OPEN - 1 {
            b.record_failure();
            assert_eq!(b.admit(), Admission::Call);
        }
        b.record_success();
        for _ in 0..FAILURES_TO_OPEN {
            b.record_failure();
        }
        assert_eq!(b.admit(), Admission::Reject);
        assert_eq!(b.gauge.get(), 1);
        std::thread::sleep(PROBE_EVERY + Duration::from_millis(20));
        assert_eq!(b.admit(), Admission::Probe);
        // Only one probe at a time.
        assert_eq!(b.admit(), Admission::Reject);
        b.record_success();
        assert_eq!(b.admit(), Admission::Call);
        assert_eq!(b.gauge.get(), 0);
    }

    #[test]
    fn a_failed_probe_keeps_it_open() {
        let b = breaker();
        for _ in 0..FAILURES_TO_OPEN {
            b.record_failure();
        }
        std::thread::sleep(PROBE_EVERY + Duration::from_millis(20));
        assert_eq!(b.admit(), Admission::Probe);
        b.record_failure();
        assert_eq!(b.admit(), Admission::Reject);
    }

    #[test]
    fn an_abandoned_probe_frees_its_slot() {
        let b = breaker();
        for _ in 0..FAILURES_TO_OPEN {
            b.record_failure();
        }
        std::thread::sleep(PROBE_EVERY + Duration::from_millis(20));
        assert_eq!(b.admit(), Admission::Probe);
        let slot = b.hold_probe();
        assert_eq!(b.admit(), Admission::Reject, "one probe at a time");
        // The probing RPC is cancelled: its future, and the slot, are dropped unrecorded.
        drop(slot);
        assert_eq!(b.admit(), Admission::Probe, "the next check may probe");
    }

    #[test]
    fn warnings_are_rate_limited_with_a_count() {
        let w = RateLimitedWarning::default();
        let mut logged = Vec::new();
        for _ in 0..5 {
            w.warn(|suppressed| logged.push(suppressed));
        }
        assert_eq!(logged, [0]);
        assert_eq!(w.suppressed.load(Ordering::Relaxed), 4);
    }
}
