//! The container image users deploy (`Dockerfile`), driven for real: its `runtime` stage built
//! with the classic builder on `SLUICE_TEST_RUNTIME_IMAGE` (default the official
//! `debian:bookworm-slim`; `.ci/run` builds a local one where no registry answers), run with this
//! build's `sluice` mounted where the `build` stage would put it, against the test PostgreSQL and
//! Redis: non-root, healthy by its own HEALTHCHECK, ready, a policy through the admin API, checks
//! counted in Redis, and a clean exit 0 on `docker stop`.
//!
//! Needs a Docker engine (`bash .ci/run` installs and starts one); without it the test fails,
//! saying so.

mod support;

// What the load generators send (a descriptor request, an admin token, policies), shared.
#[allow(dead_code)]
#[path = "../benches/support/client.rs"]
mod client;

use std::{
    path::Path,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use sluice::proto::envoy::service::ratelimit::v3::{
    rate_limit_response::Code, rate_limit_service_client::RateLimitServiceClient,
};
use tonic::transport::Channel;

const IMAGE_TAG: &str = "sluice-test/sluice-runtime:test";
const SECRET: &str = "image-test-secret-image-test-secret-0123456789";

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run docker ({e}): install Docker, or run `bash .ci/run`")
        })
}

fn docker_ok(args: &[&str]) -> String {
    let output = docker(args);
    assert!(
        output.status.success(),
        "docker {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Removes the container however the test ends.
struct Running(String);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = docker(&["rm", "--force", &self.0]);
    }
}

#[tokio::test]
async fn the_image_runs_as_non_root_becomes_healthy_counts_and_stops_cleanly() {
    // Arrange: the runtime stage, the test servers, ports
    assert!(
        docker(&["info"]).status.success(),
        "no Docker engine answers: install and start Docker, or run `bash .ci/run`"
    );
    let runtime_image = std::env::var("SLUICE_TEST_RUNTIME_IMAGE")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| "debian:bookworm-slim".to_owned());
    let root = env!("CARGO_MANIFEST_DIR");
    let build = Command::new("docker")
        .args([
            "build",
            "--quiet",
            "--network",
            "host",
            "--target",
            "runtime",
        ])
        .args(["--build-arg", &format!("RUNTIME_IMAGE={runtime_image}")])
        .args(["--tag", IMAGE_TAG, root])
        // The classic builder: the runtime stage needs no BuildKit.
        .env("DOCKER_BUILDKIT", "0")
        .stdin(Stdio::null())
        .output()
        .expect("docker build runs");
    assert!(
        build.status.success(),
        "docker build --target runtime failed: {}",
        String::from_utf8_lossy(&build.stderr)
    );
    let database = support::fresh_database().await;
    let redis_url = support::redis_url().await;
    let prefix = support::unique_redis_prefix();
    let (grpc_port, http_port) = (support::free_port(), support::free_port());
    let binary = Path::new(env!("CARGO_BIN_EXE_sluice"));

    // Act: run it
    let id = docker_ok(&[
        "run",
        "--detach",
        "--network",
        "host",
        "--volume",
        &format!("{}:/usr/local/bin/sluice:ro", binary.display()),
        "--env",
        &format!("SLUICE_GRPC_ADDR=127.0.0.1:{grpc_port}"),
        "--env",
        &format!("SLUICE_HTTP_ADDR=127.0.0.1:{http_port}"),
        "--env",
        &format!("DATABASE_URL={}", database.url),
        "--env",
        &format!("REDIS_URL={redis_url}"),
        "--env",
        &format!("SLUICE_REDIS_KEY_PREFIX={prefix}"),
        "--env",
        &format!("SLUICE_JWT_HS256_SECRET={SECRET}"),
        IMAGE_TAG,
    ]);
    let container = Running(id);

    // Assert: healthy by its own check, ready, non-root
    let started = Instant::now();
    loop {
        let health = docker_ok(&[
            "inspect",
            "--format",
            "{{.State.Health.Status}}",
            &container.0,
        ]);
        if health == "healthy" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the container is {health} after a minute: {}",
            docker_ok(&["logs", &container.0])
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(support::readyz_is_ok(http_port), "/readyz is not 200");
    assert_eq!(
        docker_ok(&["exec", &container.0, "id", "-u"]),
        "10001",
        "the server runs as the image's own user"
    );

    // A policy through the admin API, then checks counted in Redis
    let channel = Channel::from_shared(format!("http://127.0.0.1:{grpc_port}"))
        .unwrap()
        .connect()
        .await
        .expect("connect to the container's gRPC port");
    let token = client::admin_token(SECRET).unwrap();
    let policy = ("image-test".to_owned(), "/v1/**", 1, 60, 0);
    client::create_policies(channel.clone(), &token, &[policy], 1)
        .await
        .expect("CreatePolicy");
    let mut rls = RateLimitServiceClient::new(channel);
    let mut answers = Vec::new();
    for _ in 0..2 {
        let request = client::descriptor_request("edge", "image-test", "GET", "/v1/things");
        answers.push(rls.should_rate_limit(request).await.unwrap().into_inner());
    }
    let [first, second] = <[_; 2]>::try_from(answers).unwrap();
    assert_eq!(first.overall_code, Code::Ok as i32);
    assert!(
        first.statuses[0].current_limit.is_some(),
        "counted, not failed open"
    );
    assert_eq!(second.overall_code, Code::OverLimit as i32);

    // SIGTERM: drain, then exit 0
    docker_ok(&["stop", "--time", "30", &container.0]);
    let exit = docker_ok(&["inspect", "--format", "{{.State.ExitCode}}", &container.0]);
    assert_eq!(
        exit,
        "0",
        "exit code after SIGTERM; logs: {}",
        docker_ok(&["logs", "--tail", "20", &container.0])
    );
}
