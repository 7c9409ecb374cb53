//! The tower layer (`crates/sluice-tower`) in front of axum and tonic services, against a real
//! Sluice counting in real Redis: the shipped example's router (JWT auth, then the layer) for
//! HTTP, a tonic health service for gRPC, and the layer's own deadline and failure modes with a
//! Sluice that is stopped or frozen (the real binary, SIGSTOP). Also: the crate's dependency tree
//! holds no server crate.

#[path = "support/mod.rs"]
mod support;

#[allow(dead_code)]
#[path = "api/helpers.rs"]
mod helpers;

// The example the walkthrough (docs/tower-layer.md) runs, tested as shipped.
#[allow(dead_code)]
#[path = "../crates/sluice-tower/examples/axum_jwt.rs"]
mod example;

use std::{
    collections::BTreeSet,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{Router, body::Body, routing::get};
use http::{HeaderMap, HeaderName, Request, StatusCode};
use http_body_util::BodyExt;
use sluice::proto::sluice::admin::v1 as pb;
use sluice_tower::{
    CheckFailure, Decision, DescriptorTemplate, FailureMode, RateLimitLayer, lazy_channel,
};
use tonic::{Code, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_types::StatusExt;
use tower::ServiceExt;

use helpers::{TestApp, new_policy, secret, spawn_app_with};

/// Deadlines of tests that are not about the deadline: many debug-build servers share two cores.
const RELAXED: Duration = Duration::from_secs(2);

async fn sluice_on_redis() -> TestApp {
    let url = support::redis_url().await;
    spawn_app_with(move |s| {
        s.redis_url = Some(secret(&url));
        s.redis_key_prefix = support::unique_redis_prefix();
        s.redis_timeout_ms = RELAXED.as_millis() as u64;
    })
    .await
}

fn channel_to(app: &TestApp) -> Channel {
    lazy_channel(&format!("http://{}", app.grpc_addr)).unwrap()
}

fn unique_tenant(name: &str) -> String {
    format!("{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

async fn create(app: &TestApp, tenant: &str, pattern: &str, max_requests: u32) -> pb::Policy {
    app.create_ok(
        &app.admin_token(),
        new_policy(tenant, pattern, max_requests),
    )
    .await
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
            .to_str()
            .unwrap()
    }
}

async fn send(router: &Router, request: Request<Body>) -> Answer {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn get_with_token(path: &str, token: &str) -> Request<Body> {
    Request::get(path)
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap()
}

/// The example's router for `app`, its tokens verified with the secret Sluice mints them with.
/// Its deadline is longer than Sluice's own (`RELAXED`), so a slow answer is still a verdict.
fn example_router(app: &TestApp) -> Router {
    example::router(
        channel_to(app),
        app.hs256_secret().as_bytes(),
        Duration::from_secs(5),
    )
}

#[tokio::test]
async fn http_requests_through_the_example_count_down_then_get_429_with_exact_headers() {
    // Arrange
    let app = sluice_on_redis().await;
    let tenant = unique_tenant("acme");
    let policy = create(&app, &tenant, "GET /v1/items/*", 3).await;
    let router = example_router(&app);
    let token = app.token(&tenant);

    // Act
    let mut answers = Vec::new();
    for id in 1..=4 {
        answers.push(send(&router, get_with_token(&format!("/v1/items/{id}"), &token)).await);
    }

    // Assert: three allowed, remaining 2, 1, 0, Envoy's limit format with the policy id
    let expected_limit = format!("3, 3;w=60;name=\"{}\"", policy.id);
    for (answer, remaining) in answers[..3].iter().zip(["2", "1", "0"]) {
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert_eq!(answer.header("x-ratelimit-limit"), expected_limit);
        assert_eq!(answer.header("x-ratelimit-remaining"), remaining);
        assert_eq!(answer.header("ratelimit-limit"), expected_limit);
        assert_eq!(answer.header("ratelimit-remaining"), remaining);
        let reset: u64 = answer.header("ratelimit-reset").parse().unwrap();
        assert!((59..=60).contains(&reset), "reset {reset}");
        assert_eq!(
            answer.header("x-ratelimit-reset"),
            answer.header("ratelimit-reset")
        );
        assert!(answer.headers.get("retry-after").is_none());
    }
    assert_eq!(answers[0].body, "item 1\n");
    let denied = &answers[3];
    assert_eq!(denied.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(denied.header("x-ratelimit-remaining"), "0");
    let retry_after: u64 = denied.header("retry-after").parse().unwrap();
    assert!(
        (59..=60).contains(&retry_after),
        "retry-after {retry_after}"
    );
    assert_eq!(
        denied.body,
        format!("Too Many Requests: retry after {retry_after} s\n")
    );
}

#[tokio::test]
async fn tenants_are_limited_independently_and_the_tenant_comes_from_the_token_only() {
    // Arrange
    let app = sluice_on_redis().await;
    let (acme, globex) = (unique_tenant("acme"), unique_tenant("globex"));
    create(&app, &acme, "/v1/**", 2).await;
    create(&app, &globex, "/v1/**", 2).await;
    let router = example_router(&app);
    let acme_token = app.token(&acme);

    // Act: acme spends its two, then tries again claiming to be globex in a header
    for _ in 0..2 {
        let answer = send(&router, get_with_token("/v1/items/a", &acme_token)).await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    let mut forged = get_with_token("/v1/items/a", &acme_token);
    forged
        .headers_mut()
        .insert("x-tenant-id", globex.parse().unwrap());
    let forged = send(&router, forged).await;
    let globex_answer = send(&router, get_with_token("/v1/items/a", &app.token(&globex))).await;
    let no_token = send(
        &router,
        Request::get("/v1/items/a").body(Body::empty()).unwrap(),
    )
    .await;

    // Assert
    assert_eq!(forged.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(globex_answer.status, StatusCode::OK);
    assert_eq!(globex_answer.header("x-ratelimit-remaining"), "1");
    assert_eq!(no_token.status, StatusCode::UNAUTHORIZED);
    let health = send(
        &router,
        Request::get("/healthz").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(health.status, StatusCode::OK);
    assert!(health.headers.get("x-ratelimit-limit").is_none());
}

#[tokio::test]
async fn the_request_cost_comes_from_the_request_and_a_denied_batch_spends_nothing() {
    // Arrange
    let app = sluice_on_redis().await;
    let tenant = unique_tenant("batcher");
    create(&app, &tenant, "POST /v1/batch", 10).await;
    let router = example_router(&app);
    let token = app.token(&tenant);
    let batch = |size: &str| {
        Request::post("/v1/batch")
            .header("authorization", format!("Bearer {token}"))
            .header("x-batch-size", size)
            .body(Body::empty())
            .unwrap()
    };

    // Act + assert
    let first = send(&router, batch("4")).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    assert_eq!(first.header("x-ratelimit-remaining"), "6");
    let too_big = send(&router, batch("7")).await;
    assert_eq!(too_big.status, StatusCode::TOO_MANY_REQUESTS);
    let fits = send(&router, batch("6")).await;
    assert_eq!(fits.status, StatusCode::OK);
    assert_eq!(fits.header("x-ratelimit-remaining"), "0");
    // A client cannot make its request free: 0 counts as one hit.
    let zero = send(&router, batch("0")).await;
    assert_eq!(zero.status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn many_concurrent_requests_through_the_layer_admit_exactly_the_limit() {
    // Arrange
    const LIMIT: u32 = 25;
    const REQUESTS: usize = 200;
    let app = sluice_on_redis().await;
    let tenant = unique_tenant("crowd");
    create(&app, &tenant, "GET /v1/items/*", LIMIT).await;
    let router = example_router(&app);
    let token = app.token(&tenant);

    // Act
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..REQUESTS {
        let (router, request) = (
            router.clone(),
            get_with_token(&format!("/v1/items/{i}"), &token),
        );
        tasks.spawn(async move { router.oneshot(request).await.unwrap().status() });
    }
    let statuses = tasks.join_all().await;

    // Assert
    let allowed = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let denied = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!(
        (allowed, denied),
        (LIMIT as usize, REQUESTS - LIMIT as usize)
    );
}

/// A minimal tonic server: the health service behind the layer, tenant from `x-tenant-id`.
async fn grpc_server_behind_the_layer(app: &TestApp) -> Channel {
    let layer = RateLimitLayer::builder(
        channel_to(app),
        "grpc-edge",
        DescriptorTemplate::sluice(HeaderName::from_static("x-tenant-id")),
    )
    .deadline(RELAXED)
    .build();
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(layer)
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[tokio::test]
async fn grpc_calls_over_the_limit_get_resource_exhausted_with_retry_info_and_quota_failure() {
    // Arrange
    let app = sluice_on_redis().await;
    let tenant = unique_tenant("grpc");
    let policy = create(&app, &tenant, "/grpc.health.v1.Health/Check", 2).await;
    let mut client = HealthClient::new(grpc_server_behind_the_layer(&app).await);
    let call = || {
        let mut request = tonic::Request::new(HealthCheckRequest::default());
        request
            .metadata_mut()
            .insert("x-tenant-id", tenant.parse().unwrap());
        request
    };

    // Act
    let first = client.check(call()).await.unwrap();
    let second = client.check(call()).await.unwrap();
    let third = client.check(call()).await.unwrap_err();

    // Assert
    assert_eq!(first.metadata().get("x-ratelimit-remaining").unwrap(), "1");
    assert_eq!(second.metadata().get("x-ratelimit-remaining").unwrap(), "0");
    assert_eq!(third.code(), Code::ResourceExhausted, "{third:?}");
    let details = third.get_error_details();
    let retry = details
        .retry_info()
        .and_then(|info| info.retry_delay)
        .expect("RetryInfo with a delay");
    assert!(
        retry > Duration::from_secs(58) && retry <= Duration::from_secs(60),
        "{retry:?}"
    );
    let violations = &details.quota_failure().expect("QuotaFailure").violations;
    assert_eq!(violations.len(), 1);
    assert_eq!(violations[0].subject, format!("policy {}", policy.id));
    assert_eq!(violations[0].description, "2 requests per 60 s");
    assert_eq!(third.metadata().get("x-ratelimit-remaining").unwrap(), "0");
}

/// Decisions a layer reported, by name and failure.
type Seen = Arc<Mutex<Vec<(String, Option<CheckFailure>)>>>;

/// A plain axum route behind a layer with `deadline` and `mode`, recording its decisions.
fn guarded_router(channel: Channel, deadline: Duration, mode: FailureMode) -> (Router, Seen) {
    let seen: Seen = Arc::default();
    let record = Arc::clone(&seen);
    let layer = RateLimitLayer::builder(
        channel,
        "edge",
        DescriptorTemplate::sluice(HeaderName::from_static("x-tenant-id")),
    )
    .deadline(deadline)
    .failure_mode(mode)
    .observer(move |decision: Decision<'_>, _took: Duration| {
        let failure = match decision {
            Decision::FailedOpen(f) | Decision::FailedClosed(f) => Some(f),
            _ => None,
        };
        record
            .lock()
            .unwrap()
            .push((decision.as_str().to_owned(), failure));
    })
    .build();
    let router = Router::new()
        .route("/v1/work", get(|| async { "done" }))
        .layer(layer);
    (router, seen)
}

fn work() -> Request<Body> {
    Request::get("/v1/work")
        .header("x-tenant-id", "acme")
        .body(Body::empty())
        .unwrap()
}

#[tokio::test]
async fn a_stopped_sluice_fails_open_at_once_or_denies_in_deny_mode() {
    // Arrange: a Sluice that answered once, then stopped
    let app = sluice_on_redis().await;
    create(&app, "acme", "/v1/**", 100).await;
    let channel = channel_to(&app);
    let (open, seen_open) = guarded_router(
        channel.clone(),
        Duration::from_millis(200),
        FailureMode::Open,
    );
    let (closed, seen_closed) =
        guarded_router(channel, Duration::from_millis(200), FailureMode::Deny);
    assert_eq!(send(&open, work()).await.status, StatusCode::OK);
    app.shutdown().await.unwrap();

    // Act
    let started = Instant::now();
    let passed = send(&open, work()).await;
    let open_took = started.elapsed();
    let refused = send(&closed, work()).await;

    // Assert
    assert_eq!(passed.status, StatusCode::OK);
    assert_eq!(passed.body, "done");
    assert!(passed.headers.get("x-ratelimit-limit").is_none());
    assert!(open_took < Duration::from_secs(1), "took {open_took:?}");
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    let open_seen = seen_open.lock().unwrap().clone();
    assert_eq!(open_seen[0].0, "allowed");
    assert_eq!(open_seen[1].0, "failed_open");
    assert_eq!(seen_closed.lock().unwrap()[0].0, "failed_closed");
}

/// The real binary on its embedded default, stopped with SIGCONT + SIGKILL however the test ends.
struct SluiceProcess {
    child: std::process::Child,
    grpc_port: u16,
    _dir: tempfile::TempDir,
}

impl SluiceProcess {
    async fn start() -> SluiceProcess {
        let dir = tempfile::tempdir().unwrap();
        let (grpc_port, http_port) = (support::free_port(), support::free_port());
        let child = support::sluice_command()
            .current_dir(dir.path())
            .env("SLUICE_GRPC_ADDR", format!("127.0.0.1:{grpc_port}"))
            .env("SLUICE_HTTP_ADDR", format!("127.0.0.1:{http_port}"))
            .env("RUST_LOG", "warn")
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let process = SluiceProcess {
            child,
            grpc_port,
            _dir: dir,
        };
        let started = Instant::now();
        while !support::readyz_is_ok(http_port) {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "sluice never became ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        process
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([name, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {name} failed");
    }
}

impl Drop for SluiceProcess {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_frozen_sluice_fails_open_within_the_layers_deadline_or_denies_in_deny_mode() {
    // Arrange: the real binary, answering (no policy: the check is OK and unmatched)
    let sluice = SluiceProcess::start().await;
    let channel = lazy_channel(&format!("http://127.0.0.1:{}", sluice.grpc_port)).unwrap();
    let deadline = Duration::from_millis(100);
    let (open, seen_open) = guarded_router(channel.clone(), deadline, FailureMode::Open);
    let (closed, seen_closed) = guarded_router(channel, deadline, FailureMode::Deny);
    // Generous first call: a debug build on a busy machine; it also opens the connection.
    let warm = guarded_router(
        lazy_channel(&format!("http://127.0.0.1:{}", sluice.grpc_port)).unwrap(),
        RELAXED,
        FailureMode::Deny,
    );
    assert_eq!(send(&warm.0, work()).await.status, StatusCode::OK);
    let mut answered = false;
    for _ in 0..20 {
        if send(&open, work()).await.status == StatusCode::OK
            && seen_open.lock().unwrap().last().map(|s| s.0.as_str()) == Some("allowed")
        {
            answered = true;
            break;
        }
    }
    assert!(
        answered,
        "the layer never got a verdict from a running Sluice"
    );

    // Act: freeze it
    sluice.signal("-STOP");
    let started = Instant::now();
    let passed = send(&open, work()).await;
    let open_took = started.elapsed();
    let started = Instant::now();
    let refused = send(&closed, work()).await;
    let closed_took = started.elapsed();

    // Assert: within the deadline (plus scheduling), as the failure mode says, and reported
    assert_eq!(passed.status, StatusCode::OK);
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    for took in [open_took, closed_took] {
        assert!(
            took >= deadline && took < deadline + Duration::from_millis(900),
            "took {took:?} with a {deadline:?} deadline"
        );
    }
    assert_eq!(
        seen_open.lock().unwrap().last().cloned(),
        Some(("failed_open".to_owned(), Some(CheckFailure::Timeout)))
    );
    assert_eq!(
        seen_closed.lock().unwrap().last().cloned(),
        Some(("failed_closed".to_owned(), Some(CheckFailure::Timeout)))
    );

    // And once it thaws, verdicts again.
    sluice.signal("-CONT");
    let thawed = guarded_router(
        lazy_channel(&format!("http://127.0.0.1:{}", sluice.grpc_port)).unwrap(),
        RELAXED,
        FailureMode::Deny,
    );
    assert_eq!(send(&thawed.0, work()).await.status, StatusCode::OK);
}

/// `cargo tree` of the layer crate's normal and build dependencies, one line per crate as
/// `format` writes it.
fn layer_dependency_tree(extra: &[&str], format: &str) -> String {
    let output = Command::new(env!("CARGO"))
        .args(["tree", "--offline", "--package", "sluice-tower"])
        .args([
            "--edges",
            "normal,build",
            "--prefix",
            "none",
            "--format",
            format,
        ])
        .args(extra)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn the_layer_crate_depends_on_no_server_crate() {
    let crates: BTreeSet<String> = layer_dependency_tree(&[], "{p}")
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect();
    assert!(
        crates.contains("tonic") && crates.contains("sluice-tower"),
        "{crates:?}"
    );
    for server_crate in [
        "sqlx",
        "sqlx-core",
        "fred",
        "axum",
        "sluice",
        "tonic-health",
    ] {
        assert!(
            !crates.contains(server_crate),
            "sluice-tower depends on {server_crate}: {crates:?}"
        );
    }
    // hyper's server side stays out too.
    let hyper = layer_dependency_tree(&["--invert", "hyper"], "{p} {f}");
    let hyper_line = hyper.lines().next().unwrap_or_default();
    assert!(hyper_line.starts_with("hyper "), "{hyper}");
    assert!(
        !hyper_line.contains("server"),
        "hyper with its server: {hyper_line}"
    );
}
