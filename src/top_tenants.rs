//! `sluice_tenant_checks_total{tenant, decision}`: decisions per tenant for the top
//! `SLUICE_METRICS_TOP_TENANTS` tenants by traffic, every other tenant under `tenant="other"`, so
//! the label never takes more than N + 1 values, whatever tenants requests name.
//!
//! # How a tenant gets a series of its own
//! Requests are tallied per tenant in a Space-Saving summary of bounded size
//! ([`SUMMARY_PER_LABEL`] × N entries): a tenant not in it replaces the least-tallied one, so busy
//! tenants stay in it and a flood of one-off tenant values cannot grow it. While fewer than N
//! tenants have a series, a tenant gets one the first time it is seen (a deployment with fewer
//! tenants than N sees all of them at once). Every [`RERANK_EVERY`], the summary's top N become
//! the labelled set: a tenant that dropped out loses its series (they leave `/metrics`; its later
//! decisions count under `other`), a newcomer gets one, and every tally is halved, so the ranking
//! follows recent traffic.
//!
//! The hot path reads the labelled set without a lock or a reference count (one `arc_swap` guard
//! per request) and, once N tenants are labelled, tallies one request in [`TALLY_EVERY`] (with
//! that weight) with `try_lock`: a tally that would wait is skipped (a sample lost), never waited
//! for. Until then every request is tallied, so each of the first N tenants gets its series with
//! its first request.

use std::{
    cell::Cell,
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use arc_swap::{ArcSwap, Guard};
use foldhash::fast::RandomState;
use prometheus::{IntCounter, IntCounterVec, Opts};

/// `SLUICE_METRICS_TOP_TENANTS` when unset.
pub const DEFAULT_TOP_TENANTS: usize = 20;
/// The `tenant` label of every tenant without a series of its own.
pub const OTHER: &str = "other";
/// How often the labelled set follows the ranking.
const RERANK_EVERY: Duration = Duration::from_secs(10);
/// Summary entries per labelled tenant: room for tenants just below the top to climb.
const SUMMARY_PER_LABEL: usize = 8;
/// Once N tenants are labelled, one request in this many (per thread) is tallied, weighing this
/// much.
const TALLY_EVERY: u32 = 16;
/// The `decision` label values of `sluice_tenant_checks_total`, in the order of
/// [`TenantSeries`]' fields.
pub const DECISIONS: [&str; 5] = [
    "allowed",
    "denied",
    "shadow_denied",
    "fail_open",
    "unmatched",
];

/// One tenant's (or `other`'s) decision counters.
#[derive(Debug, Clone)]
pub struct TenantSeries {
    pub allowed: IntCounter,
    pub denied: IntCounter,
    pub shadow_denied: IntCounter,
    pub fail_open: IntCounter,
    pub unmatched: IntCounter,
}

impl TenantSeries {
    fn new(counter: &IntCounterVec, tenant: &str) -> Self {
        let [allowed, denied, shadow_denied, fail_open, unmatched] =
            DECISIONS.map(|decision| counter.with_label_values(&[tenant, decision]));
        Self {
            allowed,
            denied,
            shadow_denied,
            fail_open,
            unmatched,
        }
    }

    fn remove(counter: &IntCounterVec, tenant: &str) {
        for decision in DECISIONS {
            // Absent already is fine: nothing to remove.
            let _ = counter.remove_label_values(&[tenant, decision]);
        }
    }
}

type Labelled = HashMap<Box<str>, TenantSeries, RandomState>;

thread_local! {
    /// Requests seen by this thread since its last tally.
    static SINCE_TALLY: Cell<u32> = const { Cell::new(0) };
}

/// The per-tenant decision series and the ranking that picks whose they are.
pub struct TopTenants {
    /// N: tenants with a series of their own, at most.
    limit: usize,
    counter: IntCounterVec,
    other: TenantSeries,
    labelled: ArcSwap<Labelled>,
    summary: Mutex<Summary>,
}

struct Summary {
    tallies: HashMap<Box<str>, u64, RandomState>,
    capacity: usize,
    next_rerank: Instant,
}

impl Summary {
    /// Space-Saving: a tenant not tallied yet, when the summary is full, takes the place (and
    /// the tally) of the least-tallied one, so a busy tenant is never pushed out by rare ones.
    fn add(&mut self, tenant: &str, weight: u64) {
        if let Some(tally) = self.tallies.get_mut(tenant) {
            *tally += weight;
            return;
        }
        let mut start = 0;
        if self.tallies.len() >= self.capacity {
            let Some((least, &tally)) = self.tallies.iter().min_by_key(|(_, tally)| **tally) else {
                return;
            };
            let least = least.clone();
            self.tallies.remove(&least);
            start = tally;
        }
        self.tallies.insert(tenant.into(), start + weight);
    }
}

impl TopTenants {
    /// Series for at most `limit` tenants of their own, plus `other`.
    pub fn new(limit: usize) -> Self {
        let counter = IntCounterVec::new(
            Opts::new(
                "sluice_tenant_checks_total",
                "Rate-limit decisions per tenant, one per descriptor, for the top \
                 SLUICE_METRICS_TOP_TENANTS tenants by traffic; the rest under tenant=\"other\"",
            ),
            &["tenant", "decision"],
        )
        .expect("valid metric");
        let other = TenantSeries::new(&counter, OTHER);
        Self {
            limit,
            other,
            labelled: ArcSwap::from_pointee(Labelled::default()),
            summary: Mutex::new(Summary {
                tallies: HashMap::default(),
                capacity: limit.saturating_mul(SUMMARY_PER_LABEL).max(1),
                next_rerank: Instant::now() + RERANK_EVERY,
            }),
            counter,
        }
    }

    /// The counter family, for registration.
    pub fn counter(&self) -> &IntCounterVec {
        &self.counter
    }

    /// The series of one request's tenants; hold it for the request (it pins the labelled set).
    pub fn lookup(&self) -> TenantLookup<'_> {
        TenantLookup {
            top: self,
            labelled: self.labelled.load(),
        }
    }

    /// Tallies one request of `tenant`, sampled once N tenants are labelled; may admit it to, or
    /// rerank, the labelled set. Whether the labelled set changed.
    fn tally(&self, tenant: &str, labelled: &Labelled) -> bool {
        let weight = if labelled.len() < self.limit {
            1
        } else {
            let since = SINCE_TALLY.with(|since| {
                let next = since.get() + 1;
                since.set(next % TALLY_EVERY);
                next
            });
            if since < TALLY_EVERY {
                return false;
            }
            u64::from(TALLY_EVERY)
        };
        // A tally that would wait is skipped: the ranking is a sample, the hot path never blocks.
        let Ok(mut summary) = self.summary.try_lock() else {
            return false;
        };
        summary.add(tenant, weight);
        let mut changed = false;
        let current = self.labelled.load();
        if current.len() < self.limit && !current.contains_key(tenant) {
            let mut grown: Labelled = (**current).clone();
            grown.insert(tenant.into(), TenantSeries::new(&self.counter, tenant));
            self.labelled.store(Arc::new(grown));
            changed = true;
        }
        let now = Instant::now();
        if now >= summary.next_rerank {
            summary.next_rerank = now + RERANK_EVERY;
            self.rerank(&mut summary);
            changed = true;
        }
        changed
    }

    /// The summary's top N become the labelled set (ties keep tenants already labelled); then
    /// every tally is halved.
    fn rerank(&self, summary: &mut Summary) {
        let labelled = self.labelled.load();
        let mut ranked: Vec<(&str, u64)> = summary
            .tallies
            .iter()
            .map(|(tenant, tally)| (&**tenant, *tally))
            .collect();
        ranked.sort_by(|(a, ta), (b, tb)| {
            tb.cmp(ta)
                .then_with(|| labelled.contains_key(*b).cmp(&labelled.contains_key(*a)))
                .then_with(|| a.cmp(b))
        });
        let top: Labelled = ranked
            .iter()
            .take(self.limit)
            .map(|(tenant, _)| {
                let series = labelled
                    .get(*tenant)
                    .cloned()
                    .unwrap_or_else(|| TenantSeries::new(&self.counter, tenant));
                (Box::<str>::from(*tenant), series)
            })
            .collect();
        for tenant in labelled.keys() {
            if !top.contains_key(tenant) {
                TenantSeries::remove(&self.counter, tenant);
            }
        }
        self.labelled.store(Arc::new(top));
        summary.tallies.retain(|_, tally| {
            *tally /= 2;
            *tally > 0
        });
    }

    /// The tenants with a series of their own now.
    #[cfg(test)]
    fn labelled_tenants(&self) -> Vec<String> {
        let mut tenants: Vec<String> = self.labelled.load().keys().map(|t| t.to_string()).collect();
        tenants.sort();
        tenants
    }

    #[cfg(test)]
    fn force_rerank(&self) {
        let mut summary = self.summary.lock().expect("not poisoned");
        self.rerank(&mut summary);
    }
}

/// The labelled set as one request sees it.
pub struct TenantLookup<'t> {
    top: &'t TopTenants,
    labelled: Guard<Arc<Labelled>>,
}

impl TenantLookup<'_> {
    /// The series `tenant` (as written in counter keys) counts its decisions in. `tally`: count
    /// one request of it towards the ranking (once per request and tenant).
    pub fn series(&mut self, tenant: &str, tally: bool) -> &TenantSeries {
        if self.top.limit == 0 {
            return &self.top.other;
        }
        if tally && self.top.tally(tenant, &self.labelled) {
            self.labelled = self.top.labelled.load();
        }
        self.labelled.get(tenant).unwrap_or(&self.top.other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(top: &TopTenants, tenant: &str, decision: &str) -> u64 {
        top.counter.with_label_values(&[tenant, decision]).get()
    }

    /// One request of `tenant`, as the hot path sees it: its series, after tallying it.
    fn request(top: &TopTenants, tenant: &str) -> TenantSeries {
        top.lookup().series(tenant, true).clone()
    }

    #[test]
    fn the_first_tenants_get_series_at_once_and_the_rest_count_as_other() {
        let top = TopTenants::new(2);
        for tenant in ["acme", "globex", "initech", "acme"] {
            request(&top, tenant).allowed.inc();
        }
        assert_eq!(top.labelled_tenants(), ["acme", "globex"]);
        assert_eq!(count(&top, "acme", "allowed"), 2);
        assert_eq!(count(&top, "globex", "allowed"), 1);
        assert_eq!(count(&top, OTHER, "allowed"), 1, "initech");
    }

    #[test]
    fn reranking_follows_traffic_and_removes_the_series_of_tenants_that_dropped_out() {
        let top = TopTenants::new(2);
        request(&top, "quiet-a").allowed.inc();
        request(&top, "quiet-b").denied.inc();
        for _ in 0..50 {
            request(&top, "busy").allowed.inc();
        }
        // Both labelled now, so one request in TALLY_EVERY is tallied: busy's 50 count 48,
        // quiet-b's 20 more count 16.
        for _ in 0..20 {
            request(&top, "quiet-b");
        }
        assert_eq!(top.labelled_tenants(), ["quiet-a", "quiet-b"]);
        top.force_rerank();
        assert_eq!(top.labelled_tenants(), ["busy", "quiet-b"]);
        let exported: Vec<String> = prometheus::core::Collector::collect(&top.counter)
            .iter()
            .flat_map(|family| family.get_metric().to_vec())
            .flat_map(|m| {
                m.get_label()
                    .iter()
                    .filter(|l| l.name() == "tenant")
                    .map(|l| l.value().to_owned())
                    .collect::<Vec<_>>()
            })
            .collect();
        assert!(
            !exported.iter().any(|t| t == "quiet-a"),
            "quiet-a's series left /metrics: {exported:?}"
        );
        request(&top, "busy").allowed.inc();
        assert_eq!(
            count(&top, "busy", "allowed"),
            1,
            "a fresh series from the rerank"
        );
        assert_eq!(
            count(&top, "quiet-b", "denied"),
            1,
            "kept series keep counting"
        );
    }

    #[test]
    fn a_flood_of_one_off_tenants_cannot_grow_the_summary_or_the_labels() {
        // One request in ten is a real tenant's, the rest each name a tenant never seen again:
        // Space-Saving keeps every tenant above total / capacity.
        let top = TopTenants::new(3);
        for i in 0..10_000 {
            request(&top, &format!("random-{i}"));
            if i % 10 == 0 {
                request(&top, "steady");
            }
        }
        let summary = top.summary.lock().expect("not poisoned");
        assert!(summary.tallies.len() <= 3 * SUMMARY_PER_LABEL);
        assert!(
            summary.tallies.get("steady").is_some_and(|&t| t >= 500),
            "the busy tenant keeps its place"
        );
        drop(summary);
        top.force_rerank();
        let labelled = top.labelled_tenants();
        assert!(labelled.len() <= 3);
        assert!(labelled.contains(&"steady".to_owned()), "{labelled:?}");
    }

    #[test]
    fn zero_tenants_of_their_own_puts_everyone_in_other() {
        let top = TopTenants::new(0);
        request(&top, "acme").allowed.inc();
        assert_eq!(count(&top, OTHER, "allowed"), 1);
        assert!(top.labelled_tenants().is_empty());
    }
}
