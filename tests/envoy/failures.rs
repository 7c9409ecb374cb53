//! Sluice or its Redis failing under Envoy: `envoy/envoy.yaml` lets traffic through (Envoy's fail
//! open when Sluice is gone, Sluice's own fail open within Envoy's 100 ms timeout when Redis
//! hangs); `envoy/envoy-strict.yaml` refuses it with 503.

use std::time::{Duration, Instant};

use sluice::settings::FailureMode;

use crate::{
    helpers::{http_get, secret, spawn_app_with},
    limits::{assert_limit_headers, assert_no_limit_headers},
    proxy::ShippedConfig,
    stack::Stack,
    support::{self, OwnedRedis},
};

/// The `timeout` of the shipped rate-limit filters.
const ENVOY_TIMEOUT: Duration = Duration::from_millis(100);

#[tokio::test]
async fn with_sluice_stopped_traffic_flows_and_envoy_counts_the_errors() {
    let mut stack = Stack::start(ShippedConfig::Http).await;
    stack.policy("acme", "GET /v1/**", 1).await;
    let acme = stack.issuer.token("acme");
    assert_eq!(stack.envoy.get_as(&acme, "/v1/orders").await.status, 200);
    assert_eq!(stack.envoy.get_as(&acme, "/v1/orders").await.status, 429);

    stack.stop_sluice().await;
    for _ in 0..3 {
        // Fail open: even a tenant over its limit passes while nobody can say so.
        let reply = stack.envoy.get_as(&acme, "/v1/orders").await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_no_limit_headers(&reply);
    }
    assert_eq!(stack.backend.hits(), 4);
    let stats = stack.envoy.ratelimit_stats().await;
    assert_eq!(stats.counts(), (1, 1, 3, 3), "{stats:?}");
}

#[tokio::test]
async fn with_sluices_redis_frozen_traffic_flows_within_envoys_timeout() {
    let redis = OwnedRedis::start().await;
    let url = redis.url.clone();
    let sluice = spawn_app_with(move |s| {
        s.redis_url = Some(secret(&url));
        s.redis_key_prefix = support::unique_redis_prefix();
        // The production deadline: this test is about it.
        s.redis_timeout_ms = 50;
        s.failure_mode = FailureMode::Open;
    })
    .await;
    let stack = Stack::start_with(ShippedConfig::Http, sluice).await;
    stack.policy("acme", "GET /v1/**", 1000).await;
    let acme = stack.issuer.token("acme");
    let reply = stack.envoy.get_as(&acme, "/v1/orders").await;
    assert_limit_headers(&reply, 1000, 999);

    redis.freeze();
    let mut latencies = Vec::new();
    for _ in 0..10 {
        let started = Instant::now();
        let reply = stack.envoy.get_as(&acme, "/v1/orders").await;
        latencies.push(started.elapsed());
        assert_eq!(reply.status, 200, "{reply:?}");
        // Sluice failed open and reported no limit, so Envoy adds no misleading headers.
        assert_no_limit_headers(&reply);
    }
    let slowest = latencies.iter().max().copied().unwrap_or_default();
    assert!(
        slowest < ENVOY_TIMEOUT,
        "every request under Envoy's {ENVOY_TIMEOUT:?} timeout: {latencies:?}"
    );
    // Sluice answered every call itself (before Envoy's timeout): no errors at Envoy.
    let stats = stack.envoy.ratelimit_stats().await;
    assert_eq!((stats.ok(), stats.error()), (11, 0), "{stats:?}");
    let metrics = http_get(stack.sluice().http_addr, "/metrics")
        .await
        .unwrap_or_else(|err| panic!("cannot read Sluice's metrics: {err}"))
        .body;
    assert!(
        ["timeout", "breaker_open"]
            .iter()
            .map(|reason| {
                let series =
                    format!("sluice_checks_total{{decision=\"fail_open\",reason=\"{reason}\"}} ");
                metrics
                    .lines()
                    .find_map(|line| line.strip_prefix(&series)?.parse::<u64>().ok())
                    .unwrap_or(0)
            })
            .sum::<u64>()
            == 10,
        "{metrics}"
    );
    redis.thaw();
}

#[tokio::test]
async fn the_strict_variant_refuses_traffic_with_503_while_sluice_is_down() {
    let mut stack = Stack::start(ShippedConfig::Strict).await;
    stack.policy("acme", "GET /v1/**", 5).await;
    let acme = stack.issuer.token("acme");
    let reply = stack.envoy.get_as(&acme, "/v1/orders").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_limit_headers(&reply, 5, 4);

    stack.stop_sluice().await;
    for _ in 0..2 {
        let reply = stack.envoy.get_as(&acme, "/v1/orders").await;
        assert_eq!(reply.status, 503, "{reply:?}");
    }
    assert_eq!(stack.backend.hits(), 1);
    let stats = stack.envoy.ratelimit_stats().await;
    assert_eq!(
        (stats.ok(), stats.error(), stats.failure_mode_allowed()),
        (1, 2, 0),
        "{stats:?}"
    );
}
