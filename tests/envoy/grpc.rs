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

#[tokio::test]
async fn a_grpc_caller_over_its_limit_gets_resource_exhausted() {
    let stack = Stack::start(ShippedConfig::Grpc).await;
    stack
        .policy("acme", "POST /grpc.health.v1.Health/**", 2)
        .await;
    let channel = Channel::from_shared(format!("http://{}", stack.envoy.listener))
        .unwrap_or_else(|err| panic!("bad endpoint: {err}"))
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap_or_else(|err| panic!("cannot connect to envoy: {err}"));
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
