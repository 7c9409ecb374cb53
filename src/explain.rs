//! `sluice.admin.v1.ExplainService/ExplainRateLimit`: the admin-side face of
//! [`RateLimiter::explain`]. It sits between the two paths and is the only module that uses both:
//! the JWT interceptor of the admin API puts the caller's [`TenantScope`] into the request, and
//! the rate limiter explains the descriptors. A tenant's token may explain its own tenant only:
//! another tenant's descriptor is NOT_FOUND, as another tenant's policy is in `GetPolicy`.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::{
    domain::tenant::TenantScope,
    proto::{
        envoy::service::ratelimit::v3::RateLimitRequest,
        sluice::admin::v1::{
            DescriptorExplanation, ExplainRateLimitRequest, ExplainRateLimitResponse,
            MatchedPolicy, explain_service_server::ExplainService,
        },
    },
    ratelimit::{
        explain::{CounterExplanation, Explanation},
        service::RateLimiter,
        snapshot::ActivePolicy,
    },
};

/// Serves `ExplainRateLimit` over the rate limiter the hot path uses.
pub struct Explainer {
    limiter: Arc<RateLimiter>,
}

impl Explainer {
    pub fn new(limiter: Arc<RateLimiter>) -> Self {
        Self { limiter }
    }
}

#[tonic::async_trait]
impl ExplainService for Explainer {
    async fn explain_rate_limit(
        &self,
        request: Request<ExplainRateLimitRequest>,
    ) -> Result<Response<ExplainRateLimitResponse>, Status> {
        let scope = request
            .extensions()
            .get::<TenantScope>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("missing authorization metadata"))?;
        let request = request.into_inner();
        let explanations = self
            .limiter
            .explain(&RateLimitRequest {
                // Informational here; ShouldRateLimit's rule against an empty one is Envoy's.
                domain: if request.domain.is_empty() {
                    "explain".to_owned()
                } else {
                    request.domain
                },
                descriptors: request.descriptors,
                hits_addend: request.hits_addend,
            })
            .await?;
        // Like GetPolicy of another tenant's policy: NOT_FOUND, the same answer whatever that
        // tenant holds, so nothing about it leaks.
        if let Some(own) = scope.tenant_filter()
            && let Some(position) = explanations
                .iter()
                .position(|e| !e.tenant_is_id || e.tenant != own.as_str())
        {
            return Err(Status::not_found(format!(
                "descriptor {position} names a tenant other than this token's ({})",
                own.as_str()
            )));
        }
        Ok(Response::new(ExplainRateLimitResponse {
            descriptors: explanations.into_iter().map(to_proto).collect(),
        }))
    }
}

fn matched(owner: &str, policy: &ActivePolicy) -> MatchedPolicy {
    MatchedPolicy {
        id: policy.name.clone(),
        tenant_id: owner.to_owned(),
        endpoint_pattern: policy.pattern.to_string(),
        max_requests: policy.limits.max_requests(),
        window_seconds: policy.limits.window_seconds(),
        burst_limit: policy.limits.burst_limit(),
        shadow: policy.shadow,
    }
}

fn to_proto(explanation: Explanation) -> DescriptorExplanation {
    let mut out = DescriptorExplanation {
        policy: explanation.policy.as_ref().map(|(policy, is_default)| {
            matched(
                if *is_default {
                    "*"
                } else {
                    &explanation.tenant
                },
                policy,
            )
        }),
        tenant_id: explanation.tenant,
        method: explanation.method.unwrap_or_default(),
        path: explanation.path.unwrap_or_default(),
        considered: explanation
            .considered
            .iter()
            .map(|(owner, policy)| matched(owner, policy))
            .collect(),
        limit_override: explanation.limit_override,
        ..Default::default()
    };
    if let Some(counter) = explanation.counter {
        fill_counter(&mut out, counter);
    }
    out
}

fn fill_counter(out: &mut DescriptorExplanation, counter: CounterExplanation) {
    out.counted = true;
    out.limit = counter.limit;
    out.window_seconds = u32::try_from(counter.window_seconds).unwrap_or(u32::MAX);
    match counter.read {
        Ok(verdict) => {
            out.remaining = verdict.remaining;
            out.current = if counter.burst_limit == 0 {
                counter.limit.saturating_sub(verdict.remaining)
            } else {
                0
            };
            out.reset_after = Some(prost_types::Duration {
                seconds: (verdict.reset_after_ms / 1000) as i64,
                nanos: ((verdict.reset_after_ms % 1000) * 1_000_000) as i32,
            });
            out.would_be_denied = !counter.shadow && counter.hits > u64::from(verdict.remaining);
        }
        Err(err) => out.counter_error = err,
    }
}
