//! "Why was I limited?": what [`RateLimiter::decide`] would do with a request, explained per
//! descriptor, without counting anything — the policy that matched (or none, with every policy
//! considered), the limit, and the counter read with 0 hits. Called by the admin-side
//! `ExplainService` (`src/explain.rs`), never on the hot path; it touches neither the breaker nor
//! the over-limit cache, and its counter reads are not decisions (no decision metrics).

use std::sync::Arc;

use tonic::Status;

use super::{
    counter::CounterVerdict,
    keys,
    request::parse_request,
    service::{INVALID_RATE_LIMIT_REQUEST, Plan, RateLimiter},
    snapshot::ActivePolicy,
};
use crate::{grpc_codec::invalid_argument, proto::envoy::service::ratelimit::v3::RateLimitRequest};

/// One descriptor, explained.
#[derive(Debug)]
pub struct Explanation {
    /// The tenant as sent (lossy UTF-8), `anonymous` when none.
    pub tenant: String,
    /// Whether that is a tenant id a token can name (a valid id, as sent).
    pub tenant_is_id: bool,
    pub method: Option<String>,
    pub path: Option<String>,
    /// The deciding policy, and whether it is a `*` default.
    pub policy: Option<(Arc<ActivePolicy>, bool)>,
    /// `(owner, policy)`: every enabled policy considered, the tenant's then the defaults.
    pub considered: Vec<(String, Arc<ActivePolicy>)>,
    pub limit_override: bool,
    /// The counter, when one applies.
    pub counter: Option<CounterExplanation>,
}

/// A descriptor's counter now.
#[derive(Debug)]
pub struct CounterExplanation {
    pub limit: u32,
    pub window_seconds: u64,
    pub burst_limit: u32,
    pub shadow: bool,
    pub hits: u64,
    /// The read, or why it failed.
    pub read: Result<CounterVerdict, String>,
}

impl RateLimiter {
    /// Explains `request` descriptor by descriptor; INVALID_ARGUMENT where `ShouldRateLimit`
    /// would refuse it.
    pub async fn explain(&self, request: &RateLimitRequest) -> Result<Vec<Explanation>, Status> {
        let descriptors = parse_request(request, &self.keys)
            .map_err(|e| invalid_argument(INVALID_RATE_LIMIT_REQUEST, e.0))?;
        let snapshot = self.snapshot.load();
        let mut explanations = Vec::with_capacity(descriptors.len());
        for descriptor in &descriptors {
            let tenant_text = descriptor.tenant_text.unwrap_or("");
            let lookup = snapshot.explain(
                tenant_text,
                descriptor.method.as_deref(),
                descriptor.path.as_deref(),
            );
            let entries: Vec<(&[u8], &[u8])> = request.descriptors[descriptor.index]
                .entries
                .iter()
                .map(|e| (e.key.as_slice(), e.value.as_slice()))
                .collect();
            let counter = match Plan::new(descriptor, lookup.policy, &entries) {
                Some(plan) => Some(self.read_counter(&plan).await),
                None => None,
            };
            explanations.push(Explanation {
                tenant: String::from_utf8_lossy(descriptor.tenant).into_owned(),
                tenant_is_id: descriptor.tenant_text.is_some_and(keys::is_tenant_id),
                method: descriptor.method.as_deref().map(str::to_owned),
                path: descriptor.path.as_deref().map(str::to_owned),
                policy: lookup
                    .policy
                    .map(|policy| (Arc::clone(policy), lookup.is_default)),
                considered: lookup
                    .considered
                    .iter()
                    .map(|(owner, policy)| ((*owner).to_owned(), Arc::clone(policy)))
                    .collect(),
                limit_override: descriptor.limit_override.is_some(),
                counter,
            });
        }
        Ok(explanations)
    }

    /// The descriptor's counter read with 0 hits, under the hot path's deadline.
    async fn read_counter(&self, plan: &Plan<'_>) -> CounterExplanation {
        let deadline = tokio::time::Instant::now() + self.deadline;
        let read = self
            .counter
            .check(&plan.counter_tenant, &[plan.check(true)], deadline)
            .await
            .map_err(|err| crate::telemetry::error_chain(&err))
            .and_then(|verdicts| {
                verdicts
                    .into_iter()
                    .next()
                    .ok_or_else(|| "the counter answered no verdict".to_owned())
            });
        CounterExplanation {
            limit: plan.max_requests,
            window_seconds: plan.window_ms / 1000,
            burst_limit: plan.burst_limit,
            shadow: plan.shadow,
            hits: plan.hits,
            read,
        }
    }
}
