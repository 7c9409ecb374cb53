//! The circuit breakers in front of the counter store: one per [`Shard`] — the whole store, or on
//! Redis Cluster one per primary, so one node's outage answers only the tenants whose slots it
//! holds without waiting, and every other tenant keeps being counted ([`Breakers`]).
//!
//! Each [`CircuitBreaker`]: after [`FAILURES_TO_OPEN`] consecutive failures it opens, and checks
//! answer at once (per `SLUICE_FAILURE_MODE`) without waiting on Redis; every [`PROBE_EVERY`] one
//! check is let through as a probe, and its success closes the breaker. Lock-free: a handful of
//! atomics read on every check. `sluice_circuit_open` counts the open ones.
//!
//! The probe is a [`ProbeSlot`] carrying its own id: only that probe's completion (success,
//! failure, or its RPC being cancelled) frees the slot. Calls that were already in flight when the
//! breaker opened still report their outcome, but they neither free the slot nor postpone the
//! next probe.

use std::{
    ops::Deref,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use prometheus::{IntCounter, IntCounterVec, IntGauge};

use super::counter::Shard;

/// Consecutive failures that open the breaker.
pub const FAILURES_TO_OPEN: u32 = 5;
/// How long the breaker stays open before it lets a probe through. Short, so that counting
/// resumes within 1 s of Redis answering again (at most the Redis client's reconnect delay,
/// `RECONNECT_MAX_DELAY` plus jitter, then at most this); cheap, because a probe is one check
/// that Redis would have served anyway, and while the connection is down it fails in the client
/// without reaching Redis at all.
pub const PROBE_EVERY: Duration = Duration::from_millis(200);

/// The `probe` value while no probe is in flight.
const NO_PROBE: u64 = 0;

/// What a check may do.
#[derive(Debug)]
pub enum Admission<'a> {
    /// Closed: call the store.
    Call,
    /// Open, and this check is the probe: call the store and report the outcome with the slot.
    Probe(ProbeSlot<'a>),
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
    /// The id of the probe in flight, or [`NO_PROBE`]. Ids are never reused, so a late report
    /// from an earlier probe cannot free a later one's slot.
    probe: AtomicU64,
    /// The last probe id handed out.
    last_probe_id: AtomicU64,
    /// What it guards, for the log: `redis` (the whole store) or a cluster primary's address.
    scope: Arc<str>,
    /// `sluice_circuit_open`: the number of open breakers.
    gauge: IntGauge,
    /// Whether this breaker is counted in `gauge` (set when it opens, cleared when it closes or
    /// is retired), so the gauge never counts one breaker twice or a retired one at all.
    in_gauge: AtomicBool,
    /// Set once a node breaker is dropped from [`Breakers`]; it no longer touches the gauge.
    retired: AtomicBool,
    /// `sluice_circuit_transitions_total{to}`: opened, a probe let through, closed.
    opened: IntCounter,
    half_opened: IntCounter,
    closed: IntCounter,
    /// Script calls whose failure was already counted.
    recent_failed_calls: RecentCalls,
}

/// The last few failed call numbers. Only touched when a check fails, so a lock is fine; a call's
/// requests report within one deadline of each other, long before [`RECENT_CALLS`] other calls
/// fail.
#[derive(Debug, Default)]
struct RecentCalls(Mutex<([u64; RECENT_CALLS], usize)>);

/// Failed calls remembered; the pool has a few connections, each with one call in flight.
const RECENT_CALLS: usize = 32;

impl RecentCalls {
    /// Whether `call` is reported for the first time (and remembers it).
    fn first_report(&self, call: u64) -> bool {
        let mut guard = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let (calls, next) = &mut *guard;
        if calls.contains(&call) {
            return false;
        }
        calls[*next] = call;
        *next = (*next + 1) % RECENT_CALLS;
        true
    }
}

impl CircuitBreaker {
    /// A closed breaker that counts itself in `gauge` while open and counts its state changes
    /// in `transitions` (label `to`: `open`, `half_open`, `closed`).
    pub fn new(gauge: IntGauge, transitions: &IntCounterVec) -> Self {
        Self::guarding(Arc::from("redis"), gauge, transitions)
    }

    /// Like [`CircuitBreaker::new`], naming what it guards in its log lines.
    fn guarding(scope: Arc<str>, gauge: IntGauge, transitions: &IntCounterVec) -> Self {
        Self {
            scope,
            opened: transitions.with_label_values(&["open"]),
            half_opened: transitions.with_label_values(&["half_open"]),
            closed: transitions.with_label_values(&["closed"]),
            started: Instant::now(),
            consecutive_failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            probe: AtomicU64::new(NO_PROBE),
            last_probe_id: AtomicU64::new(NO_PROBE),
            gauge,
            in_gauge: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            recent_failed_calls: RecentCalls::default(),
        }
    }

    /// Counts this breaker in the gauge (it opened), once.
    fn enter_gauge(&self) {
        if !self.retired.load(Ordering::Relaxed) && !self.in_gauge.swap(true, Ordering::Relaxed) {
            self.gauge.inc();
        }
    }

    /// Stops counting it (it closed, or was retired), once.
    fn leave_gauge(&self) {
        if self.in_gauge.swap(false, Ordering::Relaxed) {
            self.gauge.dec();
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub fn is_open(&self) -> bool {
        self.consecutive_failures.load(Ordering::Relaxed) >= FAILURES_TO_OPEN
    }

    /// Decides whether a check may call the store.
    pub fn admit(&self) -> Admission<'_> {
        if !self.is_open() {
            return Admission::Call;
        }
        if self.now_ms() < self.open_until_ms.load(Ordering::Relaxed) {
            return Admission::Reject;
        }
        if self.probe.load(Ordering::Acquire) != NO_PROBE {
            return Admission::Reject;
        }
        let id = self.last_probe_id.fetch_add(1, Ordering::Relaxed) + 1;
        match self
            .probe
            .compare_exchange(NO_PROBE, id, Ordering::AcqRel, Ordering::Relaxed)
        {
            Ok(_) => {
                self.half_opened.inc();
                Admission::Probe(ProbeSlot { breaker: self, id })
            }
            Err(_) => Admission::Reject,
        }
    }

    /// The store answered. `probe` is the slot if this call was the probe; it is freed after the
    /// breaker has closed.
    pub fn record_success(&self, probe: Option<ProbeSlot<'_>>) {
        if self.consecutive_failures.swap(0, Ordering::Relaxed) >= FAILURES_TO_OPEN {
            self.closed.inc();
            tracing::info!(store = %self.scope, "counter store answered again: circuit breaker closed");
        }
        self.leave_gauge();
        drop(probe);
    }

    /// A check failed as part of script call `call` (when the counter names one): the first report
    /// of a call counts as one failure, the others of the same call do not, so one failed batch
    /// of many requests is one failure, as one failed call of one request is. A probe's failure
    /// always counts, so it sets the next probe time.
    pub fn record_call_failure(&self, call: Option<u64>, probe: Option<ProbeSlot<'_>>) {
        if let Some(call) = call
            && probe.is_none()
            && !self.recent_failed_calls.first_report(call)
        {
            return;
        }
        self.record_failure(probe);
    }

    /// The store failed or missed the deadline. `probe` is the slot if this call was the probe;
    /// it is freed after the next probe time is set.
    pub fn record_failure(&self, probe: Option<ProbeSlot<'_>>) {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        // Only the failure that opens the breaker and a failed probe set the next probe time:
        // calls that were in flight when it opened must not keep postponing the probe.
        if failures == FAILURES_TO_OPEN || (failures > FAILURES_TO_OPEN && probe.is_some()) {
            self.open_until_ms.store(
                self.now_ms() + PROBE_EVERY.as_millis() as u64,
                Ordering::Relaxed,
            );
        }
        if failures >= FAILURES_TO_OPEN {
            if failures == FAILURES_TO_OPEN {
                self.opened.inc();
                tracing::warn!(
                    failures,
                    store = %self.scope,
                    "counter store keeps failing: circuit breaker open, answering without it"
                );
            }
            self.enter_gauge();
        }
        drop(probe);
    }
}

/// How often the node breakers are checked against the topology: the breaker of a node that no
/// longer holds slots (a failed primary replaced by its replica) is dropped, so its open state does
/// not keep `sluice_circuit_open` up after the failover.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// One breaker per [`Shard`]: the whole store's, made at start, and one per Redis Cluster
/// primary, made when a check first needs it.
#[derive(Debug)]
pub struct Breakers {
    whole: CircuitBreaker,
    nodes: papaya::HashMap<Arc<str>, Arc<CircuitBreaker>>,
    started: Instant,
    /// Milliseconds since `started` of the last sweep for breakers of nodes that left.
    swept_ms: AtomicU64,
    gauge: IntGauge,
    transitions: IntCounterVec,
}

/// A breaker of [`Breakers`], borrowed (the whole store's) or shared (a node's).
#[derive(Debug)]
pub enum BreakerRef<'a> {
    Whole(&'a CircuitBreaker),
    Node(Arc<CircuitBreaker>),
}

impl Deref for BreakerRef<'_> {
    type Target = CircuitBreaker;

    fn deref(&self) -> &CircuitBreaker {
        match self {
            BreakerRef::Whole(breaker) => breaker,
            BreakerRef::Node(breaker) => breaker,
        }
    }
}

impl Breakers {
    /// All closed; `gauge` (`sluice_circuit_open`) counts the open ones, `transitions` their
    /// state changes.
    pub fn new(gauge: IntGauge, transitions: IntCounterVec) -> Self {
        gauge.set(0);
        Self {
            whole: CircuitBreaker::new(gauge.clone(), &transitions),
            nodes: papaya::HashMap::new(),
            started: Instant::now(),
            swept_ms: AtomicU64::new(0),
            gauge,
            transitions,
        }
    }

    /// The breaker of `shard`. `holds_slots` says whether a node is still a primary of the
    /// topology; breakers of nodes that are not are dropped (at most once per [`SWEEP_EVERY`]).
    pub fn of(&self, shard: &Shard, holds_slots: impl Fn(&str) -> bool) -> BreakerRef<'_> {
        let node = match shard {
            Shard::Whole => return BreakerRef::Whole(&self.whole),
            Shard::Node(node) => node,
        };
        let now = self.started.elapsed().as_millis() as u64;
        self.sweep(now, holds_slots);
        let nodes = self.nodes.pin();
        let breaker = match nodes.get(node) {
            Some(breaker) => Arc::clone(breaker),
            None => Arc::clone(nodes.get_or_insert_with(Arc::clone(node), || {
                Arc::new(CircuitBreaker::guarding(
                    Arc::clone(node),
                    self.gauge.clone(),
                    &self.transitions,
                ))
            })),
        };
        BreakerRef::Node(breaker)
    }

    /// At most once per [`SWEEP_EVERY`], drops the breakers of nodes that hold no slots now,
    /// and takes them out of the gauge.
    fn sweep(&self, now: u64, holds_slots: impl Fn(&str) -> bool) {
        let last = self.swept_ms.load(Ordering::Relaxed);
        let every = SWEEP_EVERY.as_millis() as u64;
        if now.saturating_sub(last) < every
            || self
                .swept_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        self.nodes.pin().retain(|node, breaker| {
            let left = !holds_slots(node);
            if left {
                breaker.retired.store(true, Ordering::Relaxed);
                breaker.leave_gauge();
                tracing::info!(node = %node, "Redis node holds no slots now: its circuit breaker is dropped");
            }
            !left
        });
    }

    /// Whether any breaker is open (for tests).
    pub fn any_open(&self) -> bool {
        self.whole.is_open() || self.nodes.pin().values().any(|b| b.is_open())
    }
}

/// Held by the check that is the breaker's probe, and handed back with its outcome. If that
/// check is dropped before it recorded one (its RPC was cancelled), dropping the slot frees it,
/// so the breaker cannot stay open forever waiting on a probe that will never report.
#[derive(Debug)]
#[must_use = "dropping the slot at once frees the probe"]
pub struct ProbeSlot<'a> {
    breaker: &'a CircuitBreaker,
    id: u64,
}

impl Drop for ProbeSlot<'_> {
    fn drop(&mut self) {
        // Frees the slot only if it is still this probe's.
        let _ = self.breaker.probe.compare_exchange(
            self.id,
            NO_PROBE,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
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
    use prometheus::Opts;

    use super::*;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(
            IntGauge::new("test_circuit_open", "test").unwrap(),
            &IntCounterVec::new(Opts::new("test_transitions", "test"), &["to"]).unwrap(),
        )
    }

    fn breakers() -> Breakers {
        Breakers::new(
            IntGauge::new("test_circuit_open", "test").unwrap(),
            IntCounterVec::new(Opts::new("test_transitions", "test"), &["to"]).unwrap(),
        )
    }

    fn node(name: &str) -> Shard {
        Shard::Node(Arc::from(name))
    }

    impl Breakers {
        /// [`Breakers::of`] for a topology in which every node holds slots.
        fn of_any(&self, shard: &Shard) -> BreakerRef<'_> {
            self.of(shard, |_| true)
        }
    }

    #[test]
    fn each_cluster_primary_has_its_own_breaker_and_the_gauge_counts_the_open_ones() {
        let all = breakers();
        open(&all.of_any(&node("a:1")));
        assert!(all.of_any(&node("a:1")).is_open());
        assert!(is_call(&all.of_any(&node("b:2")).admit()));
        assert!(is_call(&all.of_any(&Shard::Whole).admit()));
        assert_eq!(all.gauge.get(), 1);
        open(&all.of_any(&node("b:2")));
        open(&all.of_any(&node("b:2")));
        assert_eq!(all.gauge.get(), 2, "one breaker opening twice counts once");
        all.of_any(&node("a:1")).record_success(None);
        assert_eq!(all.gauge.get(), 1);
        assert!(all.any_open());
    }

    #[test]
    fn the_breaker_of_a_node_that_left_the_topology_is_dropped_and_leaves_the_gauge() {
        let all = breakers();
        open(&all.of_any(&node("gone:1")));
        assert_eq!(all.gauge.get(), 1);
        // A sweep while the node still holds slots keeps it open.
        let later = SWEEP_EVERY.as_millis() as u64 * 2;
        all.sweep(later, |_| true);
        assert!(all.any_open());
        // Its replica took over: the next sweep drops it.
        all.sweep(later * 2, |node| node != "gone:1");
        assert_eq!(all.gauge.get(), 0);
        assert!(!all.any_open());
        // A node asked for again gets a fresh, closed breaker.
        assert!(is_call(&all.of_any(&node("gone:1")).admit()));
    }

    fn open(b: &CircuitBreaker) {
        for _ in 0..FAILURES_TO_OPEN {
            b.record_failure(None);
        }
    }

    fn is_call(a: &Admission<'_>) -> bool {
        matches!(a, Admission::Call)
    }

    fn is_reject(a: &Admission<'_>) -> bool {
        matches!(a, Admission::Reject)
    }

    #[track_caller]
    fn expect_probe(b: &CircuitBreaker) -> ProbeSlot<'_> {
        match b.admit() {
            Admission::Probe(slot) => slot,
            other => panic!("expected the probe, got {other:?}"),
        }
    }

    fn wait_for_probe_time() {
        std::thread::sleep(PROBE_EVERY + Duration::from_millis(20));
    }

    #[test]
    fn opens_after_consecutive_failures_and_closes_on_a_good_probe() {
        let b = breaker();
        for _ in 0..FAILURES_TO_OPEN - 1 {
            b.record_failure(None);
            assert!(is_call(&b.admit()));
        }
        b.record_success(None);
        open(&b);
        assert!(is_reject(&b.admit()));
        assert_eq!(b.gauge.get(), 1);
        wait_for_probe_time();
        let probe = expect_probe(&b);
        // Only one probe at a time.
        assert!(is_reject(&b.admit()));
        b.record_success(Some(probe));
        assert!(is_call(&b.admit()));
        assert_eq!(b.gauge.get(), 0);
        assert_eq!(
            [b.opened.get(), b.half_opened.get(), b.closed.get()],
            [1, 1, 1],
            "one transition each: open, half_open (the probe), closed"
        );
    }

    #[test]
    fn a_failed_probe_keeps_it_open() {
        let b = breaker();
        open(&b);
        wait_for_probe_time();
        let probe = expect_probe(&b);
        b.record_failure(Some(probe));
        assert!(is_reject(&b.admit()), "the next probe waits PROBE_EVERY");
        wait_for_probe_time();
        let _next = expect_probe(&b);
    }

    #[test]
    fn an_abandoned_probe_frees_its_slot() {
        let b = breaker();
        open(&b);
        wait_for_probe_time();
        let slot = expect_probe(&b);
        assert!(is_reject(&b.admit()), "one probe at a time");
        // The probing RPC is cancelled: its future, and the slot, are dropped unrecorded.
        drop(slot);
        let _next = expect_probe(&b);
    }

    #[test]
    fn calls_in_flight_when_it_opened_neither_free_the_probe_nor_postpone_it() {
        let b = breaker();
        open(&b);
        let opened = Instant::now();
        // A call sent before the breaker opened fails late (its deadline): it must not push the
        // next probe back.
        std::thread::sleep(PROBE_EVERY / 2);
        b.record_failure(None);
        std::thread::sleep(
            PROBE_EVERY.saturating_sub(opened.elapsed()) + Duration::from_millis(20),
        );
        let probe = expect_probe(&b);
        // More stragglers fail while the probe is in flight: it stays the only one.
        b.record_failure(None);
        b.record_failure(None);
        assert!(is_reject(&b.admit()), "a straggler freed the probe's slot");
        // A cancelled probe frees only its own slot, whatever happened meanwhile.
        drop(probe);
        let second = expect_probe(&b);
        b.record_success(Some(second));
        assert!(is_call(&b.admit()));
    }

    #[test]
    fn a_call_shared_by_many_checks_counts_as_one_failure() {
        let b = breaker();
        for _ in 0..FAILURES_TO_OPEN * 4 {
            b.record_call_failure(Some(42), None);
        }
        assert!(
            !b.is_open(),
            "one failed call, however many checks it carried"
        );
        for call in 0..u64::from(FAILURES_TO_OPEN) - 1 {
            b.record_call_failure(Some(100 + call), None);
        }
        assert!(b.is_open(), "five failed calls in a row");
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
