//! `GET /` on `SLUICE_HTTP_ADDR`: the human status page. Server-rendered HTML that reloads itself
//! every `REFRESH_SECONDS` (a `<meta>` refresh: no script, no front-end build), showing whether
//! this instance is ready, its counter store and breaker, decisions per second by tenant, the most
//! limited tenants, fail-open by reason, Redis call latency and batching, the policy snapshot and
//! the version.
//!
//! Off the hot path: a render reads the Prometheus registry (as `/metrics` does) and the readiness
//! and counter-store handles `/readyz` reads, nothing else. Rates come from two readings of the
//! counters: `StatusPage` keeps the previous one with its `Instant`, and each render divides
//! the increase since then by the time elapsed; the first render (or one after a long pause)
//! shows totals and says rates follow on the next refresh.
//!
//! Every value written into the page is HTML-escaped, tenant labels above all (they come from
//! requests, even though Sluice hashes any tenant value that is not a valid tenant id), and the
//! response carries [`CONTENT_SECURITY_POLICY`], which allows no script at all. Nothing secret is
//! shown: no URL, no password, no token.

use std::{
    collections::BTreeMap,
    fmt::{self, Display},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use prometheus::proto::{Metric, MetricFamily};

use crate::{
    ratelimit::counter::RedisState,
    telemetry::FailureReason,
    top_tenants::{DECISIONS, OTHER},
};

/// `Content-Security-Policy` of the page: no script, no fetch, no frame, no form, no image; only
/// the page's own inline `<style>`.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The page reloads itself this often.
const REFRESH_SECONDS: u32 = 5;

/// A previous reading older than this is dropped: a rate averaged over a long pause between two
/// views would read as current.
const STALE_AFTER: Duration = Duration::from_secs(300);

/// A previous reading younger than this is compared against but kept, so a quick reload (or a
/// second viewer) does not shrink the next viewer's interval to nothing.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// Rows of each tenant table, at most (`SLUICE_METRICS_TOP_TENANTS` may label up to 1,000).
const TENANT_ROWS: usize = 25;

/// Index of `denied` in [`DECISIONS`] (the `decision` label values, in the order of
/// [`TenantCounts`]).
const DENIED: usize = 1;

/// What the page says about the instance beyond the registry, from the handles `/readyz` reads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Instance {
    /// Whether `/readyz` answers 200.
    pub(crate) ready: bool,
    /// `None` for in-process counters, else Redis as the background ping last saw it.
    pub(crate) redis: Option<RedisState>,
}

/// The page, with the previous reading of the counters that rates are computed against.
#[derive(Default)]
pub(crate) struct StatusPage {
    previous: Mutex<Option<Arc<Reading>>>,
}

impl StatusPage {
    /// The page for `families` (the registry, gathered now) and `instance`, at `now` (for rates)
    /// and `unix_now` (seconds since the epoch, for the policy snapshot's age).
    pub(crate) fn render(
        &self,
        families: &[MetricFamily],
        instance: Instance,
        now: Instant,
        unix_now: f64,
    ) -> String {
        let current = Arc::new(Reading::from_families(families, now));
        let previous = self.swap_previous(&current);
        View {
            current: &current,
            previous: previous.as_deref(),
            instance,
            unix_now,
        }
        .to_string()
    }

    /// The reading to compare `current` against: none on the first render or when the kept one
    /// is stale. `current` is kept for the next render unless the kept one is younger than
    /// [`MIN_INTERVAL`].
    fn swap_previous(&self, current: &Arc<Reading>) -> Option<Arc<Reading>> {
        // A poisoned lock only means a render panicked; the reading it guards is still whole.
        let mut slot = self
            .previous
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let age = |p: &Reading| current.at.saturating_duration_since(p.at);
        let previous = slot.take().filter(|p| age(p) <= STALE_AFTER);
        match previous {
            Some(p) if age(&p) < MIN_INTERVAL => {
                *slot = Some(Arc::clone(&p));
                Some(p)
            }
            previous => {
                *slot = Some(Arc::clone(current));
                previous
            }
        }
    }
}

/// One tenant's decision counts, in the order of [`DECISIONS`].
type TenantCounts = [u64; DECISIONS.len()];

/// The series the page shows, read from the registry at one instant.
#[derive(Debug)]
struct Reading {
    at: Instant,
    /// `sluice_checks_total` by decision (`fail_open` summed over its reasons).
    decisions: BTreeMap<String, u64>,
    /// `sluice_checks_total{decision="fail_open"}` by reason.
    fail_open: BTreeMap<String, u64>,
    /// `sluice_tenant_checks_total` by tenant label.
    tenants: BTreeMap<String, TenantCounts>,
    check_duration: Option<HistogramReading>,
    /// Present only with Redis, like the series.
    redis_call_duration: Option<HistogramReading>,
    redis_batch_requests: Option<HistogramReading>,
    redis_errors: u64,
    circuit_open: bool,
    policies: Option<f64>,
    policy_snapshot_timestamp: Option<f64>,
    policy_reload_errors: u64,
}

impl Reading {
    fn from_families(families: &[MetricFamily], at: Instant) -> Self {
        let mut reading = Reading {
            at,
            decisions: BTreeMap::new(),
            fail_open: BTreeMap::new(),
            tenants: BTreeMap::new(),
            check_duration: None,
            redis_call_duration: None,
            redis_batch_requests: None,
            redis_errors: 0,
            circuit_open: false,
            policies: None,
            policy_snapshot_timestamp: None,
            policy_reload_errors: 0,
        };
        for family in families {
            let metrics = family.get_metric();
            let first = metrics.first();
            match family.name() {
                "sluice_checks_total" => {
                    for metric in metrics {
                        let count = counter(metric);
                        let decision = label(metric, "decision").unwrap_or_default();
                        *reading.decisions.entry(decision.to_owned()).or_default() += count;
                        if let Some(reason) = label(metric, "reason") {
                            *reading.fail_open.entry(reason.to_owned()).or_default() += count;
                        }
                    }
                }
                "sluice_tenant_checks_total" => {
                    for metric in metrics {
                        let (Some(tenant), Some(decision)) =
                            (label(metric, "tenant"), label(metric, "decision"))
                        else {
                            continue;
                        };
                        if let Some(i) = DECISIONS.iter().position(|d| *d == decision) {
                            reading.tenants.entry(tenant.to_owned()).or_default()[i] +=
                                counter(metric);
                        }
                    }
                }
                "sluice_check_duration_seconds" => {
                    reading.check_duration = first.map(HistogramReading::of)
                }
                "sluice_redis_call_duration_seconds" => {
                    reading.redis_call_duration = first.map(HistogramReading::of)
                }
                "sluice_redis_batch_requests" => {
                    reading.redis_batch_requests = first.map(HistogramReading::of)
                }
                "sluice_redis_errors_total" => reading.redis_errors = first.map_or(0, counter),
                "sluice_circuit_open" => {
                    reading.circuit_open = first.is_some_and(|m| gauge(m) > 0.0)
                }
                "sluice_policies" => reading.policies = first.map(gauge),
                "sluice_policy_snapshot_timestamp_seconds" => {
                    reading.policy_snapshot_timestamp = first.map(gauge)
                }
                "sluice_policy_reload_errors_total" => {
                    reading.policy_reload_errors = first.map_or(0, counter)
                }
                _ => {}
            }
        }
        reading
    }
}

fn label<'m>(metric: &'m Metric, name: &str) -> Option<&'m str> {
    metric
        .get_label()
        .iter()
        .find(|pair| pair.name() == name)
        .map(|pair| pair.value())
}

fn counter(metric: &Metric) -> u64 {
    // Integer counters: exact in an f64 up to 2^53.
    metric.get_counter().get_value() as u64
}

fn gauge(metric: &Metric) -> f64 {
    metric.get_gauge().get_value()
}

/// The increase of a counter from `before` to `now`: all of `now` when there was no series
/// before (a tenant newly labelled) or it restarted from zero (a tenant labelled again).
fn increase(now: u64, before: Option<u64>) -> u64 {
    match before {
        Some(before) if before <= now => now - before,
        _ => now,
    }
}

/// A histogram's count, sum and cumulative buckets (upper bound, count), without `+Inf`.
#[derive(Debug, Clone, Default, PartialEq)]
struct HistogramReading {
    count: u64,
    sum: f64,
    buckets: Vec<(f64, u64)>,
}

impl HistogramReading {
    fn of(metric: &Metric) -> Self {
        let histogram = metric.get_histogram();
        Self {
            count: histogram.get_sample_count(),
            sum: histogram.get_sample_sum(),
            buckets: histogram
                .get_bucket()
                .iter()
                .filter(|b| b.upper_bound().is_finite())
                .map(|b| (b.upper_bound(), b.cumulative_count()))
                .collect(),
        }
    }

    /// The observations since `previous`: all of them when there is none.
    fn since(&self, previous: Option<&HistogramReading>) -> HistogramReading {
        match previous {
            Some(p) if p.count <= self.count && p.buckets.len() == self.buckets.len() => {
                HistogramReading {
                    count: self.count - p.count,
                    sum: (self.sum - p.sum).max(0.0),
                    buckets: self
                        .buckets
                        .iter()
                        .zip(&p.buckets)
                        .map(|(&(bound, now), &(_, before))| (bound, now.saturating_sub(before)))
                        .collect(),
                }
            }
            _ => self.clone(),
        }
    }

    fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }

    /// The `q` quantile estimated from the buckets as Prometheus' `histogram_quantile` does:
    /// linear within the bucket it falls in.
    fn quantile(&self, q: f64) -> Option<Quantile> {
        if self.count == 0 {
            return None;
        }
        let rank = q * self.count as f64;
        let (mut lower, mut below) = (0.0, 0u64);
        for &(upper, cumulative) in &self.buckets {
            if cumulative as f64 >= rank {
                let in_bucket = cumulative.saturating_sub(below) as f64;
                let fraction = if in_bucket > 0.0 {
                    (rank - below as f64) / in_bucket
                } else {
                    1.0
                };
                return Some(Quantile::Within(lower + (upper - lower) * fraction));
            }
            (lower, below) = (upper, cumulative);
        }
        Some(Quantile::Above(lower))
    }
}

/// A quantile estimated from histogram buckets.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Quantile {
    Within(f64),
    /// In the `+Inf` bucket: above the highest finite bound.
    Above(f64),
}

impl Display for Quantile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Quantile::Within(seconds) => f.write_str(&duration(*seconds)),
            Quantile::Above(seconds) => write!(f, "over {}", duration(*seconds)),
        }
    }
}

/// Text for HTML, escaped: `&`, `<`, `>`, `"` and `'` become entities, so a value can never
/// open a tag or leave an attribute.
struct Escaped<'a>(&'a str);

impl Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..at])?;
            f.write_str(match rest.as_bytes()[at] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[at + 1..];
        }
        f.write_str(rest)
    }
}

/// Escapes `text` for the page.
fn esc(text: &str) -> Escaped<'_> {
    Escaped(text)
}

/// `0.42 ms`, `310 µs`, `1.20 s`.
fn duration(seconds: f64) -> String {
    if seconds < 0.001 {
        format!("{:.0} µs", seconds * 1e6)
    } else if seconds < 1.0 {
        format!("{:.2} ms", seconds * 1e3)
    } else {
        format!("{seconds:.2} s")
    }
}

/// `12 s`, `3 min 4 s`, `2 h 5 min`.
fn age(seconds: f64) -> String {
    let whole = seconds.max(0.0).round() as u64;
    match whole {
        0..60 => format!("{whole} s"),
        60..3600 => format!("{} min {} s", whole / 60, whole % 60),
        _ => format!("{} h {} min", whole / 3600, whole % 3600 / 60),
    }
}

/// `0.25/s`, `12.5/s`, `1530/s`.
fn rate(per_second: f64) -> String {
    if per_second < 10.0 {
        format!("{per_second:.2}/s")
    } else if per_second < 1000.0 {
        format!("{per_second:.1}/s")
    } else {
        format!("{per_second:.0}/s")
    }
}

/// One render: the current reading, the previous one (if any) and the instance.
struct View<'a> {
    current: &'a Reading,
    previous: Option<&'a Reading>,
    instance: Instance,
    unix_now: f64,
}

impl View<'_> {
    /// Seconds between the two readings, when there are two.
    fn interval(&self) -> Option<f64> {
        self.previous
            .map(|p| {
                self.current
                    .at
                    .saturating_duration_since(p.at)
                    .as_secs_f64()
            })
            .filter(|seconds| *seconds > 0.0)
    }

    /// `in the last 5.0 s` or `since start`.
    fn period(&self) -> String {
        match self.interval() {
            Some(seconds) => format!("in the last {seconds:.1} s"),
            None => "since start".to_owned(),
        }
    }

    /// The increase of `value` over the interval (its total on a first render).
    fn delta(&self, value: impl Fn(&Reading) -> Option<u64>) -> u64 {
        let now = value(self.current).unwrap_or(0);
        match self.previous {
            Some(previous) => increase(now, value(previous)),
            None => now,
        }
    }

    /// `count` over the interval as a rate, or `—` on a first render.
    fn per_second(&self, count: u64) -> String {
        match self.interval() {
            Some(seconds) => rate(count as f64 / seconds),
            None => "—".to_owned(),
        }
    }

    fn tenant_delta(&self, tenant: &str) -> TenantCounts {
        let now = self
            .current
            .tenants
            .get(tenant)
            .copied()
            .unwrap_or_default();
        match self.previous {
            Some(previous) => {
                let before = previous.tenants.get(tenant);
                std::array::from_fn(|i| increase(now[i], before.map(|b| b[i])))
            }
            None => now,
        }
    }

    fn head(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\n\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
             <title>Sluice status</title>\n<style>{STYLE}</style>\n</head>\n<body>\n\
             <h1>Sluice status</h1>\n<p class=\"meta\">version {} · reloads every {REFRESH_SECONDS} s · ",
            esc(env!("CARGO_PKG_VERSION"))
        )?;
        match self.interval() {
            Some(seconds) => writeln!(f, "rates over the last {seconds:.1} s</p>"),
            None => writeln!(
                f,
                "first load: totals since start, rates after the next refresh</p>"
            ),
        }
    }

    /// One line on top: what needs attention, or that nothing does.
    fn summary(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut problems = Vec::new();
        if !self.instance.ready {
            problems.push("not ready".to_owned());
        }
        if let Some(state) = self.instance.redis.filter(|s| *s != RedisState::Up) {
            problems.push(format!("Redis {}", state.as_str()));
        }
        if self.instance.redis.is_some() && self.current.circuit_open {
            problems.push("circuit breaker open".to_owned());
        }
        let failed_open = self.delta(|r| r.decisions.get("fail_open").copied());
        if failed_open > 0 {
            problems.push(format!(
                "{failed_open} checks failed open {}",
                self.period()
            ));
        }
        if problems.is_empty() {
            writeln!(
                f,
                "<p class=\"summary ok\">All clear: ready, counters answering, no fail-open {}.</p>",
                esc(&self.period())
            )
        } else {
            writeln!(
                f,
                "<p class=\"summary bad\">Needs attention: {}.</p>",
                esc(&problems.join("; "))
            )
        }
    }

    fn instance(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reading = self.current;
        f.write_str("<h2>Instance</h2>\n<table class=\"kv\">\n")?;
        if self.instance.ready {
            row_class(f, "Ready", "ok", "ready")?;
        } else {
            row_class(
                f,
                "Ready",
                "bad",
                "not ready: policies not loaded yet, or shutting down",
            )?;
        }
        match self.instance.redis {
            None => row(
                f,
                "Counters",
                "in-process (REDIS_URL unset): limits are per instance",
            )?,
            Some(state) => {
                let class = if state == RedisState::Up { "ok" } else { "bad" };
                row_class(f, "Redis", class, state.as_str())?;
            }
        }
        if self.instance.redis.is_none() {
            row(f, "Circuit breaker", "not used (no Redis)")?;
        } else if reading.circuit_open {
            row_class(
                f,
                "Circuit breaker",
                "bad",
                "open: checks are answered without Redis, per SLUICE_FAILURE_MODE",
            )?;
        } else {
            row_class(f, "Circuit breaker", "ok", "closed")?;
        }
        let policies = reading
            .policies
            .map_or_else(|| "unknown".to_owned(), |n| format!("{n:.0}"));
        row(f, "Policies loaded (enabled)", &policies)?;
        let snapshot = match reading.policy_snapshot_timestamp {
            Some(at) if at > 0.0 => format!("last full load {} ago", age(self.unix_now - at)),
            _ => "not loaded yet".to_owned(),
        };
        row(f, "Policy snapshot", &snapshot)?;
        row(
            f,
            "Policy reload errors (total)",
            &reading.policy_reload_errors.to_string(),
        )?;
        row(f, "Version", env!("CARGO_PKG_VERSION"))?;
        f.write_str("</table>\n")
    }

    fn decisions(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "<h2>Decisions</h2>\n<p>One per descriptor, every tenant.</p>\n\
             <table>\n<tr><th>Decision</th><th>Per second</th><th>Total</th></tr>\n",
        )?;
        for decision in DECISIONS {
            let total = self.current.decisions.get(decision).copied().unwrap_or(0);
            let delta = self.delta(|r| r.decisions.get(decision).copied());
            writeln!(
                f,
                "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                esc(decision),
                esc(&self.per_second(delta)),
                total
            )?;
        }
        f.write_str("</table>\n")
    }

    /// The tenants sorted by `key` of their interval counts (totals on a first render),
    /// largest first, those with a key of 0 left out when `skip_zero`.
    fn ranked(
        &self,
        key: impl Fn(&TenantCounts) -> u64,
        skip_zero: bool,
    ) -> Vec<(&str, TenantCounts)> {
        let mut rows: Vec<(&str, TenantCounts)> = self
            .current
            .tenants
            .keys()
            .map(|tenant| (tenant.as_str(), self.tenant_delta(tenant)))
            .filter(|(_, counts)| !skip_zero || key(counts) > 0)
            .collect();
        let total = |tenant: &str| self.current.tenants.get(tenant).map_or(0, &key);
        rows.sort_by(|(a, ca), (b, cb)| {
            key(cb)
                .cmp(&key(ca))
                .then_with(|| total(b).cmp(&total(a)))
                .then_with(|| a.cmp(b))
        });
        rows
    }

    fn tenants(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = if self.interval().is_some() {
            "/s"
        } else {
            " (total)"
        };
        write!(
            f,
            "<h2>Decisions per second by tenant</h2>\n<p>The busiest tenants \
             (SLUICE_METRICS_TOP_TENANTS); <code>{}</code> is every tenant without a series of its \
             own, and a tenant value that is not a valid tenant id shows as <code>~</code> and a \
             hash.</p>\n",
            esc(OTHER)
        )?;
        let rows = self.ranked(|c| c.iter().sum(), false);
        if rows.is_empty() {
            return f.write_str("<p>No checks yet.</p>\n");
        }
        write!(
            f,
            "<table>\n<tr><th>Tenant</th><th>Checks{unit}</th><th>Allowed{unit}</th>\
             <th>Denied{unit}</th><th>Shadow denied{unit}</th><th>Fail-open{unit}</th>\
             <th>Unmatched{unit}</th><th>Total checks</th></tr>\n"
        )?;
        for (tenant, counts) in rows.iter().take(TENANT_ROWS) {
            let total: u64 = self
                .current
                .tenants
                .get(*tenant)
                .map_or(0, |c| c.iter().sum());
            write!(
                f,
                "<tr class=\"tenant\"><td>{}</td><td class=\"n\">{}</td>",
                esc(tenant),
                esc(&self.amount(counts.iter().sum()))
            )?;
            for count in counts {
                write!(f, "<td class=\"n\">{}</td>", esc(&self.amount(*count)))?;
            }
            writeln!(f, "<td class=\"n\">{total}</td></tr>")?;
        }
        f.write_str("</table>\n")?;
        more(f, rows.len())
    }

    /// A count over the interval as a rate, or as a total on a first render.
    fn amount(&self, count: u64) -> String {
        match self.interval() {
            Some(_) => self.per_second(count),
            None => count.to_string(),
        }
    }

    fn limited(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<h2>Top limited tenants</h2>\n")?;
        let rows = self.ranked(|c| c[DENIED], true);
        if rows.is_empty() {
            return writeln!(
                f,
                "<p class=\"ok\">No tenant was denied {}.</p>",
                esc(&self.period())
            );
        }
        write!(
            f,
            "<p>By denied checks {}.</p>\n<table>\n<tr><th>Tenant</th><th>Denied</th>\
             <th>Denied per second</th><th>Share of its checks denied</th><th>Denied total</th></tr>\n",
            esc(&self.period())
        )?;
        for (tenant, counts) in rows.iter().take(TENANT_ROWS) {
            let checks: u64 = counts.iter().sum();
            let share = counts[DENIED] as f64 * 100.0 / checks.max(1) as f64;
            let total = self.current.tenants.get(*tenant).map_or(0, |c| c[DENIED]);
            writeln!(
                f,
                "<tr class=\"limited\"><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
                 <td class=\"n\">{share:.1} %</td><td class=\"n\">{total}</td></tr>",
                esc(tenant),
                counts[DENIED],
                esc(&self.per_second(counts[DENIED])),
            )?;
        }
        f.write_str("</table>\n")?;
        more(f, rows.len())
    }

    fn fail_open(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<h2>Fail-open</h2>\n")?;
        let recent = self.delta(|r| r.decisions.get("fail_open").copied());
        if recent == 0 {
            writeln!(
                f,
                "<p class=\"ok\">No check failed open {}.</p>",
                esc(&self.period())
            )?;
        } else {
            writeln!(
                f,
                "<p class=\"bad\">{recent} checks failed open {}.</p>",
                esc(&self.period())
            )?;
        }
        write!(
            f,
            "<table>\n<tr><th>Reason</th><th>{}</th><th>Total</th></tr>\n",
            esc(&capitalised(&self.period()))
        )?;
        // Every known reason, even while zero, then any the registry has beyond them.
        let known = FailureReason::ALL.map(FailureReason::as_str);
        let mut reasons: Vec<&str> = known.to_vec();
        reasons.extend(
            self.current
                .fail_open
                .keys()
                .map(String::as_str)
                .filter(|r| !known.contains(r)),
        );
        for reason in reasons {
            let total = self.current.fail_open.get(reason).copied().unwrap_or(0);
            let delta = self.delta(|r| r.fail_open.get(reason).copied());
            writeln!(
                f,
                "<tr><td>{}</td><td class=\"n\">{delta}</td><td class=\"n\">{total}</td></tr>",
                esc(reason)
            )?;
        }
        f.write_str("</table>\n")
    }

    fn redis_calls(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<h2>Redis calls</h2>\n")?;
        let Some(calls) = &self.current.redis_call_duration else {
            return f.write_str("<p>In-process counters: no Redis calls.</p>\n");
        };
        let previous = self.previous.and_then(|p| p.redis_call_duration.as_ref());
        let calls = calls.since(previous);
        let batches = self
            .current
            .redis_batch_requests
            .as_ref()
            .map(|b| b.since(self.previous.and_then(|p| p.redis_batch_requests.as_ref())));
        write!(
            f,
            "<p>One script call decides a batch of checks (group commit); figures {}.</p>\n\
             <table class=\"kv\">\n",
            esc(&self.period())
        )?;
        row(f, "Script calls", &calls.count.to_string())?;
        row(f, "Calls per second", &self.per_second(calls.count))?;
        let none = || "no calls".to_owned();
        row(f, "Mean latency", &calls.mean().map_or_else(none, duration))?;
        row(
            f,
            "p99 latency (estimate from buckets)",
            &calls.quantile(0.99).map_or_else(none, |q| q.to_string()),
        )?;
        row(
            f,
            "Requests per call (mean)",
            &batches
                .as_ref()
                .and_then(HistogramReading::mean)
                .map_or_else(none, |mean| format!("{mean:.2}")),
        )?;
        row(
            f,
            "Redis errors (total)",
            &self.current.redis_errors.to_string(),
        )?;
        f.write_str("</table>\n")
    }

    fn check_latency(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(checks) = &self.current.check_duration else {
            return Ok(());
        };
        let checks = checks.since(self.previous.and_then(|p| p.check_duration.as_ref()));
        write!(
            f,
            "<h2>ShouldRateLimit latency</h2>\n<p>Parse to response, {}.</p>\n<table class=\"kv\">\n",
            esc(&self.period())
        )?;
        let none = || "no calls".to_owned();
        row(f, "Calls", &checks.count.to_string())?;
        row(f, "Mean", &checks.mean().map_or_else(none, duration))?;
        row(
            f,
            "p99 (estimate from buckets)",
            &checks.quantile(0.99).map_or_else(none, |q| q.to_string()),
        )?;
        f.write_str("</table>\n")
    }
}

impl Display for View<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.head(f)?;
        self.summary(f)?;
        self.instance(f)?;
        self.tenants(f)?;
        self.limited(f)?;
        self.fail_open(f)?;
        self.decisions(f)?;
        self.redis_calls(f)?;
        self.check_latency(f)?;
        f.write_str(
            "<p class=\"meta\">Read from this instance's Prometheus registry: the same series as \
             <code>/metrics</code>, for this instance only.</p>\n</body>\n</html>\n",
        )
    }
}

/// A `<tr>` of a key-value table.
fn row(f: &mut fmt::Formatter<'_>, name: &str, value: &str) -> fmt::Result {
    writeln!(f, "<tr><th>{}</th><td>{}</td></tr>", esc(name), esc(value))
}

/// A `<tr>` of a key-value table with a class (`ok`, `bad`) on the value.
fn row_class(f: &mut fmt::Formatter<'_>, name: &str, class: &str, value: &str) -> fmt::Result {
    writeln!(
        f,
        "<tr><th>{}</th><td class=\"{}\">{}</td></tr>",
        esc(name),
        esc(class),
        esc(value)
    )
}

/// The note under a table cut at [`TENANT_ROWS`].
fn more(f: &mut fmt::Formatter<'_>, rows: usize) -> fmt::Result {
    if rows > TENANT_ROWS {
        writeln!(
            f,
            "<p class=\"meta\">{} more not shown.</p>",
            rows - TENANT_ROWS
        )?;
    }
    Ok(())
}

fn capitalised(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map_or_else(String::new, |first| {
        let mut out = first.to_uppercase().to_string();
        out.push_str(chars.as_str());
        out
    })
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}\
h1{margin-bottom:.2em}h2{margin-top:1.4em;font-size:1.15em}\
table{border-collapse:collapse}th,td{padding:.25em .8em;border-bottom:1px solid #ddd;text-align:left}\
td.n{text-align:right;font-variant-numeric:tabular-nums}.kv th{font-weight:normal;color:#555}\
.ok{color:#1a7f37}.bad{color:#b42318;font-weight:bold}.meta{color:#666;font-size:.9em}\
.summary{padding:.5em .8em;border:1px solid currentColor;display:inline-block}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denied_indexes_the_denied_decision() {
        assert_eq!(DECISIONS[DENIED], "denied");
    }
    use crate::telemetry::Metrics;

    const UP: Instance = Instance {
        ready: true,
        redis: Some(RedisState::Up),
    };

    fn render(page: &StatusPage, metrics: &Metrics, at: Instant) -> String {
        page.render(&metrics.gather(), UP, at, 1_000_000.0)
    }

    #[test]
    fn escapes_every_markup_character() {
        assert_eq!(
            esc(r#"<script>alert("x") & 'y'</script>"#).to_string(),
            "&lt;script&gt;alert(&quot;x&quot;) &amp; &#39;y&#39;&lt;/script&gt;"
        );
        assert_eq!(esc("acme-1.eu_west").to_string(), "acme-1.eu_west");
        assert_eq!(esc("").to_string(), "");
    }

    #[test]
    fn a_tenant_label_with_markup_is_shown_escaped() {
        // The hot path hashes such values before they reach a label; the page must not rely on it.
        let metrics = Metrics::new();
        let evil = "<script>alert(1)</script>";
        metrics.tenants.lookup().series(evil, true).denied.inc();
        let html = render(&StatusPage::default(), &metrics, Instant::now());
        assert!(!html.contains("<script"), "{html}");
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{html}"
        );
    }

    #[test]
    fn the_first_render_shows_totals_and_the_next_one_rates() {
        let metrics = Metrics::new();
        let page = StatusPage::default();
        let start = Instant::now();
        metrics
            .tenants
            .lookup()
            .series("acme", true)
            .allowed
            .inc_by(7);
        metrics.checks_allowed.inc_by(7);
        let first = render(&page, &metrics, start);
        assert!(first.contains("rates after the next refresh"), "{first}");
        assert!(first.contains("<td>acme</td>"), "{first}");

        metrics
            .tenants
            .lookup()
            .series("acme", true)
            .allowed
            .inc_by(10);
        metrics
            .tenants
            .lookup()
            .series("globex", true)
            .denied
            .inc_by(4);
        metrics.checks_allowed.inc_by(10);
        metrics.checks_denied.inc_by(4);
        let second = render(&page, &metrics, start + Duration::from_secs(2));
        assert!(second.contains("rates over the last 2.0 s"), "{second}");
        // acme: 10 checks in 2 s; globex: 4 denied in 2 s, 100 % of its checks.
        assert!(
            second.contains("<tr class=\"tenant\"><td>acme</td><td class=\"n\">5.00/s</td>"),
            "{second}"
        );
        assert!(
            second.contains(
                "<tr class=\"limited\"><td>globex</td><td class=\"n\">4</td><td class=\"n\">2.00/s</td><td class=\"n\">100.0 %</td>"
            ),
            "{second}"
        );
        assert!(
            !second.contains("<tr class=\"limited\"><td>acme"),
            "{second}"
        );
    }

    #[test]
    fn a_quick_reload_keeps_the_older_reading_for_the_next_view() {
        let metrics = Metrics::new();
        let page = StatusPage::default();
        let start = Instant::now();
        render(&page, &metrics, start);
        let quick = render(&page, &metrics, start + Duration::from_millis(200));
        assert!(quick.contains("rates over the last 0.2 s"), "{quick}");
        let next = render(&page, &metrics, start + Duration::from_secs(5));
        assert!(next.contains("rates over the last 5.0 s"), "{next}");
        let after_a_pause = render(
            &page,
            &metrics,
            start + Duration::from_secs(5) + STALE_AFTER * 2,
        );
        assert!(
            after_a_pause.contains("rates after the next refresh"),
            "{after_a_pause}"
        );
    }

    #[test]
    fn fail_open_in_the_last_interval_is_called_out_by_reason() {
        let metrics = Metrics::new();
        let page = StatusPage::default();
        let start = Instant::now();
        metrics.checks_fail_open(FailureReason::Timeout).inc_by(3);
        render(&page, &metrics, start);
        let quiet = render(&page, &metrics, start + Duration::from_secs(5));
        assert!(
            quiet.contains("No check failed open in the last 5.0 s."),
            "{quiet}"
        );
        assert!(
            quiet.contains("<tr><td>timeout</td><td class=\"n\">0</td><td class=\"n\">3</td></tr>"),
            "{quiet}"
        );
        metrics
            .checks_fail_open(FailureReason::BreakerOpen)
            .inc_by(2);
        let loud = render(&page, &metrics, start + Duration::from_secs(10));
        assert!(
            loud.contains("2 checks failed open in the last 5.0 s."),
            "{loud}"
        );
        assert!(
            loud.contains("Needs attention: 2 checks failed open in the last 5.0 s."),
            "{loud}"
        );
        assert!(quiet.contains("All clear"), "{quiet}");
        assert!(
            loud.contains(
                "<tr><td>breaker_open</td><td class=\"n\">2</td><td class=\"n\">2</td></tr>"
            ),
            "{loud}"
        );
    }

    #[test]
    fn redis_call_latency_and_batching_come_from_the_histogram_deltas() {
        let metrics = Metrics::new();
        let calls = metrics.register_redis_calls();
        let page = StatusPage::default();
        let start = Instant::now();
        calls.duration.observe(0.2);
        render(&page, &metrics, start);
        for _ in 0..4 {
            calls.duration.observe(0.002);
            calls.batch_requests.observe(3.0);
        }
        let html = render(&page, &metrics, start + Duration::from_secs(2));
        assert!(
            html.contains("<tr><th>Mean latency</th><td>2.00 ms</td></tr>"),
            "{html}"
        );
        assert!(
            html.contains("<tr><th>Requests per call (mean)</th><td>3.00</td></tr>"),
            "{html}"
        );
        assert!(
            html.contains("<tr><th>Calls per second</th><td>2.00/s</td></tr>"),
            "{html}"
        );
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket_like_prometheus() {
        let histogram = HistogramReading {
            count: 100,
            sum: 0.0,
            buckets: vec![(0.001, 50), (0.002, 90), (0.004, 100)],
        };
        assert_eq!(histogram.quantile(0.5), Some(Quantile::Within(0.001)));
        let Some(Quantile::Within(p99)) = histogram.quantile(0.99) else {
            panic!("within the buckets");
        };
        assert!((p99 - 0.0038).abs() < 1e-9, "{p99}");
        let beyond = HistogramReading {
            count: 10,
            sum: 0.0,
            buckets: vec![(0.001, 5)],
        };
        assert_eq!(beyond.quantile(0.99), Some(Quantile::Above(0.001)));
        assert_eq!(HistogramReading::default().quantile(0.99), None);
    }

    #[test]
    fn in_process_counters_and_an_unready_instance_say_so() {
        let metrics = Metrics::new();
        let html = StatusPage::default().render(
            &metrics.gather(),
            Instance {
                ready: false,
                redis: None,
            },
            Instant::now(),
            1_000_000.0,
        );
        assert!(html.contains("Needs attention: not ready."), "{html}");
        assert!(html.contains("in-process (REDIS_URL unset)"), "{html}");
        assert!(
            html.contains("In-process counters: no Redis calls."),
            "{html}"
        );
        assert!(html.contains("not loaded yet"), "{html}");
    }

    #[test]
    fn the_policy_snapshot_age_is_read_from_its_timestamp() {
        let metrics = Metrics::new();
        metrics.policies.set(3);
        metrics.policy_snapshot_timestamp.set(1_000_000.0 - 75.0);
        let html = render(&StatusPage::default(), &metrics, Instant::now());
        assert!(html.contains("<td>3</td>"), "{html}");
        assert!(html.contains("last full load 1 min 15 s ago"), "{html}");
    }
}
