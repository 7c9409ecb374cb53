//! `envoy/envoy-grpc.yaml` in front of a gRPC server: over the limit a tonic client gets
//! RESOURCE_EXHAUSTED, an invalid token UNAUTHENTICATED.

use std::time::Duration;

use tonic::{Code, Request, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::{proxy::ShippedConfig, stack::Stack};

fn check_as(token: &str) -> Request<HealthCheckRequest> {
    let mut request = Request::new(HealthCheckRequest {
        service: String::new(),
    });
    let value = format!("Bearer {token}")
        .parse()
        .unwrap_or_else(|err| panic!("not metadata: {err}"));
    request.metadata_mut().insert("authorization", value);
    request
}

/// A gRPC channel to the stack's Envoy listener.
async fn envoy_channel(stack: &Stack) -> Channel {
    Channel::from_shared(format!("http://{}", stack.envoy.listener))
        .unwrap_or_else(|err| panic!("bad endpoint: {err}"))
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap_or_else(|err| panic!("cannot connect to envoy: {err}"))
}

#[tokio::test]
async fn a_grpc_caller_over_its_limit_gets_resource_exhausted() {
    let stack = Stack::start(ShippedConfig::Grpc).await;
    stack
        .policy("acme", "POST /grpc.health.v1.Health/**", 2)
        .await;
    let channel = envoy_channel(&stack).await;
    let mut client = HealthClient::new(channel);
    let acme = stack.issuer.token("acme");

    for remaining in ["1", "0"] {
        let response = client
            .check(check_as(&acme))
            .await
            .unwrap_or_else(|status| panic!("under the limit: {status:?}"));
        let metadata = response.metadata();
        assert_eq!(
            metadata
                .get("x-ratelimit-remaining")
                .and_then(|v| v.to_str().ok()),
            Some(remaining),
            "{metadata:?}"
        );
    }
    let over = client
        .check(check_as(&acme))
        .await
        .expect_err("over the limit");
    assert_eq!(over.code(), Code::ResourceExhausted, "{over:?}");

    // Another tenant has its own quota (none here: unlimited).
    client
        .check(check_as(&stack.issuer.token("globex")))
        .await
        .unwrap_or_else(|status| panic!("another tenant: {status:?}"));
    let expired = client
        .check(check_as(&stack.issuer.expired_token("acme")))
        .await
        .expect_err("an expired token");
    assert_eq!(expired.code(), Code::Unauthenticated, "{expired:?}");

    let stats = stack.envoy.ratelimit_stats().await;
    assert_eq!(
        (stats.ok(), stats.over_limit(), stats.error()),
        (3, 1, 0),
        "{stats:?}"
    );
}

/// Calls `path` (any method name, any query) through Envoy with a health-check body.
async fn call_path(channel: &Channel, token: &str, path: String) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.expect("channel ready");
    let path = http::uri::PathAndQuery::try_from(path).expect("a valid :path");
    grpc.unary::<_, tonic_health::pb::HealthCheckResponse, _>(
        check_as(token),
        path,
        tonic_prost::ProstCodec::default(),
    )
    .await
    .map(|_| ())
}

/// No bypass (SPEC §3) for gRPC callers: a padded `:path` (a query string or a 3 KiB method name)
/// is limited with every other call, never passed unlimited.
#[tokio::test]
async fn padded_grpc_paths_are_limited_like_plain_ones() {
    let stack = Stack::start(ShippedConfig::Grpc).await;
    stack
        .policy("acme", "POST /grpc.health.v1.Health/**", 3)
        .await;
    let channel = envoy_channel(&stack).await;
    let acme = stack.issuer.token("acme");
    let padded = format!("/grpc.health.v1.Health/Check?pad={}", "a".repeat(1_536));
    let long_method = format!("/grpc.health.v1.Health/{}", "m".repeat(3_072));

    let outcome = |result: Result<(), tonic::Status>| match result {
        Ok(()) => Code::Ok,
        Err(status) => status.code(),
    };
    let mut codes = Vec::new();
    for path in [&padded, &long_method, &padded, &long_method, &padded] {
        codes.push(outcome(call_path(&channel, &acme, path.clone()).await));
    }
    // Under the limit each call reaches the backend (which has no such long method); then Envoy
    // answers for Sluice.
    assert_eq!(
        codes,
        [
            Code::Ok,
            Code::Unimplemented,
            Code::Ok,
            Code::ResourceExhausted,
            Code::ResourceExhausted
        ]
    );
    let stats = stack.envoy.ratelimit_stats().await;
    assert_eq!(stats.counts(), (3, 2, 0, 0), "{stats:?}");
}
