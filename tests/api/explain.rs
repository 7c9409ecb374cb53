//! `sluice.admin.v1.ExplainService/ExplainRateLimit` against a real Sluice on Redis: which policy
//! decides a descriptor (or that none does, and what was considered), the counter as it stands,
//! nothing counted by asking, and a tenant's token explaining only its own tenant.

use sluice::proto::sluice::admin::v1::{
    DescriptorExplanation, ExplainRateLimitRequest, explain_service_client::ExplainServiceClient,
};
use tonic::Code as Status;

use crate::{
    helpers::{TestApp, bearer, new_policy},
    rate_limit::{call, check, code, policy, spawn_with_redis, unique_tenant},
};
use sluice::proto::envoy::service::ratelimit::v3::rate_limit_response::Code;

async fn explain(
    app: &TestApp,
    token: &str,
    tenant: &str,
    method: &str,
    path: &str,
) -> Result<DescriptorExplanation, tonic::Status> {
    let request = ExplainRateLimitRequest {
        domain: "edge".into(),
        descriptors: call(tenant, method, path).descriptors,
        hits_addend: 0,
    };
    let response = ExplainServiceClient::new(app.channel.clone())
        .explain_rate_limit(bearer(request, token))
        .await?
        .into_inner();
    assert_eq!(response.descriptors.len(), 1);
    Ok(response.descriptors.into_iter().next().unwrap())
}

#[tokio::test]
async fn explains_the_deciding_policy_and_its_counter_without_counting() {
    let app = spawn_with_redis().await;
    let tenant = unique_tenant("acme");
    let orders = policy(&app, new_policy(&tenant, "GET /v1/orders/**", 2)).await;
    policy(&app, new_policy(&tenant, "POST /v1/users", 5)).await;
    for expected in [Code::Ok, Code::Ok, Code::OverLimit] {
        assert_eq!(
            code(&check(&app, call(&tenant, "GET", "/v1/orders/7")).await),
            expected
        );
    }

    let admin = app.admin_token();
    for _ in 0..2 {
        // Asking twice reads the same counter: explaining counts nothing.
        let explained = explain(&app, &admin, &tenant, "GET", "/v1/orders/7?x=1")
            .await
            .expect("explained");
        let matched = explained.policy.as_ref().expect("a policy decides it");
        assert_eq!(matched.id, orders.id);
        assert_eq!(matched.endpoint_pattern, "GET /v1/orders/**");
        assert_eq!(matched.tenant_id, tenant);
        assert_eq!(explained.path, "/v1/orders/7", "matched without the query");
        assert!(explained.counted);
        assert_eq!((explained.limit, explained.window_seconds), (2, 60));
        assert_eq!((explained.current, explained.remaining), (2, 0));
        assert!(explained.would_be_denied);
        let reset = explained.reset_after.expect("a reset");
        assert!(reset.seconds <= 60 && (reset.seconds > 0 || reset.nanos > 0));
        assert!(explained.counter_error.is_empty());
        assert_eq!(explained.considered.len(), 2, "{:?}", explained.considered);
    }

    // A path no policy matches: nothing decides, and both patterns were considered.
    let unmatched = explain(&app, &admin, &tenant, "GET", "/v2/else")
        .await
        .expect("explained");
    assert!(unmatched.policy.is_none());
    assert!(!unmatched.counted);
    let mut patterns: Vec<&str> = unmatched
        .considered
        .iter()
        .map(|p| p.endpoint_pattern.as_str())
        .collect();
    patterns.sort();
    assert_eq!(patterns, ["GET /v1/orders/**", "POST /v1/users"]);
}

#[tokio::test]
async fn a_star_default_decides_when_the_tenant_has_no_policy_of_its_own() {
    let app = spawn_with_redis().await;
    let tenant = unique_tenant("initech");
    // A default for every tenant, on a path unique to this test (defaults are shared).
    let path = format!("/explain-default-{}/**", unique_tenant("p"));
    let default = policy(&app, new_policy("*", &path, 7)).await;
    let explained = explain(
        &app,
        &app.admin_token(),
        &tenant,
        "GET",
        &path.replace("**", "x"),
    )
    .await
    .expect("explained");
    let matched = explained.policy.expect("the default decides");
    assert_eq!(matched.id, default.id);
    assert_eq!(matched.tenant_id, "*");
    assert_eq!((explained.limit, explained.remaining), (7, 7));
    assert!(!explained.would_be_denied);
}

#[tokio::test]
async fn a_tenants_token_explains_its_own_tenant_only() {
    let app = spawn_with_redis().await;
    let (acme, globex) = (unique_tenant("acme"), unique_tenant("globex"));
    policy(&app, new_policy(&acme, "/**", 10)).await;
    policy(&app, new_policy(&globex, "/**", 10)).await;

    let own = explain(&app, &app.token(&acme), &acme, "GET", "/a")
        .await
        .expect("its own tenant");
    assert_eq!(own.policy.expect("matched").tenant_id, acme);
    assert_eq!(own.remaining, 10);

    // Another tenant's descriptor: NOT_FOUND, the same whether that tenant has policies or not.
    let with_policies = explain(&app, &app.token(&acme), &globex, "GET", "/a")
        .await
        .expect_err("another tenant");
    let without = explain(
        &app,
        &app.token(&acme),
        &unique_tenant("nobody"),
        "GET",
        "/a",
    )
    .await
    .expect_err("another tenant");
    for status in [&with_policies, &without] {
        assert_eq!(status.code(), Status::NotFound, "{status:?}");
        assert!(!status.message().contains("globex"), "{status:?}");
    }
    let missing = ExplainServiceClient::new(app.channel.clone())
        .explain_rate_limit(ExplainRateLimitRequest::default())
        .await
        .expect_err("no token");
    assert_eq!(missing.code(), Status::Unauthenticated);
}
