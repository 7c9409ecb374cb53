//! What the load generators send to Sluice, shared by `benches/checks.rs`, `benches/tower_layer.rs`,
//! `examples/flood.rs` and `tests/image.rs` (each includes this file with `#[path]`): a
//! `ShouldRateLimit` request of
//! one (tenant, method, path) descriptor, a platform admin's token, and policies through the
//! admin API.

use sluice::proto::{
    envoy::{
        extensions::common::ratelimit::v3::{RateLimitDescriptor, rate_limit_descriptor::Entry},
        service::ratelimit::v3::RateLimitRequest,
    },
    sluice::admin::v1::{self as pb, policy_service_client::PolicyServiceClient},
};
use std::time::Duration;

use sluice::admin::auth::{MintError, PLATFORM_ADMIN_ROLE, mint_hs256};
use tonic::{Request, Status, transport::Channel};

/// A request in `domain` with one descriptor: `tenant_id`, `method` and `path` entries.
pub fn descriptor_request(
    domain: &str,
    tenant: &str,
    method: &str,
    path: &str,
) -> RateLimitRequest {
    let entry = |key: &str, value: &str| Entry {
        key: key.into(),
        value: value.into(),
    };
    RateLimitRequest {
        domain: domain.into(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![
                entry("tenant_id", tenant),
                entry("method", method),
                entry("path", path),
            ],
            ..Default::default()
        }],
        hits_addend: 0,
    }
}

/// A platform admin's token for an hour, signed with the server's HS256 secret.
pub fn admin_token(hs256_secret: &str) -> Result<String, MintError> {
    mint_hs256(
        hs256_secret.as_bytes(),
        None,
        &[PLATFORM_ADMIN_ROLE.to_owned()],
        Duration::from_secs(3600),
    )
}

/// One policy to create: tenant, endpoint pattern, max requests, window seconds, burst limit.
pub type PolicySpec<'a> = (String, &'a str, u32, u32, u32);

/// Creates every policy of `specs` as a platform admin (`token`), `at_once` calls at a time;
/// the first refusal stops it.
pub async fn create_policies(
    channel: Channel,
    token: &str,
    specs: &[PolicySpec<'_>],
    at_once: usize,
) -> Result<(), Status> {
    let client = PolicyServiceClient::new(channel);
    for chunk in specs.chunks(at_once.max(1)) {
        let calls = chunk.iter().map(|(tenant, pattern, max, window, burst)| {
            let mut client = client.clone();
            let mut request = Request::new(pb::CreatePolicyRequest {
                policy: Some(pb::Policy {
                    tenant_id: tenant.clone(),
                    endpoint_pattern: (*pattern).to_owned(),
                    max_requests: *max,
                    window_seconds: *window,
                    burst_limit: *burst,
                    ..Default::default()
                }),
            });
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("ascii"),
            );
            async move { client.create_policy(request).await }
        });
        for result in futures_util::future::join_all(calls).await {
            result?;
        }
    }
    Ok(())
}
