//! The real grpcurl (1.8.6, which speaks reflection v1alpha only) against the real server, with no
//! proto files at hand: listing, describing, and every PolicyService RPC in JSON; and tokens from
//! the `sluice token` command.

use std::{process::Output, time::Duration};

use serde_json::{Value, json};
use tokio::process::Command;

use crate::{
    helpers::{TestApp, spawn_app},
    support,
};

const SERVICE: &str = "sluice.admin.v1.PolicyService";

async fn run(mut command: Command) -> Output {
    let shown = format!("{command:?}");
    command.kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .unwrap_or_else(|_| panic!("{shown} did not finish within 30 s"))
        .unwrap_or_else(|err| panic!("cannot run {shown}: {err}"))
}

/// Runs `grpcurl -plaintext args…`; the output, whatever the exit status.
async fn grpcurl(args: &[&str]) -> Output {
    let mut command = Command::new(support::grpcurl_path());
    command.arg("-plaintext").args(args);
    run(command).await
}

/// Runs `grpcurl -plaintext [flags] ADDR [verb…]`, requiring success; its stdout.
async fn grpcurl_ok(app: &TestApp, flags: &[&str], rest: &[&str]) -> String {
    let addr = app.grpc_addr.to_string();
    let mut args: Vec<&str> = flags.to_vec();
    args.push(&addr);
    args.extend_from_slice(rest);
    let output = grpcurl(&args).await;
    assert!(
        output.status.success(),
        "grpcurl {args:?} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Calls `method` of PolicyService with `body` as the holder of `token`; the JSON response.
async fn call(app: &TestApp, token: &str, method: &str, body: &Value) -> Value {
    let header = format!("authorization: Bearer {token}");
    let data = body.to_string();
    let full_method = format!("{SERVICE}/{method}");
    let stdout = grpcurl_ok(app, &["-H", &header, "-d", &data], &[&full_method]).await;
    serde_json::from_str(&stdout)
        .unwrap_or_else(|err| panic!("{method} did not print JSON ({err}): {stdout}"))
}

/// Calls `method`, expecting failure; grpcurl's `-format-error` JSON status.
async fn call_err(app: &TestApp, token: &str, method: &str, body: &Value) -> Value {
    let addr = app.grpc_addr.to_string();
    let header = format!("authorization: Bearer {token}");
    let data = body.to_string();
    let full_method = format!("{SERVICE}/{method}");
    let output = grpcurl(&[
        "-format-error",
        "-H",
        &header,
        "-d",
        &data,
        &addr,
        &full_method,
    ])
    .await;
    assert!(!output.status.success(), "{method} unexpectedly succeeded");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    let start = text
        .find('{')
        .unwrap_or_else(|| panic!("no JSON status: {text}"));
    let end = text
        .rfind('}')
        .unwrap_or_else(|| panic!("no JSON status: {text}"));
    serde_json::from_str(&text[start..=end])
        .unwrap_or_else(|err| panic!("not a JSON status ({err}): {text}"))
}

/// The `google.rpc.ErrorInfo` reason in a `-format-error` status. grpcurl decodes the detail
/// only when reflection can describe `google.rpc.ErrorInfo`; otherwise it prints the raw bytes
/// as base64 in `@value`, which we decode ourselves.
fn error_reason(status: &Value) -> String {
    let details = status["details"].as_array().cloned().unwrap_or_default();
    let info = details
        .iter()
        .find(|d| d["@type"] == "type.googleapis.com/google.rpc.ErrorInfo")
        .unwrap_or_else(|| panic!("no ErrorInfo detail: {status}"));
    if let Some(reason) = info["reason"].as_str() {
        return reason.to_owned();
    }
    use base64::Engine;
    let raw = info["@value"]
        .as_str()
        .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
        .unwrap_or_else(|| panic!("ErrorInfo is neither decoded nor base64: {status}"));
    <tonic_types::pb::ErrorInfo as prost::Message>::decode(raw.as_slice())
        .unwrap_or_else(|err| panic!("ErrorInfo does not decode ({err}): {status}"))
        .reason
}

#[tokio::test]
async fn grpcurl_lists_and_describes_through_reflection_alone() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let services = grpcurl_ok(&app, &[], &["list"]).await;
    let methods = grpcurl_ok(&app, &[], &["list", SERVICE]).await;
    let policy = grpcurl_ok(&app, &[], &["describe", "sluice.admin.v1.Policy"]).await;
    let rls = grpcurl_ok(
        &app,
        &[],
        &["describe", "envoy.service.ratelimit.v3.RateLimitService"],
    )
    .await;
    let rls_request = grpcurl_ok(
        &app,
        &[],
        &["describe", ".envoy.service.ratelimit.v3.RateLimitRequest"],
    )
    .await;

    // Assert
    let services: Vec<&str> = services.lines().map(str::trim).collect();
    assert!(services.contains(&SERVICE), "{services:?}");
    assert!(services.contains(&"grpc.health.v1.Health"), "{services:?}");
    assert!(
        services.contains(&"envoy.service.ratelimit.v3.RateLimitService"),
        "{services:?}"
    );
    for method in [
        "CreatePolicy",
        "GetPolicy",
        "UpdatePolicy",
        "DeletePolicy",
        "ListPolicies",
    ] {
        assert!(
            methods.contains(&format!("{SERVICE}.{method}")),
            "{method}: {methods}"
        );
    }
    for field in [
        "string id = 1;",
        "string tenant_id = 2;",
        "string endpoint_pattern = 3;",
        "uint32 max_requests = 4;",
        "uint32 window_seconds = 5;",
        "uint32 burst_limit = 6;",
        "bool enabled = 7;",
        "bool shadow = 8;",
        ".google.protobuf.Timestamp created_at = 9;",
        ".google.protobuf.Timestamp updated_at = 10;",
        "string etag = 11;",
    ] {
        assert!(policy.contains(field), "{field}: {policy}");
    }
    assert!(rls.contains("rpc ShouldRateLimit"), "{rls}");
    assert!(rls_request.contains("domain"), "{rls_request}");
    assert!(rls_request.contains("descriptors"), "{rls_request}");
}

#[tokio::test]
async fn grpcurl_drives_every_policy_rpc_in_json() {
    // Arrange
    let app = spawn_app().await;
    let token = app.token("acme");

    // Act + assert: create
    let created = call(
        &app,
        &token,
        "CreatePolicy",
        &json!({"policy": {"tenantId": "acme", "endpointPattern": "GET /v1/**", "maxRequests": 5}}),
    )
    .await;
    assert_eq!(created["tenantId"], "acme");
    assert_eq!(created["endpointPattern"], "GET /v1/**");
    assert_eq!(created["maxRequests"], 5);
    assert_eq!(created["windowSeconds"], 60);
    assert_eq!(created["enabled"], true);
    let id = created["id"].as_str().expect("an id").to_owned();
    let etag = created["etag"].as_str().expect("an etag").to_owned();
    assert!(
        created["createdAt"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );

    // Act + assert: get
    let fetched = call(&app, &token, "GetPolicy", &json!({ "id": id })).await;
    assert_eq!(fetched, created);

    // Act + assert: list
    let listed = call(&app, &token, "ListPolicies", &json!({ "pageSize": 10 })).await;
    assert_eq!(listed["policies"], json!([created]));

    // Act + assert: update with an update mask. grpcurl 1.8.6 reads a FieldMask only in its
    // object form (`{"paths": [...]}`), not proto3 JSON's comma-separated string, so users type
    // the paths as they see the fields: in camelCase.
    let updated = call(
        &app,
        &token,
        "UpdatePolicy",
        &json!({
            "policy": { "id": id, "etag": etag, "maxRequests": 9, "burstLimit": 3 },
            "updateMask": { "paths": ["maxRequests", "burstLimit"] }
        }),
    )
    .await;
    assert_eq!(updated["maxRequests"], 9);
    assert_eq!(updated["burstLimit"], 3);
    assert_ne!(updated["etag"], created["etag"]);

    // Act + assert: an error carries its code and ErrorInfo reason
    let stale = call_err(
        &app,
        &token,
        "DeletePolicy",
        &json!({ "id": id, "etag": etag }),
    )
    .await;
    assert_eq!(stale["code"], 10, "ABORTED: {stale}");
    assert_eq!(error_reason(&stale), "ETAG_MISMATCH", "{stale}");

    // Act + assert: delete, then it is gone
    let deleted = call(
        &app,
        &token,
        "DeletePolicy",
        &json!({ "id": id, "etag": updated["etag"] }),
    )
    .await;
    assert_eq!(deleted, json!({}));
    let gone = call_err(&app, &token, "GetPolicy", &json!({ "id": id })).await;
    assert_eq!(gone["code"], 5, "NOT_FOUND: {gone}");
    assert_eq!(error_reason(&gone), "RATE_POLICY_NOT_FOUND", "{gone}");
}

fn sluice_command(args: &[&str]) -> Command {
    let mut command = Command::from(support::sluice_command());
    command.env("SLUICE_LOG_FORMAT", "text").args(args);
    command
}

#[tokio::test]
async fn tokens_from_sluice_token_work_with_grpcurl() {
    // Arrange
    let app = spawn_app().await;
    let secret = app.hs256_secret().to_owned();
    // `--flag=value`: a random base64url secret may start with `-`.
    let secret_flag = format!("--jwt-hs256-secret={secret}");
    let database_flag = format!("--database-url={}", app.database_url);
    let common = [secret_flag.as_str(), database_flag.as_str()];

    // Act
    let tenant = run(sluice_command(
        &[&["token", "--tenant", "acme"][..], &common[..]].concat(),
    ))
    .await;
    let admin = run(sluice_command(
        &[
            &["token", "--role", "platform-admin", "--ttl", "15m"][..],
            &common[..],
        ]
        .concat(),
    ))
    .await;

    // Assert
    for output in [&tenant, &admin] {
        assert!(
            output.status.success(),
            "sluice token failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let tenant_token = String::from_utf8_lossy(&tenant.stdout).trim().to_owned();
    let admin_token = String::from_utf8_lossy(&admin.stdout).trim().to_owned();
    assert_eq!(tenant_token.split('.').count(), 3, "{tenant_token}");
    let created = call(
        &app,
        &tenant_token,
        "CreatePolicy",
        &json!({"policy": {"endpointPattern": "/v1/**", "maxRequests": 5}}),
    )
    .await;
    assert_eq!(created["tenantId"], "acme");
    let default = call(
        &app,
        &admin_token,
        "CreatePolicy",
        &json!({"policy": {"tenantId": "*", "endpointPattern": "*", "maxRequests": 100}}),
    )
    .await;
    assert_eq!(default["tenantId"], "*");
    let denied = call_err(
        &app,
        &tenant_token,
        "ListPolicies",
        &json!({ "tenantId": "*" }),
    )
    .await;
    assert_eq!(denied["code"], 7, "PERMISSION_DENIED: {denied}");
    assert_eq!(error_reason(&denied), "PERMISSION_DENIED", "{denied}");
}

#[tokio::test]
async fn sluice_token_without_a_secret_on_postgres_fails_naming_the_setting() {
    // Arrange
    let database = support::fresh_database().await;

    // Act
    let output = run(sluice_command(&[
        "token",
        "--tenant",
        "acme",
        "--database-url",
        &database.url,
    ]))
    .await;

    // Assert
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(output.stdout.is_empty(), "no token printed");
    assert!(stderr.contains("SLUICE_JWT_HS256_SECRET"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// "Why was I limited?" from a shell: `ExplainRateLimit` through reflection alone, with the
/// descriptor entries as Envoy's JSON strings.
#[tokio::test]
async fn grpcurl_explains_a_rate_limit_decision() {
    let app = spawn_app().await;
    let token = app.admin_token();
    let created = call(
        &app,
        &token,
        "CreatePolicy",
        &json!({"policy": {"tenantId": "acme", "endpointPattern": "GET /v1/**", "maxRequests": 3}}),
    )
    .await;
    let services = grpcurl_ok(&app, &[], &["list"]).await;
    assert!(
        services
            .lines()
            .any(|l| l.trim() == "sluice.admin.v1.ExplainService"),
        "{services}"
    );
    let header = format!("authorization: Bearer {token}");
    let body = json!({"descriptors": [{"entries": [
        {"key": "tenant_id", "value": "acme"},
        {"key": "method", "value": "GET"},
        {"key": "path", "value": "/v1/orders?page=2"},
    ]}]})
    .to_string();
    let stdout = grpcurl_ok(
        &app,
        &["-H", &header, "-d", &body],
        &["sluice.admin.v1.ExplainService/ExplainRateLimit"],
    )
    .await;
    let explained: Value = serde_json::from_str(&stdout).expect("JSON");
    let descriptor = &explained["descriptors"][0];
    assert_eq!(descriptor["policy"]["id"], created["id"], "{stdout}");
    assert_eq!(descriptor["path"], "/v1/orders", "{stdout}");
    assert_eq!(descriptor["remaining"], 3, "{stdout}");
    assert_eq!(descriptor["counted"], true, "{stdout}");
}
