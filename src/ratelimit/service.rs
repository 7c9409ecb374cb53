//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`, the hot path, in the stages of
//! [`RateLimiter::decide`]:
//! 1. parse ([`super::request`]);
//! 2. plan: each descriptor's policy from the in-memory snapshot ([`super::snapshot`], no await,
//!    no lock) or its own override, and its counter key ([`super::keys`]);
//! 3. deny up front: the over-limit cache ([`super::over_limit_cache`]) and costs no limit allows;
//! 4. the counter step: one call per tenant, all under one deadline ([`super::counter`]), each
//!    guarded by the breaker of the part of the store that holds the tenant's keys
//!    ([`super::breaker`]: one per Redis Cluster primary), giving `CounterStep::Counted` or
//!    `CounterStep::FailedOpen`;
//! 5. respond: one status per descriptor and the decision metrics.
//!
//! Failures of the counter step answer per `SLUICE_FAILURE_MODE`, each with its
//! [`FailureReason`] (a Redis error, a call not answered by the deadline, an open breaker, or a
//! check that waited for a call until its deadline): `open` allows the request (decision
//! `fail_open{reason}`, no limit reported so Envoy adds no misleading headers); `unavailable`
//! answers gRPC UNAVAILABLE and Envoy's `failure_mode_deny` decides. Only calls actually sent
//! that fail or time out count towards the breaker: being busy never opens it.

use std::{
    borrow::Cow,
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::future::join_all;
use tonic::{Request, Response, Status};

use super::{
    breaker::{Admission, BreakerRef, Breakers, CircuitBreaker, ProbeSlot, RateLimitedWarning},
    counter::{CounterCheck, CounterError, CounterVerdict, SlidingWindowCounter},
    keys,
    over_limit_cache::{CounterId, OverLimitCache},
    request::{DescriptorKeys, ParsedDescriptor, parse_request},
    snapshot::{ActivePolicy, PolicySnapshot, SharedSnapshot},
};
use crate::{
    grpc_codec::invalid_argument,
    proto::envoy::{
        service::ratelimit::v3::{
            RateLimitRequest, RateLimitResponse,
            rate_limit_response::{Code, DescriptorStatus, RateLimit, rate_limit::Unit},
            rate_limit_service_server::RateLimitService,
        },
        r#type::v3::RateLimitUnit,
    },
    settings::FailureMode,
    telemetry::{self, FailureReason, Metrics, TenantSeries, error_chain},
    top_tenants::TenantLookup,
};

/// `ErrorInfo.reason` of a request whose shape Envoy's configuration got wrong (SPEC §3).
pub const INVALID_RATE_LIMIT_REQUEST: &str = "INVALID_RATE_LIMIT_REQUEST";

/// Everything `ShouldRateLimit` needs; built once by `startup`.
pub struct RateLimiter {
    pub(super) snapshot: Arc<SharedSnapshot>,
    pub(super) counter: Arc<dyn SlidingWindowCounter>,
    pub(super) keys: DescriptorKeys,
    /// The whole counter step's deadline (RATE_LIMIT_REDIS_TIMEOUT_MS).
    pub(super) deadline: Duration,
    failure_mode: FailureMode,
    /// One per part of the store that fails as one (see [`SlidingWindowCounter::shard_of`]).
    breakers: Breakers,
    metrics: Metrics,
    failure_warning: RateLimitedWarning,
    shadow_notice: RateLimitedWarning,
    over_limit: OverLimitCache,
}

/// How the rate limiter is configured.
pub struct RateLimiterConfig {
    pub keys: DescriptorKeys,
    pub deadline: Duration,
    pub failure_mode: FailureMode,
}

impl RateLimiter {
    pub fn new(
        snapshot: Arc<SharedSnapshot>,
        counter: Arc<dyn SlidingWindowCounter>,
        config: RateLimiterConfig,
        metrics: Metrics,
    ) -> Self {
        Self {
            breakers: Breakers::new(
                metrics.circuit_open.clone(),
                metrics.circuit_transitions.clone(),
            ),
            snapshot,
            counter,
            keys: config.keys,
            deadline: config.deadline,
            failure_mode: config.failure_mode,
            metrics,
            failure_warning: RateLimitedWarning::default(),
            shadow_notice: RateLimitedWarning::default(),
            over_limit: OverLimitCache::default(),
        }
    }
}

/// What the counter step gave for a request's tenant groups.
enum CounterStep {
    /// One verdict list per tenant group, in group order.
    Counted(Vec<Vec<CounterVerdict>>),
    /// No decision, for this reason; the failure mode is `open`, so the request is allowed.
    FailedOpen(FailureReason),
}

/// How one descriptor is counted.
pub(super) struct Plan<'a> {
    /// The tenant as it appears in counter keys.
    pub(super) counter_tenant: Cow<'a, str>,
    key_suffix: Cow<'a, str>,
    /// `current_limit.name`: the policy id, or empty for a bare override.
    name: &'a str,
    pub(super) max_requests: u32,
    pub(super) window_ms: u64,
    pub(super) burst_limit: u32,
    unit: Unit,
    pub(super) shadow: bool,
    /// Hits this descriptor adds, as sent: may exceed what any limit allows.
    pub(super) hits: u64,
}

impl<'a> Plan<'a> {
    pub(super) fn new(
        descriptor: &ParsedDescriptor<'a>,
        policy: Option<&'a Arc<ActivePolicy>>,
        entries: &[(&[u8], &[u8])],
    ) -> Option<Self> {
        if policy.is_none() && descriptor.limit_override.is_none() {
            // Unmatched: no counter, so no key to build.
            return None;
        }
        let counter_tenant = keys::counter_tenant(descriptor.tenant, descriptor.tenant_text);
        match (policy, descriptor.limit_override) {
            (None, None) => None,
            (Some(policy), None) => Some(Self {
                counter_tenant,
                key_suffix: Cow::Borrowed(&policy.key_suffix),
                name: &policy.name,
                max_requests: policy.limits.max_requests(),
                window_ms: u64::from(policy.limits.window_seconds()) * 1000,
                burst_limit: policy.limits.burst_limit(),
                unit: policy.unit,
                shadow: policy.shadow,
                hits: descriptor.hits,
            }),
            (policy, Some(limit)) => {
                let window_seconds = limit.window.as_secs();
                let key_suffix = match policy {
                    // The same window: the policy's own log, shared by every endpoint its
                    // pattern matches, judged against the override's number.
                    Some(policy) if u64::from(policy.limits.window_seconds()) == window_seconds => {
                        Cow::Borrowed(policy.key_suffix.as_str())
                    }
                    // Another window: a log of its own, so trimming and expiring it by this
                    // window can never drop hits the policy's window still counts.
                    Some(policy) => {
                        Cow::Owned(keys::windowed_suffix(&policy.key_suffix, window_seconds))
                    }
                    // No policy: counted per distinct descriptor (and window).
                    None => Cow::Owned(keys::override_suffix(entries, window_seconds)),
                };
                Some(Self {
                    counter_tenant,
                    key_suffix,
                    name: policy.map(|p| p.name.as_str()).unwrap_or(""),
                    max_requests: limit.requests_per_unit,
                    window_ms: window_seconds * 1000,
                    // The policy's burst stays, never above the override's own limit.
                    burst_limit: policy
                        .map_or(0, |p| p.limits.burst_limit().min(limit.requests_per_unit)),
                    unit: response_unit(limit.unit),
                    shadow: policy.is_some_and(|p| p.shadow),
                    hits: descriptor.hits,
                })
            }
        }
    }

    /// The over-limit cache's name for this counter, when its answers may be cached: enforcing
    /// and without a burst limit (a burst count recovers every second, so it is not monotonic).
    fn cache_id(&self, generation: u64) -> Option<CounterId<'_>> {
        (!self.shadow && self.burst_limit == 0).then(|| CounterId {
            tenant: &self.counter_tenant,
            suffix: &self.key_suffix,
            max_requests: self.max_requests,
            window_ms: self.window_ms,
            generation,
        })
    }

    /// Whether this descriptor's hits exceed what its limit allows even on an empty counter (a
    /// `hits_addend` larger than `max_requests`, or than the burst limit): decided OVER_LIMIT
    /// without counting, however large the number.
    fn can_never_fit(&self) -> bool {
        self.hits > u64::from(self.max_requests)
            || (self.burst_limit > 0 && self.hits > u64::from(self.burst_limit))
    }

    /// The hits to send to the counter: what fits in a check. A check that can never fit is only
    /// read; its verdict is then set by [`Plan::judge_read`].
    fn counted_hits(&self) -> u32 {
        if self.can_never_fit() {
            0
        } else {
            // can_never_fit() is false, so hits <= max_requests, a u32.
            u32::try_from(self.hits).unwrap_or(u32::MAX)
        }
    }

    /// The counter check; `read_only` reads the counter without counting (0 hits).
    pub(super) fn check(&self, read_only: bool) -> CounterCheck<'_> {
        CounterCheck {
            key_suffix: &self.key_suffix,
            max_requests: self.max_requests,
            window_ms: self.window_ms,
            burst_limit: self.burst_limit,
            hits: if read_only { 0 } else { self.counted_hits() },
            enforcing: !self.shadow,
        }
    }

    /// Whether this descriptor's own hits would have fit a counter that was only read (0 hits).
    fn judge_read(&self, verdict: &mut CounterVerdict) {
        verdict.allowed = self.hits <= u64::from(verdict.remaining);
    }
}

/// The response unit for an override's unit: the same enum value in Envoy's two protos.
fn response_unit(unit: RateLimitUnit) -> Unit {
    match unit {
        RateLimitUnit::Unknown => Unit::Unknown,
        RateLimitUnit::Second => Unit::Second,
        RateLimitUnit::Minute => Unit::Minute,
        RateLimitUnit::Hour => Unit::Hour,
        RateLimitUnit::Day => Unit::Day,
        RateLimitUnit::Week => Unit::Week,
        RateLimitUnit::Month => Unit::Month,
        RateLimitUnit::Year => Unit::Year,
    }
}

/// How each descriptor is counted: its policy from the snapshot (the tenant's own, then the `*`
/// defaults) or its own override; `None` when nothing applies. No await, no lock.
fn plan<'a>(
    request: &'a RateLimitRequest,
    descriptors: &'a [ParsedDescriptor<'a>],
    snapshot: &'a PolicySnapshot,
) -> Vec<Option<Plan<'a>>> {
    descriptors
        .iter()
        .map(|d| {
            // A tenant that is not UTF-8 names no tenant's policies (no stored tenant id is
            // empty), so only the `*` defaults can match it.
            let policy = snapshot.lookup(
                d.tenant_text.unwrap_or(""),
                d.method.as_deref(),
                d.path.as_deref(),
            );
            let entries: Vec<(&[u8], &[u8])> = if d.limit_override.is_some() && policy.is_none() {
                request.descriptors[d.index]
                    .entries
                    .iter()
                    .map(|e| (e.key.as_slice(), e.value.as_slice()))
                    .collect()
            } else {
                Vec::new()
            };
            Plan::new(d, policy, &entries)
        })
        .collect()
}

/// The descriptors still to decide, grouped by counter tenant: one atomic counter call each.
fn tenant_groups<'p>(
    plans: &'p [Option<Plan<'_>>],
    decided: &[Option<CounterVerdict>],
) -> Vec<(&'p str, Vec<usize>)> {
    let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
    for (i, plan) in plans.iter().enumerate() {
        if let Some(plan) = plan
            && decided[i].is_none()
        {
            match groups
                .iter_mut()
                .find(|(t, _)| *t == plan.counter_tenant.as_ref())
            {
                Some((_, members)) => members.push(i),
                None => groups.push((plan.counter_tenant.as_ref(), vec![i])),
            }
        }
    }
    groups
}

/// The status of a matched descriptor: its code, the limit it was judged by (feeding Envoy's
/// `x-ratelimit-*` headers), what remains and when the oldest counted hit leaves the window.
fn matched_status(plan: &Plan<'_>, verdict: &CounterVerdict, denied: bool) -> DescriptorStatus {
    DescriptorStatus {
        code: if denied { Code::OverLimit } else { Code::Ok } as i32,
        current_limit: Some(RateLimit {
            name: plan.name.to_owned(),
            requests_per_unit: plan.max_requests,
            unit: plan.unit as i32,
        }),
        limit_remaining: verdict.remaining,
        duration_until_reset: Some(prost_types::Duration {
            seconds: (verdict.reset_after_ms / 1000) as i64,
            nanos: ((verdict.reset_after_ms % 1000) * 1_000_000) as i32,
        }),
        quota: None,
    }
}

fn unmatched_status() -> DescriptorStatus {
    DescriptorStatus {
        code: Code::Ok as i32,
        ..Default::default()
    }
}

/// The `sluice_tenant_checks_total` series of a request's descriptors: one snapshot of the
/// labelled tenants per request, each tenant tallied as one request of traffic.
struct TenantOfDescriptors<'m, 'a> {
    lookup: TenantLookup<'m>,
    last: Option<Cow<'a, str>>,
}

impl<'m, 'a> TenantOfDescriptors<'m, 'a> {
    fn new(metrics: &'m Metrics) -> Self {
        Self {
            lookup: metrics.tenants.lookup(),
            last: None,
        }
    }

    fn series(
        &mut self,
        descriptor: &ParsedDescriptor<'a>,
        plan: Option<&Plan<'a>>,
    ) -> &TenantSeries {
        // As written in counter keys: valid tenant ids as they are, anything else hashed, so a
        // label value is never longer than a tenant id.
        let tenant = match plan {
            Some(plan) => plan.counter_tenant.clone(),
            None => keys::counter_tenant(descriptor.tenant, descriptor.tenant_text),
        };
        // A run of descriptors of one tenant is one request of traffic.
        let new_tenant = self.last.as_ref() != Some(&tenant);
        let series = self.lookup.series(&tenant, new_tenant);
        if new_tenant {
            self.last = Some(tenant);
        }
        series
    }
}

/// The RPC span's `sluice.tenant` (the request's tenants), `sluice.policy` (the policies that
/// matched) and `sluice.decision` (`over_limit`, `fail_open`, `unmatched` or `ok`), so a trace
/// says who was limited and by what. Only while spans are exported.
fn record_on_span(
    descriptors: &[ParsedDescriptor<'_>],
    plans: &[Option<Plan<'_>>],
    failed_open: bool,
    response: &RateLimitResponse,
) {
    let mut tenants: Vec<Cow<'_, str>> = Vec::new();
    for descriptor in descriptors {
        let tenant = keys::counter_tenant(descriptor.tenant, descriptor.tenant_text);
        if !tenants.contains(&tenant) {
            tenants.push(tenant);
        }
    }
    let mut policies: Vec<&str> = Vec::new();
    for plan in plans.iter().flatten() {
        if !plan.name.is_empty() && !policies.contains(&plan.name) {
            policies.push(plan.name);
        }
    }
    let decision = if response.overall_code == Code::OverLimit as i32 {
        "over_limit"
    } else if failed_open {
        "fail_open"
    } else if plans.iter().all(Option::is_none) {
        "unmatched"
    } else {
        "ok"
    };
    let span = tracing::Span::current();
    span.record("sluice.tenant", tenants.join(",").as_str());
    span.record("sluice.policy", policies.join(",").as_str());
    span.record("sluice.decision", decision);
}

/// Each descriptor's verdict as the stages of [`RateLimiter::decide`] fill it in.
struct Verdicts {
    /// One per descriptor, in request order; `None` while undecided (and for good when the
    /// counter step failed, or the descriptor matched nothing).
    of: Vec<Option<CounterVerdict>>,
    /// The request was denied before anything was counted (the over-limit cache, or a cost no
    /// limit allows): the counter step only reads, and a failure of it is no fail-open.
    denied_up_front: bool,
    /// The counter step gave no decision and the failure mode is `open`.
    failed_open: Option<FailureReason>,
}

impl RateLimiter {
    /// Decides one request, stage by stage: parse → `plan` each descriptor against the
    /// snapshot → `deny_up_front` what memory already knows → the `counter_step` → `respond`
    /// (the module doc has the list). Public so benchmarks can drive it without a network hop.
    pub async fn decide(&self, request: &RateLimitRequest) -> Result<RateLimitResponse, Status> {
        let descriptors = parse_request(request, &self.keys)
            .map_err(|e| invalid_argument(INVALID_RATE_LIMIT_REQUEST, e.0))?;
        let snapshot = self.snapshot.load();
        let plans = plan(request, &descriptors, &snapshot);
        let generation = snapshot.generation();
        let sent = Instant::now();
        let mut verdicts = self.deny_up_front(&plans, generation, sent);
        self.counter_step(&plans, &mut verdicts, generation, sent)
            .await?;
        let failed_open = verdicts.failed_open.is_some() && !verdicts.denied_up_front;
        let response = self.respond(&descriptors, &plans, verdicts);
        if telemetry::rpc_spans_exported() {
            record_on_span(&descriptors, &plans, failed_open, &response);
        }
        Ok(response)
    }

    /// Denials known before anything is counted: the over-limit cache, and an enforcing
    /// descriptor whose hits no limit can allow. Either denies the whole request, so nothing of
    /// it may be counted — not even another tenant's descriptors, which the counter decides in
    /// calls of their own. The other descriptors are then only read (0 hits), for their
    /// statuses.
    fn deny_up_front(&self, plans: &[Option<Plan<'_>>], generation: u64, now: Instant) -> Verdicts {
        let of: Vec<Option<CounterVerdict>> = plans
            .iter()
            .map(|plan| self.cached_denial(plan.as_ref()?, generation, now))
            .collect();
        let denied_up_front = of.iter().any(Option::is_some)
            || plans
                .iter()
                .flatten()
                .any(|plan| !plan.shadow && plan.can_never_fit());
        Verdicts {
            of,
            denied_up_front,
            failed_open: None,
        }
    }

    /// Counts (or, after an up-front denial, reads) every descriptor still undecided: one atomic
    /// call per tenant, all under one deadline. A failure answers per the failure mode: `open`
    /// leaves those descriptors without a verdict, `unavailable` is the RPC's error — except
    /// after an up-front denial, which stands whatever the read did.
    async fn counter_step(
        &self,
        plans: &[Option<Plan<'_>>],
        verdicts: &mut Verdicts,
        generation: u64,
        sent: Instant,
    ) -> Result<(), Status> {
        let groups = tenant_groups(plans, &verdicts.of);
        if groups.is_empty() {
            return Ok(());
        }
        let counted = match self.count(plans, &groups, verdicts.denied_up_front).await {
            Ok(CounterStep::Counted(counted)) => counted,
            Ok(CounterStep::FailedOpen(reason)) => {
                verdicts.failed_open = Some(reason);
                return Ok(());
            }
            Err(_) if verdicts.denied_up_front => return Ok(()),
            Err(status) => return Err(status),
        };
        for ((_, members), counted) in groups.iter().zip(counted) {
            self.learn(plans, members, &counted, generation, sent);
            for (i, mut verdict) in members.iter().zip(counted) {
                if let Some(plan) = &plans[*i]
                    && (verdicts.denied_up_front || plan.can_never_fit())
                {
                    // Read with 0 hits: would its own hits have fit?
                    plan.judge_read(&mut verdict);
                }
                verdicts.of[*i] = Some(verdict);
            }
        }
        Ok(())
    }

    /// One status per descriptor, in order, with the decision metrics (in total and per tenant);
    /// `overall_code` is OVER_LIMIT when any enforcing descriptor is over, else OK (never UNKNOWN).
    fn respond(
        &self,
        descriptors: &[ParsedDescriptor<'_>],
        plans: &[Option<Plan<'_>>],
        verdicts: Verdicts,
    ) -> RateLimitResponse {
        let mut statuses = Vec::with_capacity(plans.len());
        let mut over_limit = false;
        let mut tenant = TenantOfDescriptors::new(&self.metrics);
        for ((descriptor, plan), verdict) in descriptors.iter().zip(plans).zip(verdicts.of) {
            let series = tenant.series(descriptor, plan.as_ref());
            let status = match (plan, verdict) {
                (None, _) => {
                    self.metrics.checks_unmatched.inc();
                    series.unmatched.inc();
                    unmatched_status()
                }
                (Some(_), None) => {
                    // The counter step failed: the failure mode is `open`, or the request was
                    // already denied up front and only its read failed — not a fail-open.
                    if let Some(reason) = verdicts.failed_open
                        && !verdicts.denied_up_front
                    {
                        self.metrics.checks_fail_open(reason).inc();
                        series.fail_open.inc();
                    }
                    unmatched_status()
                }
                (Some(plan), Some(verdict)) => {
                    let denied = !verdict.allowed && !plan.shadow;
                    over_limit |= denied;
                    self.record_decision(plan, &verdict, series);
                    matched_status(plan, &verdict, denied)
                }
            };
            statuses.push(status);
        }
        RateLimitResponse {
            overall_code: if over_limit {
                Code::OverLimit
            } else {
                Code::Ok
            } as i32,
            statuses,
            ..Default::default()
        }
    }

    fn record_decision(&self, plan: &Plan<'_>, verdict: &CounterVerdict, series: &TenantSeries) {
        match (verdict.allowed, plan.shadow) {
            (true, _) => {
                self.metrics.checks_allowed.inc();
                series.allowed.inc();
            }
            (false, false) => {
                self.metrics.checks_denied.inc();
                series.denied.inc();
            }
            (false, true) => {
                self.metrics.checks_shadow_denied.inc();
                series.shadow_denied.inc();
                self.shadow_notice.warn(|suppressed| {
                    tracing::info!(
                        tenant = %plan.counter_tenant,
                        policy = plan.name,
                        suppressed,
                        "shadow policy would have denied a request"
                    )
                });
            }
        }
    }

    /// A denial from the over-limit cache, if this check is certainly over.
    fn cached_denial(
        &self,
        plan: &Plan<'_>,
        generation: u64,
        now: Instant,
    ) -> Option<CounterVerdict> {
        let hits = u32::try_from(plan.hits).unwrap_or(u32::MAX);
        let denial = self
            .over_limit
            .deny(&plan.cache_id(generation)?, hits, now)?;
        Some(CounterVerdict {
            allowed: false,
            remaining: denial.remaining,
            reset_after_ms: denial.reset_after.as_millis() as u64,
        })
    }

    /// Remembers counters the same request would find exhausted.
    fn learn(
        &self,
        plans: &[Option<Plan<'_>>],
        members: &[usize],
        verdicts: &[CounterVerdict],
        generation: u64,
        sent: Instant,
    ) {
        for (i, verdict) in members.iter().zip(verdicts) {
            if let Some(plan) = plans[*i].as_ref()
                && u64::from(verdict.remaining) < plan.hits.max(1)
                && let Some(id) = plan.cache_id(generation)
            {
                self.over_limit
                    .learn(&id, verdict.remaining, verdict.reset_after_ms, sent);
            }
        }
    }

    /// The counter step for every tenant group: all at once, under one deadline, each behind
    /// the breaker of the shard that holds its tenant's keys; with `read_only`, every check
    /// counts 0 hits. The request fails (per the failure mode) when any group failed.
    async fn count(
        &self,
        plans: &[Option<Plan<'_>>],
        groups: &[(&str, Vec<usize>)],
        read_only: bool,
    ) -> Result<CounterStep, Status> {
        // One instant for every call: a call that reaches Redis after it records nothing. The
        // counter answers by it itself (telling a check still queued from one sent); this
        // timeout only backs up a counter that would not.
        let deadline = tokio::time::Instant::now() + self.deadline;
        // Every group's breaker first: a request one of whose shards is open fails before any
        // call is sent, so no other group counts hits for a request answered by the failure mode.
        let breakers: Vec<BreakerRef<'_>> = groups
            .iter()
            .map(|(tenant, _)| {
                let shard = self.counter.shard_of(tenant);
                self.breakers
                    .of(&shard, |node| self.counter.holds_slots(node))
            })
            .collect();
        let mut probes = Vec::with_capacity(breakers.len());
        for breaker in &breakers {
            // The probe's slot is handed back with the outcome; if this RPC is cancelled while
            // probing (or another group is rejected), dropping it frees the slot.
            match breaker.admit() {
                Admission::Call => probes.push(None),
                Admission::Probe(slot) => probes.push(Some(slot)),
                Admission::Reject => return self.fail(FailureReason::BreakerOpen, None),
            }
        }
        let calls = groups.iter().zip(&breakers).zip(probes).map(
            |(((tenant, members), breaker), probe)| {
                let checks: Vec<CounterCheck<'_>> = members
                    .iter()
                    .filter_map(|i| plans[*i].as_ref().map(|plan| plan.check(read_only)))
                    .collect();
                self.count_group(tenant, checks, deadline, breaker, probe)
            },
        );
        let outcomes = join_all(calls).await;
        let mut counted = Vec::with_capacity(outcomes.len());
        for outcome in outcomes {
            match outcome {
                Ok(verdicts) => counted.push(verdicts),
                Err((reason, err)) => return self.fail(reason, err.as_ref()),
            }
        }
        Ok(CounterStep::Counted(counted))
    }

    /// One tenant's call, admitted by its shard's breaker. Only a call actually sent that failed
    /// or missed the deadline counts against the breaker.
    async fn count_group(
        &self,
        tenant: &str,
        checks: Vec<CounterCheck<'_>>,
        deadline: tokio::time::Instant,
        breaker: &CircuitBreaker,
        probe: Option<ProbeSlot<'_>>,
    ) -> Result<Vec<CounterVerdict>, (FailureReason, Option<CounterError>)> {
        let call = self.counter.check(tenant, &checks, deadline);
        match tokio::time::timeout_at(deadline, call).await {
            Ok(Ok(verdicts)) => {
                breaker.record_success(probe);
                Ok(verdicts)
            }
            // A full in-process counter is working as configured: the call fails per the failure
            // mode, but the breaker must not open for every tenant because of one flood of keys.
            Ok(Err(err @ CounterError::Full(_))) => {
                breaker.record_success(probe);
                Err((FailureReason::Overloaded, Some(err)))
            }
            // Never sent, so it says nothing about Redis: the breaker neither opens nor closes
            // (a probe that was not sent only frees its slot).
            Ok(Err(err @ CounterError::Overloaded)) => {
                drop(probe);
                Err((FailureReason::Overloaded, Some(err)))
            }
            Ok(Err(err)) => {
                let (call, cause) = err.call_and_cause();
                let reason = match cause {
                    CounterError::Timeout(_) | CounterError::Late => FailureReason::Timeout,
                    _ => FailureReason::RedisError,
                };
                if matches!(cause, CounterError::Redirected(_)) {
                    // A cluster changing owners of a slot, not a failing node: the breaker
                    // neither opens nor closes.
                    drop(probe);
                } else {
                    // Many requests may share one failed script call: the breaker counts the call.
                    breaker.record_call_failure(call, probe);
                }
                Err((reason, Some(err)))
            }
            Err(_) => {
                breaker.record_failure(probe);
                Err((FailureReason::Timeout, None))
            }
        }
    }

    /// Answers a counter step that gave no decision per `SLUICE_FAILURE_MODE`, with a
    /// rate-limited warning naming `reason`.
    fn fail(
        &self,
        reason: FailureReason,
        err: Option<&CounterError>,
    ) -> Result<CounterStep, Status> {
        // Redis's own trouble; an open breaker or a busy Sluice did not ask Redis.
        if matches!(reason, FailureReason::RedisError | FailureReason::Timeout) {
            self.metrics.redis_errors.inc();
        }
        let mode = self.failure_mode;
        self.failure_warning.warn(|suppressed| {
            tracing::warn!(
                reason = reason.as_str(),
                error = err.map(|e| error_chain(e)).unwrap_or_default(),
                deadline_ms = self.deadline.as_millis() as u64,
                failure_mode = ?mode,
                suppressed,
                "counter step failed ({}); answering per SLUICE_FAILURE_MODE",
                reason.as_str()
            )
        });
        match mode {
            FailureMode::Open => Ok(CounterStep::FailedOpen(reason)),
            FailureMode::Unavailable => Err(Status::unavailable(format!(
                "rate-limit counters unavailable ({})",
                reason.as_str()
            ))),
        }
    }
}

#[tonic::async_trait]
impl RateLimitService for RateLimiter {
    #[tracing::instrument(level = "debug", skip_all, fields(domain = %request.get_ref().domain))]
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let timer = self.metrics.check_duration.start_timer();
        let response = self.decide(request.get_ref()).await;
        timer.observe_duration();
        response.map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_override_counts_in_the_policys_log_only_with_the_policys_window() {
        use crate::domain::{EndpointPattern, Limits, Policy, PolicyId, PolicyTenant};
        use crate::ratelimit::{request::LimitOverride, snapshot::PolicySnapshot};

        let id = PolicyId::generate();
        let snapshot = PolicySnapshot::build([Policy {
            id,
            tenant: PolicyTenant::parse("acme").unwrap(),
            pattern: EndpointPattern::parse("*").unwrap(),
            limits: Limits::new(100, 60, 20).unwrap(),
            enabled: true,
            shadow: false,
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
            version: 1,
        }]);
        let policy = snapshot.lookup("acme", None, None);
        let policy_key = format!("p:{id}");
        // (requests_per_unit, unit, seconds) → (key, burst, unit reported)
        let cases = [
            (
                (50, RateLimitUnit::Minute, 60),
                (policy_key.clone(), 20, Unit::Minute),
            ),
            (
                (5, RateLimitUnit::Minute, 60),
                (policy_key.clone(), 5, Unit::Minute),
            ),
            (
                (50, RateLimitUnit::Second, 1),
                (format!("{policy_key}:w1"), 20, Unit::Second),
            ),
            (
                (500, RateLimitUnit::Month, 2_592_000),
                (format!("{policy_key}:w2592000"), 20, Unit::Month),
            ),
        ];
        for ((requests_per_unit, unit, seconds), (key, burst, reported)) in cases {
            let descriptor = ParsedDescriptor {
                tenant: b"acme",
                tenant_text: Some("acme"),
                path: None,
                method: None,
                hits: 1,
                limit_override: Some(LimitOverride {
                    requests_per_unit,
                    unit,
                    window: Duration::from_secs(seconds),
                }),
                index: 0,
            };
            let plan = Plan::new(&descriptor, policy, &[]).expect("counted");
            assert_eq!(plan.key_suffix, key, "{unit:?}");
            assert_eq!(
                (
                    plan.max_requests,
                    plan.window_ms,
                    plan.burst_limit,
                    plan.unit
                ),
                (requests_per_unit, seconds * 1000, burst, reported),
                "{unit:?}"
            );
            assert_eq!(plan.name, id.to_string());
        }
    }

    /// A limiter over the in-process counter with `policies` (tenant, pattern, max, window).
    fn in_memory_limiter(policies: &[(&str, &str, u32, u32)]) -> RateLimiter {
        use crate::ratelimit::counter::InMemoryCounter;
        limiter_over(Arc::new(InMemoryCounter::new(1_000)), policies)
    }

    /// A limiter over `counter` with `policies` (tenant, pattern, max, window).
    fn limiter_over(
        counter: Arc<dyn SlidingWindowCounter>,
        policies: &[(&str, &str, u32, u32)],
    ) -> RateLimiter {
        use crate::domain::{EndpointPattern, Limits, Policy, PolicyId, PolicyTenant};
        use crate::ratelimit::snapshot::PolicySnapshot;

        let snapshot = Arc::new(SharedSnapshot::new());
        snapshot.store(PolicySnapshot::build(policies.iter().map(
            |(tenant, pattern, max, window)| Policy {
                id: PolicyId::generate(),
                tenant: PolicyTenant::parse(tenant).unwrap(),
                pattern: EndpointPattern::parse(pattern).unwrap(),
                limits: Limits::new(*max, *window, 0).unwrap(),
                enabled: true,
                shadow: false,
                created_at: chrono::Utc::now(),
                updated_at: chrono::Utc::now(),
                version: 1,
            },
        )));
        RateLimiter::new(
            snapshot,
            counter,
            RateLimiterConfig {
                keys: DescriptorKeys::default(),
                deadline: Duration::from_secs(1),
                failure_mode: FailureMode::Open,
            },
            Metrics::new(),
        )
    }

    fn descriptor(
        tenant: &str,
        path: &str,
        limit: Option<(u32, RateLimitUnit)>,
        hits: Option<u64>,
    ) -> crate::proto::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor {
        use crate::proto::envoy::extensions::common::ratelimit::v3::{
            RateLimitDescriptor,
            rate_limit_descriptor::{Entry, RateLimitOverride},
        };
        RateLimitDescriptor {
            entries: [("tenant_id", tenant), ("path", path)]
                .iter()
                .map(|(key, value)| Entry {
                    key: (*key).into(),
                    value: (*value).into(),
                })
                .collect(),
            limit: limit.map(|(requests_per_unit, unit)| RateLimitOverride {
                requests_per_unit,
                unit: unit as i32,
            }),
            hits_addend: hits,
        }
    }

    async fn decide(
        limiter: &RateLimiter,
        descriptors: Vec<
            crate::proto::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor,
        >,
    ) -> RateLimitResponse {
        limiter
            .decide(&RateLimitRequest {
                domain: "edge".into(),
                descriptors,
                hits_addend: 0,
            })
            .await
            .expect("a valid request")
    }

    #[tokio::test(start_paused = true)]
    async fn in_memory_an_override_with_another_window_leaves_the_policys_log_alone() {
        let limiter = in_memory_limiter(&[("acme", "/o", 10, 60)]);
        for _ in 0..3 {
            decide(&limiter, vec![descriptor("acme", "/o", None, None)]).await;
        }
        tokio::time::advance(Duration::from_millis(1_100)).await;
        for expected in [4, 3] {
            let response = decide(
                &limiter,
                vec![descriptor(
                    "acme",
                    "/o",
                    Some((5, RateLimitUnit::Second)),
                    None,
                )],
            )
            .await;
            assert_eq!(response.statuses[0].limit_remaining, expected);
        }
        let policy_left = decide(&limiter, vec![descriptor("acme", "/o", None, Some(0))]).await;
        assert_eq!(policy_left.statuses[0].limit_remaining, 7);
    }

    #[tokio::test(start_paused = true)]
    async fn in_memory_a_denial_from_memory_counts_no_other_tenants_hits() {
        let limiter = in_memory_limiter(&[("busy", "/m", 5, 60), ("spent", "/m", 1, 60)]);
        decide(&limiter, vec![descriptor("spent", "/m", None, None)]).await;
        let both = || {
            vec![
                descriptor("busy", "/m", None, None),
                descriptor("spent", "/m", None, None),
            ]
        };
        let response = decide(&limiter, both()).await;
        assert_eq!(response.overall_code, Code::OverLimit as i32);
        assert_eq!(
            (
                response.statuses[0].code,
                response.statuses[0].limit_remaining
            ),
            (Code::Ok as i32, 5),
            "read, not counted"
        );
        assert_eq!(response.statuses[1].code, Code::OverLimit as i32);
        let busy_left = decide(&limiter, vec![descriptor("busy", "/m", None, Some(0))]).await;
        assert_eq!(busy_left.statuses[0].limit_remaining, 5);
    }

    /// A counter whose every call fails with the error `fail` makes: how the service answers a
    /// failure does not depend on which counter reported it.
    struct FailingCounter(fn() -> CounterError);

    #[async_trait::async_trait]
    impl SlidingWindowCounter for FailingCounter {
        async fn check(
            &self,
            _tenant: &str,
            _checks: &[CounterCheck<'_>],
            _deadline: tokio::time::Instant,
        ) -> Result<Vec<CounterVerdict>, CounterError> {
            Err((self.0)())
        }
    }

    /// After 20 requests answered by a counter failing with `fail`: fail-open `overloaded`,
    /// fail-open `timeout` or `redis_error`, fail-open `breaker_open`,
    /// `sluice_redis_errors_total`, `sluice_circuit_open`.
    async fn after_twenty_failures(fail: fn() -> CounterError) -> (u64, u64, u64, u64, i64) {
        let limiter = limiter_over(Arc::new(FailingCounter(fail)), &[("acme", "/f", 10, 60)]);
        for _ in 0..20 {
            let response = decide(&limiter, vec![descriptor("acme", "/f", None, None)]).await;
            assert_eq!(response.overall_code, Code::Ok as i32, "fail-open allows");
            assert!(response.statuses[0].current_limit.is_none());
        }
        let fail_open = |reason: FailureReason| limiter.metrics.checks_fail_open(reason).get();
        (
            fail_open(FailureReason::Overloaded),
            fail_open(FailureReason::Timeout) + fail_open(FailureReason::RedisError),
            fail_open(FailureReason::BreakerOpen),
            limiter.metrics.redis_errors.get(),
            limiter.metrics.circuit_open.get(),
        )
    }

    #[tokio::test]
    async fn being_busy_fails_open_as_overloaded_and_never_opens_the_breaker() {
        assert_eq!(
            after_twenty_failures(|| CounterError::Overloaded).await,
            (20, 0, 0, 0, 0)
        );
        // Calls that were sent and not answered in time open it after five.
        assert_eq!(
            after_twenty_failures(|| CounterError::Late).await,
            (0, 5, 15, 5, 1)
        );
    }

    #[tokio::test]
    async fn a_cluster_moving_a_slot_fails_open_and_never_opens_the_breaker() {
        assert_eq!(
            after_twenty_failures(|| CounterError::Redirected(fred::error::Error::new(
                fred::error::ErrorKind::Unknown,
                "TRYAGAIN Multiple keys request during rehashing of slot",
            )))
            .await,
            (0, 20, 0, 20, 0)
        );
    }

    /// Tenants `x…` live on node `x` and are counted in process; tenants `y…` live on node `y`,
    /// whose every call fails. Counts the calls that reach node `x`.
    struct TwoNodes {
        x: crate::ratelimit::counter::InMemoryCounter,
        x_calls: std::sync::atomic::AtomicUsize,
    }

    #[async_trait::async_trait]
    impl SlidingWindowCounter for TwoNodes {
        fn shard_of(&self, tenant: &str) -> crate::ratelimit::counter::Shard {
            crate::ratelimit::counter::Shard::Node(Arc::from(&tenant[..1]))
        }

        async fn check(
            &self,
            tenant: &str,
            checks: &[CounterCheck<'_>],
            deadline: tokio::time::Instant,
        ) -> Result<Vec<CounterVerdict>, CounterError> {
            if tenant.starts_with('x') {
                self.x_calls
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.x.check(tenant, checks, deadline).await
            } else {
                Err(CounterError::Late)
            }
        }
    }

    #[tokio::test]
    async fn a_failing_node_opens_only_its_own_breaker_and_sends_nothing_for_a_request_it_blocks() {
        let counter = Arc::new(TwoNodes {
            x: crate::ratelimit::counter::InMemoryCounter::new(1_000),
            x_calls: Default::default(),
        });
        let limiter = limiter_over(counter.clone(), &[("*", "/n", 100, 60)]);
        // Node y fails until its breaker opens.
        for _ in 0..crate::ratelimit::breaker::FAILURES_TO_OPEN {
            decide(&limiter, vec![descriptor("y1", "/n", None, None)]).await;
        }
        assert_eq!(limiter.metrics.circuit_open.get(), 1);

        // Tenants on x are still counted at once.
        let x_only = decide(&limiter, vec![descriptor("x1", "/n", None, None)]).await;
        assert_eq!(x_only.statuses[0].limit_remaining, 99);
        let calls_before = counter.x_calls.load(std::sync::atomic::Ordering::Relaxed);

        // A request for tenants on both nodes fails open before anything is sent to x.
        let both = decide(
            &limiter,
            vec![
                descriptor("x1", "/n", None, None),
                descriptor("y1", "/n", None, None),
            ],
        )
        .await;
        assert!(both.statuses.iter().all(|s| s.current_limit.is_none()));
        assert_eq!(
            counter.x_calls.load(std::sync::atomic::Ordering::Relaxed),
            calls_before,
            "no hits counted on x for a request answered by the failure mode"
        );
        let x_after = decide(&limiter, vec![descriptor("x1", "/n", None, Some(0))]).await;
        assert_eq!(x_after.statuses[0].limit_remaining, 99);
    }

    #[tokio::test]
    async fn one_failed_batch_is_one_failure_for_the_breaker() {
        // Twenty requests that all rode one script call that timed out: one failure, so the
        // breaker stays closed and each request reports its own fail-open.
        assert_eq!(
            after_twenty_failures(|| CounterError::InCall {
                call: 7,
                error: Box::new(CounterError::Late),
            })
            .await,
            (0, 20, 0, 20, 0)
        );
    }
}
