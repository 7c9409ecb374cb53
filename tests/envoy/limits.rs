//! The limit as a client of `envoy/envoy.yaml` sees it: `x-ratelimit-*` headers counting down,
//! 429 once over, other tenants unaffected, tokenless callers on the anonymous tenant's limits,
//! and no way around a limit by spelling the path differently.

use crate::{
    proxy::{Reply, ShippedConfig},
    stack::Stack,
};

/// Asserts the DRAFT_VERSION_03 headers for a `limit`-per-60 s policy with `remaining` left.
#[track_caller]
pub fn assert_limit_headers(reply: &Reply, limit: u64, remaining: u64) {
    let limit_header = reply
        .header("x-ratelimit-limit")
        .unwrap_or_else(|| panic!("no x-ratelimit-limit in {reply:?}"));
    // `<limit>, <limit>;w=<window seconds>;name="<policy id>"` (Sluice names the policy).
    let expected = format!("{limit}, {limit};w=60;name=");
    assert!(
        limit_header.starts_with(&expected),
        "limit and window of the policy: {limit_header:?}"
    );
    assert_eq!(
        reply.number("x-ratelimit-remaining"),
        remaining,
        "{reply:?}"
    );
    let reset = reply.number("x-ratelimit-reset");
    assert!(
        (1..=60).contains(&reset),
        "reset {reset} s within the 60 s window"
    );
}

/// Asserts Envoy added no `x-ratelimit-*` header: Sluice reported no limit for the request.
#[track_caller]
pub fn assert_no_limit_headers(reply: &Reply) {
    let limit_headers: Vec<_> = reply
        .headers
        .iter()
        .filter(|(name, _)| name.starts_with("x-ratelimit-"))
        .collect();
    assert!(limit_headers.is_empty(), "{reply:?}");
}

#[tokio::test]
async fn under_the_limit_200s_count_down_in_headers_then_429_while_other_tenants_pass() {
    let stack = Stack::start(ShippedConfig::Http).await;
    let policy = stack.policy("acme", "GET /v1/**", 3).await;
    stack.policy("globex", "GET /v1/**", 3).await;
    let acme = stack.issuer.token("acme");

    for remaining in [2, 1, 0] {
        let reply = stack.envoy.get_as(&acme, "/v1/orders?page=2").await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_limit_headers(&reply, 3, remaining);
        assert_eq!(
            reply.header("x-ratelimit-limit"),
            Some(format!("3, 3;w=60;name=\"{}\"", policy.id).as_str())
        );
    }
    let over = stack.envoy.get_as(&acme, "/v1/invoices").await;
    assert_eq!(over.status, 429, "{over:?}");
    assert_limit_headers(&over, 3, 0);
    assert_eq!(over.header("x-envoy-ratelimited"), Some("true"));
    assert_eq!(stack.backend.hits(), 3, "the 429 never reached the backend");

    let globex = stack
        .envoy
        .get_as(&stack.issuer.token("globex"), "/v1/orders")
        .await;
    assert_eq!(globex.status, 200, "{globex:?}");
    assert_limit_headers(&globex, 3, 2);

    let stats = stack.envoy.ratelimit_stats().await;
    assert_eq!(
        (stats.ok(), stats.over_limit(), stats.error()),
        (4, 1, 0),
        "{stats:?}"
    );
}

#[tokio::test]
async fn a_request_without_a_token_is_limited_as_the_anonymous_tenant() {
    let stack = Stack::start(ShippedConfig::Http).await;
    stack.policy("anonymous", "GET /v1/**", 2).await;

    for remaining in [1, 0] {
        let reply = stack.envoy.request("GET", "/v1/catalog", &[]).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_limit_headers(&reply, 2, remaining);
    }
    let over = stack.envoy.request("GET", "/v1/catalog", &[]).await;
    assert_eq!(over.status, 429, "{over:?}");
    // A valid token without a tenant_id claim is anonymous too: it shares the spent quota.
    let claimless = stack
        .envoy
        .get_as(&stack.issuer.token_without_tenant(), "/v1/catalog")
        .await;
    assert_eq!(claimless.status, 429, "{claimless:?}");
    // A tenant with no policy of its own is not limited by the anonymous one.
    let acme = stack
        .envoy
        .get_as(&stack.issuer.token("acme"), "/v1/catalog")
        .await;
    assert_eq!(acme.status, 200, "{acme:?}");
    assert_no_limit_headers(&acme);

    let stats = stack.envoy.ratelimit_stats().await;
    assert_eq!(
        (stats.ok(), stats.over_limit(), stats.error()),
        (3, 2, 0),
        "{stats:?}"
    );
}

#[tokio::test]
async fn spellings_of_the_same_path_share_one_limit() {
    let stack = Stack::start(ShippedConfig::Http).await;
    stack.policy("acme", "GET /v1/orders/**", 4).await;
    let acme = stack.issuer.token("acme");

    // Envoy normalises the path before the rate-limit filter builds the descriptor, so each of
    // these is `/v1/orders/7` to Sluice, exactly as to the backend.
    for (path, remaining) in [
        ("/v1//orders/7", 3),
        ("/v1/./orders/7", 2),
        ("/v1/other/../orders/7", 1),
        ("/v1/%6Frders/7", 0),
    ] {
        let reply = stack.envoy.get_as(&acme, path).await;
        assert_eq!(reply.status, 200, "{path}: {reply:?}");
        assert_limit_headers(&reply, 4, remaining);
    }
    let over = stack.envoy.get_as(&acme, "/v1/orders/7").await;
    assert_eq!(over.status, 429, "{over:?}");
    // An escaped slash could split differently at the backend: refused outright.
    let escaped = stack.envoy.get_as(&acme, "/v1%2Forders/7").await;
    assert_eq!(escaped.status, 400, "{escaped:?}");
    assert_eq!(stack.backend.hits(), 4);
}

/// No bypass (SPEC §3): a client that pads its URL gets the same limit as everyone else, under the
/// fail-open and the strict configuration alike — never unlimited, never a 5xx.
#[tokio::test]
async fn long_query_strings_and_long_paths_are_limited_like_short_ones() {
    for config in [ShippedConfig::Http, ShippedConfig::Strict] {
        let stack = Stack::start(config).await;
        stack.policy("acme", "GET /v1/orders", 3).await;
        stack.policy("acme", "GET /v1/files/*", 2).await;
        let acme = stack.issuer.token("acme");

        let padded = format!("/v1/orders?pad={}", "a".repeat(1_536));
        let mut statuses = Vec::new();
        for path in [padded.as_str(), "/v1/orders", padded.as_str()] {
            statuses.push(stack.envoy.get_as(&acme, path).await.status);
        }
        for path in [padded.as_str(), "/v1/orders"] {
            statuses.push(stack.envoy.get_as(&acme, path).await.status);
        }
        assert_eq!(statuses, [200, 200, 200, 429, 429], "{config:?}");

        let long_path = format!("/v1/files/{}", "p".repeat(3_072));
        let mut statuses = Vec::new();
        for _ in 0..3 {
            statuses.push(stack.envoy.get_as(&acme, &long_path).await.status);
        }
        assert_eq!(statuses, [200, 200, 429], "{config:?}");

        let stats = stack.envoy.ratelimit_stats().await;
        assert_eq!(stats.counts(), (5, 3, 0, 0), "{config:?}: {stats:?}");
        assert_eq!(stack.backend.hits(), 5, "{config:?}");
    }
}
