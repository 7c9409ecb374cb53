//! What a client cannot do through `envoy/envoy.yaml`: name its tenant with a header, spend
//! another tenant's quota by calling that tenant's paths, or get past Envoy with a token that is
//! unsigned, signed by another key, expired, or from another issuer or for another audience.

use crate::{
    limits::{assert_limit_headers, assert_no_limit_headers},
    proxy::ShippedConfig,
    stack::Stack,
    tokens::{AUDIENCE, ISSUER, TokenIssuer},
};

#[tokio::test]
async fn a_forged_tenant_header_neither_uses_nor_exhausts_that_tenants_quota() {
    let stack = Stack::start(ShippedConfig::Http).await;
    stack.policy("globex", "GET /v1/**", 2).await;
    let acme = format!("Bearer {}", stack.issuer.token("acme"));

    for _ in 0..5 {
        for headers in [
            vec![("x-tenant-id", "globex"), ("authorization", acme.as_str())],
            vec![("x-tenant-id", "globex")],
            vec![("tenant_id", "globex")],
        ] {
            let reply = stack.envoy.request("GET", "/v1/orders", &headers).await;
            assert_eq!(reply.status, 200, "{headers:?}: {reply:?}");
            // Counted as acme or anonymous, which have no policy here - not as globex.
            assert_no_limit_headers(&reply);
            assert_eq!(
                reply.body, "tenant-header=none",
                "the forged header never reaches the backend"
            );
        }
    }

    let globex = stack.issuer.token("globex");
    for remaining in [1, 0] {
        let reply = stack.envoy.get_as(&globex, "/v1/orders").await;
        assert_eq!(reply.status, 200, "globex's quota is untouched: {reply:?}");
        assert_limit_headers(&reply, 2, remaining);
    }
    assert_eq!(stack.envoy.get_as(&globex, "/v1/orders").await.status, 429);
}

#[tokio::test]
async fn a_token_for_one_tenant_on_another_tenants_paths_counts_against_its_own_tenant() {
    let stack = Stack::start(ShippedConfig::Http).await;
    stack.policy("globex", "GET /globex/**", 2).await;
    stack.policy("acme", "/**", 1).await;
    let acme = stack.issuer.token("acme");

    // acme calling globex's paths is limited by acme's own policy (1), not globex's (2) ...
    let first = stack.envoy.get_as(&acme, "/globex/reports").await;
    assert_eq!(first.status, 200, "{first:?}");
    assert_limit_headers(&first, 1, 0);
    for _ in 0..3 {
        let over = stack.envoy.get_as(&acme, "/globex/reports").await;
        assert_eq!(over.status, 429, "{over:?}");
        assert_limit_headers(&over, 1, 0);
    }
    // ... and has spent none of globex's quota.
    let globex = stack.issuer.token("globex");
    for remaining in [1, 0] {
        let reply = stack.envoy.get_as(&globex, "/globex/reports").await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_limit_headers(&reply, 2, remaining);
    }
    assert_eq!(
        stack.envoy.get_as(&globex, "/globex/reports").await.status,
        429
    );

    let stats = stack.envoy.ratelimit_stats().await;
    assert_eq!((stats.ok(), stats.over_limit()), (3, 4), "{stats:?}");
}

#[tokio::test]
async fn unsigned_foreign_and_expired_tokens_are_rejected_by_envoy_before_any_limit() {
    let stack = Stack::start(ShippedConfig::Http).await;
    stack.policy("acme", "GET /v1/**", 100).await;
    let stranger = TokenIssuer::generate();

    for (what, token) in [
        ("unsigned (alg none)", stack.issuer.unsigned_token("acme")),
        ("signed by another key", stranger.token("acme")),
        ("expired", stack.issuer.expired_token("acme")),
        ("not a JWT", "not-a-token".to_owned()),
    ] {
        let reply = stack.envoy.get_as(&token, "/v1/orders").await;
        assert_eq!(reply.status, 401, "{what}: {reply:?}");
        assert_no_limit_headers(&reply);
    }
    assert_refused_before_the_rate_limit(&stack, 4).await;

    // The same request with a good token passes: the token was the only problem.
    let reply = stack
        .envoy
        .get_as(&stack.issuer.token("acme"), "/v1/orders")
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_limit_headers(&reply, 100, 99);
}

#[tokio::test]
async fn tokens_from_another_issuer_or_for_another_audience_are_refused_by_envoy() {
    let stack = Stack::start(ShippedConfig::Http).await;
    stack.policy("acme", "GET /v1/**", 100).await;

    // Signed by the trusted key: only the claim the configuration checks is wrong. Envoy answers
    // 401 for the issuer and 403 for the audience ("Audiences in Jwt are not allowed").
    for (what, token, status) in [
        (
            "another issuer",
            stack
                .issuer
                .token_from("acme", "https://evil.example.com/", AUDIENCE),
            401,
        ),
        (
            "another audience",
            stack.issuer.token_from("acme", ISSUER, "billing"),
            403,
        ),
    ] {
        let reply = stack.envoy.get_as(&token, "/v1/orders").await;
        assert_eq!(reply.status, status, "{what}: {reply:?}");
        assert_no_limit_headers(&reply);
    }
    assert_refused_before_the_rate_limit(&stack, 2).await;

    // The same claims with the configured issuer and audience pass.
    let reply = stack
        .envoy
        .get_as(
            &stack.issuer.token_from("acme", ISSUER, AUDIENCE),
            "/v1/orders",
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_limit_headers(&reply, 100, 99);
}

/// `refused` requests were denied by `jwt_authn`, and none reached the backend or the rate-limit
/// filter.
async fn assert_refused_before_the_rate_limit(stack: &Stack, refused: u64) {
    assert_eq!(stack.backend.hits(), 0);
    assert_eq!(
        stack.envoy.stat("http.edge.jwt_authn.denied").await,
        refused
    );
    let stats = stack.envoy.ratelimit_stats().await;
    assert_eq!(
        (stats.ok(), stats.over_limit(), stats.error()),
        (0, 0, 0),
        "rejected before the rate-limit filter: {stats:?}"
    );
}
