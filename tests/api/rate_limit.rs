//! `ShouldRateLimit` through the real server against real Redis (each test its own key prefix and
//! tenants): SPEC §3 rule by rule, counts shared by two instances, propagation of policy changes,
//! and the failure modes with a Redis server the test owns and freezes or kills.

use std::time::{Duration, Instant};

use sluice::{
    proto::envoy::{
        extensions::common::ratelimit::v3::{
            RateLimitDescriptor,
            rate_limit_descriptor::{Entry, RateLimitOverride},
        },
        service::ratelimit::v3::{
            RateLimitRequest, RateLimitResponse,
            rate_limit_response::{Code, rate_limit::Unit},
            rate_limit_service_client::RateLimitServiceClient,
        },
        r#type::v3::RateLimitUnit,
    },
    proto::sluice::admin::v1 as pb,
    settings::{FailureMode, Settings},
};
use tonic::transport::Channel;

use crate::{
    helpers::{
        TestApp, assert_status, http_get, new_policy, secret, spawn_app_with, try_spawn_app_on,
    },
    support::{self, OwnedRedis, OwnedRedisCluster},
};

/// The counter deadline of tests that are not about the deadline: the suite runs many debug-build
/// apps at once on two cores, where the production 50 ms is sometimes missed and would fail open.
const RELAXED_DEADLINE_MS: u64 = 2_000;

/// Settings for an app counting in the shared test Redis under its own prefix.
async fn with_redis(prefix: String) -> impl FnOnce(&mut Settings) {
    let url = support::redis_url().await;
    move |s: &mut Settings| {
        s.redis_url = Some(secret(&url));
        s.redis_key_prefix = prefix;
        s.redis_timeout_ms = RELAXED_DEADLINE_MS;
    }
}

pub(crate) async fn spawn_with_redis() -> TestApp {
    spawn_app_with(with_redis(support::unique_redis_prefix()).await).await
}

fn rls(app: &TestApp) -> RateLimitServiceClient<Channel> {
    RateLimitServiceClient::new(app.channel.clone())
}

pub(crate) fn entries(pairs: &[(&str, &str)]) -> Vec<Entry> {
    pairs
        .iter()
        .map(|(k, v)| Entry {
            key: (*k).into(),
            value: (*v).into(),
        })
        .collect()
}

pub(crate) fn descriptor(pairs: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries(pairs),
        ..Default::default()
    }
}

pub(crate) fn request(descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
    RateLimitRequest {
        domain: "edge".into(),
        descriptors,
        hits_addend: 0,
    }
}

/// A request for `tenant` calling `method path`.
pub(crate) fn call(tenant: &str, method: &str, path: &str) -> RateLimitRequest {
    request(vec![descriptor(&[
        ("tenant_id", tenant),
        ("path", path),
        ("method", method),
    ])])
}

pub(crate) async fn check(app: &TestApp, req: RateLimitRequest) -> RateLimitResponse {
    rls(app)
        .should_rate_limit(req)
        .await
        .unwrap_or_else(|status| panic!("ShouldRateLimit failed: {status:?}"))
        .into_inner()
}

pub(crate) fn code(response: &RateLimitResponse) -> Code {
    Code::try_from(response.overall_code).expect("a known code")
}

/// Creates a policy as platform admin, returning it.
pub(crate) async fn policy(app: &TestApp, p: pb::Policy) -> pb::Policy {
    app.create_ok(&app.admin_token(), p).await
}

pub(crate) fn unique_tenant(name: &str) -> String {
    format!("{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

#[tokio::test]
async fn allows_max_requests_then_answers_over_limit_with_envoy_header_fields() {
    let app = spawn_with_redis().await;
    let tenant = unique_tenant("acme");
    let created = policy(&app, new_policy(&tenant, "GET /v1/orders/**", 3)).await;

    for expected_remaining in [2, 1, 0] {
        let response = check(&app, call(&tenant, "GET", "/v1/orders/7?page=2")).await;
        assert_eq!(code(&response), Code::Ok);
        let status = &response.statuses[0];
        assert_eq!(status.code, Code::Ok as i32);
        assert_eq!(status.limit_remaining, expected_remaining);
        let limit = status
            .current_limit
            .as_ref()
            .expect("a matched descriptor reports its limit");
        assert_eq!(limit.requests_per_unit, 3);
        assert_eq!(limit.unit, Unit::Minute as i32, "window 60 s is one MINUTE");
        assert_eq!(limit.name, created.id);
        let reset = status.duration_until_reset.as_ref().expect("reset");
        assert!(
            reset.seconds <= 60 && (reset.seconds > 0 || reset.nanos > 0),
            "{reset:?}"
        );
    }
    let response = check(&app, call(&tenant, "GET", "/v1/orders/8")).await;
    assert_eq!(code(&response), Code::OverLimit);
    assert_eq!(response.statuses[0].code, Code::OverLimit as i32);
    assert_eq!(response.statuses[0].limit_remaining, 0);

    // Another method is not matched by `GET …`, and another tenant has its own quota.
    let post = check(&app, call(&tenant, "POST", "/v1/orders/8")).await;
    assert_eq!(code(&post), Code::Ok);
    assert!(
        post.statuses[0].current_limit.is_none(),
        "unmatched: no limit"
    );
}

#[tokio::test]
async fn star_policies_are_defaults_counted_per_tenant_and_lose_to_the_tenants_own() {
    let app = spawn_with_redis().await;
    let (a, b) = (unique_tenant("a"), unique_tenant("b"));
    let default = policy(&app, new_policy("*", "/api/**", 2)).await;
    let own = policy(&app, new_policy(&b, "/api/**", 4)).await;

    for tenant in [&a, &unique_tenant("c")] {
        let codes: Vec<Code> = futures_codes(&app, tenant, 3).await;
        assert_eq!(
            codes,
            [Code::Ok, Code::Ok, Code::OverLimit],
            "tenant {tenant}"
        );
    }
    let response = check(&app, call(&b, "GET", "/api/x")).await;
    assert_eq!(
        response.statuses[0].current_limit.as_ref().unwrap().name,
        own.id
    );
    assert_ne!(own.id, default.id);
    let codes = futures_codes(&app, &b, 4).await;
    assert_eq!(codes, [Code::Ok, Code::Ok, Code::Ok, Code::OverLimit]);
}

async fn futures_codes(app: &TestApp, tenant: &str, n: usize) -> Vec<Code> {
    let mut codes = Vec::new();
    for _ in 0..n {
        codes.push(code(&check(app, call(tenant, "GET", "/api/x")).await));
    }
    codes
}

#[tokio::test]
async fn a_descriptor_without_tenant_counts_as_anonymous() {
    let app = spawn_with_redis().await;
    policy(&app, new_policy("anonymous", "/public/**", 1)).await;
    let no_tenant = || request(vec![descriptor(&[("path", "/public/x")])]);
    assert_eq!(code(&check(&app, no_tenant()).await), Code::Ok);
    assert_eq!(code(&check(&app, no_tenant()).await), Code::OverLimit);
    // Naming the anonymous tenant explicitly shares the same quota.
    let named = check(&app, call("anonymous", "GET", "/public/y")).await;
    assert_eq!(code(&named), Code::OverLimit);
}

#[tokio::test]
async fn shadow_policies_count_and_report_but_never_deny() {
    let app = spawn_with_redis().await;
    let tenant = unique_tenant("shadow");
    let mut p = new_policy(&tenant, "/x", 1);
    p.shadow = true;
    policy(&app, p).await;
    for _ in 0..3 {
        let response = check(&app, call(&tenant, "GET", "/x")).await;
        assert_eq!(code(&response), Code::Ok);
        assert_eq!(response.statuses[0].code, Code::Ok as i32);
    }
    let metrics = http_get(app.http_addr, "/metrics").await.unwrap().body;
    assert!(
        metrics.contains("sluice_checks_total{decision=\"shadow_denied\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn hits_addend_counts_weighted_hits_and_zero_checks_without_counting() {
    let app = spawn_with_redis().await;
    let tenant = unique_tenant("weighted");
    policy(&app, new_policy(&tenant, "/w", 5)).await;

    let mut three = call(&tenant, "GET", "/w");
    three.hits_addend = 3;
    let response = check(&app, three.clone()).await;
    assert_eq!(
        (code(&response), response.statuses[0].limit_remaining),
        (Code::Ok, 2)
    );
    // 3 more would make 6 > 5: denied, and a denied request consumes nothing.
    assert_eq!(code(&check(&app, three).await), Code::OverLimit);

    // The descriptor's own hits_addend overrides the request's; explicit 0 only checks.
    let mut check_only = call(&tenant, "GET", "/w");
    check_only.hits_addend = 3;
    check_only.descriptors[0].hits_addend = Some(0);
    let response = check(&app, check_only).await;
    assert_eq!(
        (code(&response), response.statuses[0].limit_remaining),
        (Code::Ok, 2)
    );

    let mut two = call(&tenant, "GET", "/w");
    two.descriptors[0].hits_addend = Some(2);
    let response = check(&app, two).await;
    assert_eq!(
        (code(&response), response.statuses[0].limit_remaining),
        (Code::Ok, 0)
    );
}

#[tokio::test]
async fn all_descriptors_of_one_tenant_are_decided_together() {
    let app = spawn_with_redis().await;
    let tenant = unique_tenant("atomic");
    policy(&app, new_policy(&tenant, "/small", 1)).await;
    policy(&app, new_policy(&tenant, "/big", 10)).await;
    let both = || {
        request(vec![
            descriptor(&[("tenant_id", &tenant), ("path", "/big")]),
            descriptor(&[("tenant_id", &tenant), ("path", "/small")]),
        ])
    };
    let first = check(&app, both()).await;
    assert_eq!(code(&first), Code::Ok);
    assert_eq!(first.statuses[0].limit_remaining, 9);
    let second = check(&app, both()).await;
    assert_eq!(code(&second), Code::OverLimit);
    assert_eq!(second.statuses[0].code, Code::Ok as i32, "/big itself fits");
    assert_eq!(second.statuses[1].code, Code::OverLimit as i32);
    // Nothing was recorded for /big by the denied request.
    let alone = check(
        &app,
        request(vec![descriptor(&[
            ("tenant_id", &tenant),
            ("path", "/big"),
        ])]),
    )
    .await;
    assert_eq!(alone.statuses[0].limit_remaining, 8);
}

#[tokio::test]
async fn a_limit_override_is_enforced_even_without_a_policy() {
    let app = spawn_with_redis().await;
    let tenant = unique_tenant("override");
    let with_override = |user: &str| {
        let mut d = descriptor(&[("tenant_id", &tenant), ("user", user)]);
        d.limit = Some(RateLimitOverride {
            requests_per_unit: 2,
            unit: RateLimitUnit::Hour as i32,
        });
        request(vec![d])
    };
    for expected in [Code::Ok, Code::Ok, Code::OverLimit] {
        let response = check(&app, with_override("u1")).await;
        assert_eq!(code(&response), expected);
        let limit = response.statuses[0].current_limit.as_ref().unwrap();
        assert_eq!(
            (limit.requests_per_unit, limit.unit),
            (2, Unit::Hour as i32)
        );
    }
    // Counted per distinct descriptor.
    assert_eq!(code(&check(&app, with_override("u2")).await), Code::Ok);
}

#[tokio::test]
async fn the_window_slides() {
    let app = spawn_with_redis().await;
    let tenant = unique_tenant("slide");
    let mut p = new_policy(&tenant, "/s", 2);
    p.window_seconds = 1;
    policy(&app, p).await;
    assert_eq!(
        code(&check(&app, call(&tenant, "GET", "/s")).await),
        Code::Ok
    );
    assert_eq!(
        code(&check(&app, call(&tenant, "GET", "/s")).await),
        Code::Ok
    );
    let denied = check(&app, call(&tenant, "GET", "/s")).await;
    assert_eq!(code(&denied), Code::OverLimit);
    let reset = denied.statuses[0].duration_until_reset.unwrap();
    assert!(reset.seconds == 0 && reset.nanos > 0, "{reset:?}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        code(&check(&app, call(&tenant, "GET", "/s")).await),
        Code::Ok
    );
}

#[tokio::test]
async fn what_envoys_configuration_controls_is_invalid_argument_with_error_info() {
    let app = spawn_with_redis().await;
    let mut no_domain = call("a", "GET", "/");
    no_domain.domain.clear();
    let cases = [
        (no_domain, "domain must not be empty"),
        (request(vec![descriptor(&[])]), "has no entries"),
        (
            request(vec![descriptor(&[("a", "b")]); 65]),
            "at most 64 descriptors",
        ),
        (
            request(vec![descriptor(&[("a", "b"); 65])]),
            "descriptors[0] has 65 entries; at most 64 are allowed",
        ),
        (
            request(vec![descriptor(&[("tenant_id", "a"), ("", "b")])]),
            "descriptors[0].entries[1].key must not be empty",
        ),
    ];
    for (req, needle) in cases {
        let status = rls(&app).should_rate_limit(req).await.unwrap_err();
        assert_status(
            &status,
            tonic::Code::InvalidArgument,
            "INVALID_RATE_LIMIT_REQUEST",
        );
        assert!(
            status.message().contains(needle),
            "{needle}: {}",
            status.message()
        );
    }
}

/// SPEC §3 "No bypass": whatever the client puts into a header that Envoy copies into a
/// descriptor, the request is decided and counted, never answered with an error (which Envoy
/// would turn into fail-open, or a 5xx).
#[tokio::test]
async fn long_paths_queries_and_values_are_matched_and_counted_like_short_ones() {
    let app = spawn_with_redis().await;
    let tenant = unique_tenant("long");
    policy(&app, new_policy(&tenant, "/v1/orders", 3)).await;
    policy(&app, new_policy(&tenant, "/v1/files/**", 2)).await;
    policy(&app, new_policy("*", "/v1/any", 1)).await;

    // A 1.5 KiB query string counts on the path before `?`, with the plain requests.
    let long_query = format!("/v1/orders?pad={}", "a".repeat(1_500));
    let orders = [
        call(&tenant, "GET", &long_query),
        call(&tenant, "GET", "/v1/orders"),
        call(&tenant, "GET", &format!("/v1/orders#{}", "f".repeat(2_000))),
        call(&tenant, "GET", &long_query),
        call(&tenant, "GET", "/v1/orders"),
    ];
    let mut codes = Vec::new();
    for req in orders {
        codes.push(code(&check(&app, req).await));
    }
    assert_eq!(
        codes,
        [
            Code::Ok,
            Code::Ok,
            Code::Ok,
            Code::OverLimit,
            Code::OverLimit
        ]
    );

    // A 3 KiB path without a query.
    let long_path = format!("/v1/files/{}", "p".repeat(3_000));
    let mut codes = Vec::new();
    for _ in 0..3 {
        codes.push(code(&check(&app, call(&tenant, "GET", &long_path)).await));
    }
    assert_eq!(codes, [Code::Ok, Code::Ok, Code::OverLimit]);

    // A 2 KiB tenant value is a tenant of its own, counted by the `*` default like any other.
    let long_tenant = "t".repeat(2_048);
    let first = check(&app, call(&long_tenant, "GET", "/v1/any")).await;
    assert_eq!(code(&first), Code::Ok);
    assert_eq!(first.statuses[0].limit_remaining, 0);
    let second = check(&app, call(&long_tenant, "GET", "/v1/any")).await;
    assert_eq!(code(&second), Code::OverLimit);
    let other = format!("{long_tenant}u");
    assert_eq!(
        code(&check(&app, call(&other, "GET", "/v1/any")).await),
        Code::Ok,
        "a different long value is a different tenant"
    );
}

#[tokio::test]
async fn a_hits_addend_no_limit_can_allow_is_over_limit_and_counts_nothing() {
    let app = spawn_with_redis().await;
    let tenant = unique_tenant("costly");
    policy(&app, new_policy(&tenant, "/llm", 10)).await;

    let mut own = call(&tenant, "POST", "/llm");
    own.descriptors[0].hits_addend = Some(2_000_000);
    let mut whole = call(&tenant, "POST", "/llm");
    whole.hits_addend = 2_000_000;
    let mut beyond_u32 = call(&tenant, "POST", "/llm");
    beyond_u32.descriptors[0].hits_addend = Some(u64::from(u32::MAX) + 10);
    for req in [own, whole, beyond_u32] {
        let response = check(&app, req).await;
        assert_eq!(code(&response), Code::OverLimit);
        assert_eq!(response.statuses[0].limit_remaining, 10, "nothing counted");
    }
    // Exactly the limit still fits; one more hit does not.
    let mut ten = call(&tenant, "POST", "/llm");
    ten.hits_addend = 10;
    assert_eq!(code(&check(&app, ten.clone()).await), Code::Ok);
    assert_eq!(
        code(&check(&app, call(&tenant, "POST", "/llm")).await),
        Code::OverLimit
    );

    // On a descriptor no policy matches, any cost is OK.
    let mut unmatched = call(&tenant, "POST", "/not-limited");
    unmatched.descriptors[0].hits_addend = Some(2_000_000);
    let response = check(&app, unmatched).await;
    assert_eq!(code(&response), Code::Ok);
    assert!(response.statuses[0].current_limit.is_none());
}

fn raw_descriptor(pairs: &[(&str, &[u8])]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: pairs
            .iter()
            .map(|(key, value)| Entry {
                key: (*key).into(),
                value: value.to_vec(),
            })
            .collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn values_that_are_not_utf8_are_decided_and_counted_apart() {
    let app = spawn_with_redis().await;
    policy(&app, new_policy("*", "/raw/**", 1)).await;
    let tenant = unique_tenant("bytes");
    policy(&app, new_policy(&tenant, "/v1/**", 2)).await;

    // Two tenant values that differ only in an invalid byte: two tenants, each under the default.
    let ff = raw_descriptor(&[("tenant_id", b"t\xff"), ("path", b"/raw/x")]);
    let fe = raw_descriptor(&[("tenant_id", b"t\xfe"), ("path", b"/raw/x")]);
    let codes = [
        code(&check(&app, request(vec![ff.clone()])).await),
        code(&check(&app, request(vec![ff])).await),
        code(&check(&app, request(vec![fe])).await),
    ];
    assert_eq!(codes, [Code::Ok, Code::OverLimit, Code::Ok]);

    // A path with invalid UTF-8 still matches the tenant's `/v1/**` policy and is counted.
    let odd_path = raw_descriptor(&[
        ("tenant_id", tenant.as_bytes()),
        ("path", b"/v1/\xc3(/\xff"),
        ("method", b"G\x80T"),
    ]);
    let mut codes = Vec::new();
    for _ in 0..3 {
        codes.push(code(&check(&app, request(vec![odd_path.clone()])).await));
    }
    assert_eq!(codes, [Code::Ok, Code::Ok, Code::OverLimit]);
}

/// Sends arbitrary bytes as the request message of `path`, as a broken client would.
async fn send_raw(
    app: &TestApp,
    path: &'static str,
    body: Vec<u8>,
    token: &str,
) -> Result<Vec<u8>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(app.channel.clone());
    grpc.ready().await.expect("channel ready");
    // ShouldRateLimit ignores the header; the admin API needs it to get as far as decoding.
    let mut request = tonic::Request::new(body);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header value"),
    );
    grpc.unary(
        request,
        http::uri::PathAndQuery::from_static(path),
        RawCodec,
    )
    .await
    .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn malformed_messages_are_invalid_argument_with_error_info_on_both_services() {
    let app = spawn_with_redis().await;
    let garbage = vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01, 0x02];
    let token = app.admin_token();
    let cases = [
        "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
        "/sluice.admin.v1.PolicyService/GetPolicy",
    ];
    for path in cases {
        let status = send_raw(&app, path, garbage.clone(), &token)
            .await
            .unwrap_err();
        assert_status(&status, tonic::Code::InvalidArgument, "MALFORMED_REQUEST");
        assert!(
            status.message().contains("not a valid"),
            "{path}: {status:?}"
        );
    }
}

#[tokio::test]
async fn a_request_at_the_contracts_bounds_is_answered() {
    let app = spawn_with_redis().await;
    let tenant = unique_tenant("big");
    policy(&app, new_policy(&tenant, "/big", 100)).await;
    // 64 descriptors of 64 entries with over 2 KiB of key and value each: about 8.5 MiB, over
    // tonic's 4 MiB default.
    let filler = "v".repeat(1_100);
    let key_filler = "k".repeat(1_096);
    let mut pairs: Vec<(String, String)> = vec![
        ("tenant_id".into(), tenant.clone()),
        ("path".into(), "/big".into()),
    ];
    for i in 0..62 {
        pairs.push((format!("{key_filler}{i:04}"), filler.clone()));
    }
    let borrowed: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let req = request(vec![descriptor(&borrowed); 64]);
    assert!(prost::Message::encoded_len(&req) > 8 * 1024 * 1024);
    let response = check(&app, req).await;
    assert_eq!(code(&response), Code::Ok);
    assert_eq!(response.statuses.len(), 64);
    assert_eq!(response.statuses[63].limit_remaining, 36, "64 hits counted");
}

/// Passes bytes through unchanged: the request body of [`send_raw`], and any response body.
#[derive(Clone, Copy)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        *self
    }

    fn decoder(&mut self) -> Self::Decoder {
        *self
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let len = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, len).to_vec()))
    }
}

#[tokio::test]
async fn two_instances_on_one_redis_admit_exactly_max_requests() {
    let prefix = support::unique_redis_prefix();
    let a = spawn_app_with(with_redis(prefix.clone()).await).await;
    let b = try_spawn_app_on(&a.database_url, with_redis(prefix).await)
        .await
        .expect("second instance starts");
    let tenant = unique_tenant("shared");
    policy(&a, new_policy(&tenant, "/**", 25)).await;
    wait_until_matched(&b, &tenant).await;
    // wait_until_matched used one hit on b.
    let mut calls = Vec::new();
    for i in 0..100 {
        let client = if i % 2 == 0 { rls(&a) } else { rls(&b) };
        let req = call(&tenant, "GET", "/any");
        calls.push(tokio::spawn(async move {
            let mut client = client;
            client
                .should_rate_limit(req)
                .await
                .unwrap()
                .into_inner()
                .overall_code
        }));
    }
    let mut allowed = 0;
    for c in calls {
        if c.await.unwrap() == Code::Ok as i32 {
            allowed += 1;
        }
    }
    assert_eq!(
        allowed, 24,
        "25 in all, one used while waiting for propagation"
    );
}

/// Waits (≤ 2 s) until `app` matches a policy for `tenant`; costs one hit.
async fn wait_until_matched(app: &TestApp, tenant: &str) -> Duration {
    let started = Instant::now();
    loop {
        let mut req = call(tenant, "GET", "/any");
        req.descriptors[0].hits_addend = Some(0);
        let response = check(app, req).await;
        if response.statuses[0].current_limit.is_some() {
            let mut one = call(tenant, "GET", "/any");
            one.hits_addend = 1;
            check(app, one).await;
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "not propagated within 2 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn policy_changes_through_one_instance_bind_another_within_a_second() {
    let prefix = support::unique_redis_prefix();
    let a = spawn_app_with(with_redis(prefix.clone()).await).await;
    let b = try_spawn_app_on(&a.database_url, with_redis(prefix).await)
        .await
        .expect("second instance starts");
    let tenant = unique_tenant("prop");
    let admin = a.admin_token();
    let limit_on_b = || async {
        let mut req = call(&tenant, "GET", "/p");
        req.descriptors[0].hits_addend = Some(0);
        check(&b, req).await.statuses[0]
            .current_limit
            .as_ref()
            .map(|l| l.requests_per_unit)
    };
    let within_a_second = |what: &'static str, expected: Option<u32>| {
        let limit_on_b = &limit_on_b;
        async move {
            let started = Instant::now();
            while limit_on_b().await != expected {
                assert!(
                    started.elapsed() < Duration::from_secs(1),
                    "{what} not applied by B within 1 s"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };

    let created = a.create_ok(&admin, new_policy(&tenant, "/p", 7)).await;
    within_a_second("create", Some(7)).await;

    let mut changed = created.clone();
    changed.etag.clear();
    changed.max_requests = 9;
    a.update(&admin, changed, &["max_requests"]).await.unwrap();
    within_a_second("update", Some(9)).await;

    let mut disabled = created.clone();
    disabled.etag.clear();
    disabled.enabled = Some(false);
    a.update(&admin, disabled, &["enabled"]).await.unwrap();
    within_a_second("disable", None).await;

    a.delete(&admin, &created.id, "").await.unwrap();
    within_a_second("delete", None).await;
}

/// The limit `app` applies to `tenant`'s `GET path`, checked without counting.
async fn limit_of(app: &TestApp, tenant: &str, path: &str) -> Option<u32> {
    let mut req = call(tenant, "GET", path);
    req.descriptors[0].hits_addend = Some(0);
    check(app, req).await.statuses[0]
        .current_limit
        .as_ref()
        .map(|l| l.requests_per_unit)
}

#[tokio::test]
async fn each_change_binds_the_very_next_check_on_the_instance_that_made_it() {
    let app = spawn_with_redis().await;
    let (tenant, admin) = (unique_tenant("next"), app.admin_token());
    // Another tenant's policy, which no change below may disturb.
    let bystander = unique_tenant("bystander");
    policy(&app, new_policy(&bystander, "/n", 3)).await;

    let created = app.create_ok(&admin, new_policy(&tenant, "/n", 5)).await;
    assert_eq!(limit_of(&app, &tenant, "/n").await, Some(5), "create");

    let mut changed = created.clone();
    changed.etag.clear();
    changed.max_requests = 6;
    changed.endpoint_pattern = "/m/**".into();
    app.update(&admin, changed, &["max_requests", "endpoint_pattern"])
        .await
        .unwrap();
    assert_eq!(limit_of(&app, &tenant, "/m/x").await, Some(6), "update");
    assert_eq!(limit_of(&app, &tenant, "/n").await, None, "old pattern");

    let mut disabled = created.clone();
    disabled.etag.clear();
    disabled.enabled = Some(false);
    app.update(&admin, disabled.clone(), &["enabled"])
        .await
        .unwrap();
    assert_eq!(limit_of(&app, &tenant, "/m/x").await, None, "disable");

    disabled.enabled = Some(true);
    app.update(&admin, disabled, &["enabled"]).await.unwrap();
    assert_eq!(limit_of(&app, &tenant, "/m/x").await, Some(6), "re-enable");

    app.delete(&admin, &created.id, "").await.unwrap();
    assert_eq!(limit_of(&app, &tenant, "/m/x").await, None, "delete");
    assert_eq!(limit_of(&app, &bystander, "/n").await, Some(3));
    let metrics = http_get(app.http_addr, "/metrics").await.unwrap().body;
    assert!(metrics.contains("\nsluice_policies 1\n"), "{metrics}");
}

#[tokio::test]
async fn decisions_continue_from_the_snapshot_while_postgres_is_unreachable() {
    let app = spawn_with_redis().await;
    let tenant = unique_tenant("pgdown");
    policy(&app, new_policy(&tenant, "/d", 2)).await;
    let db = app.database().expect("own database").name.clone();
    let admin_url = support::postgres_admin_url().await;
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&admin_url)
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE \"{db}\" WITH ALLOW_CONNECTIONS false"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    // Client backends only: a role without superuser may not signal an autovacuum worker.
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND backend_type = 'client backend'",
    )
    .bind(&db)
    .execute(&mut admin)
    .await
    .unwrap();

    assert_eq!(
        code(&check(&app, call(&tenant, "GET", "/d")).await),
        Code::Ok
    );
    assert_eq!(
        code(&check(&app, call(&tenant, "GET", "/d")).await),
        Code::Ok
    );
    assert_eq!(
        code(&check(&app, call(&tenant, "GET", "/d")).await),
        Code::OverLimit
    );

    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE \"{db}\" WITH ALLOW_CONNECTIONS true"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
}

/// The value of the series `name` (with its labels) in a Prometheus text exposition; 0 when absent.
fn series(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

/// An app counting in a Redis server the test owns.
async fn spawn_on_owned_redis(redis: &OwnedRedis, mode: FailureMode) -> TestApp {
    let url = redis.url.clone();
    spawn_app_with(move |s| {
        s.redis_url = Some(secret(&url));
        s.redis_key_prefix = support::unique_redis_prefix();
        s.failure_mode = mode;
    })
    .await
}

#[tokio::test]
async fn a_frozen_redis_fails_open_within_the_deadline_then_the_breaker_answers_at_once() {
    let mut redis = OwnedRedis::start().await;
    let app = spawn_on_owned_redis(&redis, FailureMode::Open).await;
    let tenant = unique_tenant("frozen");
    policy(&app, new_policy(&tenant, "/f", 1000)).await;
    let first = check(&app, call(&tenant, "GET", "/f")).await;
    assert_eq!(first.statuses[0].limit_remaining, 999);

    redis.freeze();
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let started = Instant::now();
        let response = check(&app, call(&tenant, "GET", "/f")).await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(code(&response), Code::Ok, "fail-open allows");
        assert!(
            response.statuses[0].current_limit.is_none(),
            "no misleading limit when failing open"
        );
    }
    // Each call waits at most the 50 ms deadline (plus scheduling slack on a busy machine).
    assert!(slowest < Duration::from_millis(400), "slowest {slowest:?}");
    // The breaker is open now: answers come without waiting on Redis.
    let started = Instant::now();
    check(&app, call(&tenant, "GET", "/f")).await;
    assert!(
        started.elapsed() < Duration::from_millis(40),
        "{:?}",
        started.elapsed()
    );
    let metrics = http_get(app.http_addr, "/metrics").await.unwrap().body;
    assert!(metrics.contains("sluice_circuit_open 1"), "{metrics}");
    // The calls Redis did not answer in time opened the breaker; the rest it answered. Each is
    // fail-open with its reason, and only the first kind is a Redis error.
    let timeouts = series(
        &metrics,
        "sluice_checks_total{decision=\"fail_open\",reason=\"timeout\"}",
    );
    let rejected = series(
        &metrics,
        "sluice_checks_total{decision=\"fail_open\",reason=\"breaker_open\"}",
    );
    assert!(timeouts >= 5 && rejected >= 1, "{metrics}");
    assert_eq!(timeouts + rejected, 11, "{metrics}");
    assert_eq!(
        series(&metrics, "sluice_redis_errors_total"),
        timeouts,
        "{metrics}"
    );

    redis.thaw();
    let started = Instant::now();
    loop {
        let response = check(&app, call(&tenant, "GET", "/f")).await;
        if response.statuses[0].current_limit.is_some() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "enforcement did not resume after thaw"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = http_get(app.http_addr, "/metrics").await.unwrap().body;
    assert!(metrics.contains("sluice_circuit_open 0"), "{metrics}");
    redis.kill();
}

#[tokio::test]
async fn a_tenant_past_its_limit_is_denied_from_memory_until_a_policy_change() {
    let redis = OwnedRedis::start().await;
    let app = spawn_on_owned_redis(&redis, FailureMode::Open).await;
    let tenant = unique_tenant("hammer");
    let created = policy(&app, new_policy(&tenant, "/h", 2)).await;
    for expected in [Code::Ok, Code::Ok, Code::OverLimit] {
        assert_eq!(
            code(&check(&app, call(&tenant, "GET", "/h")).await),
            expected
        );
    }
    // Redis frozen: the denials still come and no Redis error is counted. (A call that reached
    // the frozen Redis would miss its deadline and fail open, answering OK.)
    redis.freeze();
    for _ in 0..20 {
        let response = check(&app, call(&tenant, "GET", "/h")).await;
        assert_eq!(code(&response), Code::OverLimit);
        let reset = response.statuses[0].duration_until_reset.unwrap();
        assert!(
            reset.seconds > 50,
            "the oldest hit leaves the 60 s window in ~60 s: {reset:?}"
        );
    }
    let metrics = http_get(app.http_addr, "/metrics").await.unwrap().body;
    assert!(metrics.contains("sluice_redis_errors_total 0"), "{metrics}");

    // A policy change invalidates what was learnt: the next check asks Redis (frozen: fails open).
    let mut raised = created.clone();
    raised.max_requests = 3;
    app.update(&app.admin_token(), raised, &["max_requests"])
        .await
        .unwrap();
    let started = Instant::now();
    while code(&check(&app, call(&tenant, "GET", "/h")).await) == Code::OverLimit {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the policy change did not invalidate"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    redis.thaw();
}

#[tokio::test]
async fn enforcement_resumes_after_redis_is_killed_and_restarted() {
    let mut redis = OwnedRedis::start().await;
    let app = spawn_on_owned_redis(&redis, FailureMode::Open).await;
    let tenant = unique_tenant("killed");
    policy(&app, new_policy(&tenant, "/k", 1)).await;
    redis.kill();
    assert_eq!(
        code(&check(&app, call(&tenant, "GET", "/k")).await),
        Code::Ok
    );
    redis.restart().await;
    // The restarted server lost its counts (it keeps nothing on disk); enforcement resumes once
    // the breaker's probe finds it again: the single slot is used and the next call is denied.
    let started = Instant::now();
    while code(&check(&app, call(&tenant, "GET", "/k")).await) != Code::OverLimit {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "enforcement did not resume"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn failure_mode_unavailable_answers_unavailable() {
    let redis = OwnedRedis::start().await;
    let app = spawn_on_owned_redis(&redis, FailureMode::Unavailable).await;
    let tenant = unique_tenant("strict");
    policy(&app, new_policy(&tenant, "/u", 5)).await;
    assert_eq!(
        code(&check(&app, call(&tenant, "GET", "/u")).await),
        Code::Ok
    );
    redis.freeze();
    let status = rls(&app)
        .should_rate_limit(call(&tenant, "GET", "/u"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    for _ in 0..4 {
        let status = rls(&app)
            .should_rate_limit(call(&tenant, "GET", "/u"))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
    }
    // An unmatched request needs no counter and still answers OK.
    let response = check(&app, call(&tenant, "GET", "/not-limited")).await;
    assert_eq!(code(&response), Code::Ok);
    tokio::time::sleep(Duration::from_millis(200)).await;
    redis.thaw();

    // The calls that reached the frozen Redis ran when it resumed, after their deadlines: the
    // requests answered UNAVAILABLE used no quota.
    let mut read = call(&tenant, "GET", "/u");
    read.descriptors[0].hits_addend = Some(0);
    let started = Instant::now();
    let remaining = loop {
        match rls(&app).should_rate_limit(read.clone()).await {
            Ok(response) => break response.into_inner().statuses[0].limit_remaining,
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable);
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "Redis never came back"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(remaining, 4, "only the one request answered OK counted");
}

#[tokio::test]
async fn counts_in_a_redis_cluster_with_every_tenant_in_one_slot() {
    let cluster = OwnedRedisCluster::start().await;
    let url = cluster.url.clone();
    let app = spawn_app_with(move |s| {
        s.redis_url = Some(secret(&url));
        s.redis_key_prefix = support::unique_redis_prefix();
        s.redis_timeout_ms = RELAXED_DEADLINE_MS;
    })
    .await;
    policy(&app, new_policy("*", "/a/**", 2)).await;
    policy(&app, new_policy("*", "/b/**", 5)).await;
    // Two descriptors of one tenant in one request: one Lua call over two keys, which Redis
    // Cluster accepts only because both carry the tenant's hash tag.
    let both = |tenant: &str| {
        request(vec![
            descriptor(&[("tenant_id", tenant), ("path", "/a/x")]),
            descriptor(&[("tenant_id", tenant), ("path", "/b/x")]),
        ])
    };
    let tenants: Vec<String> = (0..12).map(|i| unique_tenant(&format!("t{i}"))).collect();
    for tenant in &tenants {
        let codes: Vec<Code> = {
            let mut codes = Vec::new();
            for _ in 0..3 {
                let response = check(&app, both(tenant)).await;
                assert!(
                    response.statuses.iter().all(|s| s.current_limit.is_some()),
                    "counted, not failed open: {response:?}"
                );
                codes.push(code(&response));
            }
            codes
        };
        assert_eq!(codes, [Code::Ok, Code::Ok, Code::OverLimit], "{tenant}");
    }
    let spread = cluster
        .ports
        .iter()
        .filter(|p| cluster.keys_on(**p) > 0)
        .count();
    assert!(spread >= 2, "12 tenants should land on more than one node");
}

#[tokio::test]
async fn no_window_length_span_admits_more_than_max_across_several_windows() {
    let app = spawn_with_redis().await;
    let tenant = unique_tenant("exact");
    let mut p = new_policy(&tenant, "/e", 5);
    p.window_seconds = 1;
    policy(&app, p).await;
    // For 3.5 windows, 4 concurrent clients ask as fast as they can; each admitted hit is recorded
    // with the moment its request was sent (before Redis counted it) and answered (after).
    let deadline = Instant::now() + Duration::from_millis(3_500);
    let mut clients = Vec::new();
    for _ in 0..4 {
        let mut client = rls(&app);
        let req = call(&tenant, "GET", "/e");
        clients.push(tokio::spawn(async move {
            let mut admitted = Vec::new();
            while Instant::now() < deadline {
                let sent = Instant::now();
                let response = client
                    .should_rate_limit(req.clone())
                    .await
                    .unwrap()
                    .into_inner();
                if response.overall_code == Code::Ok as i32 {
                    admitted.push((sent, Instant::now()));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            admitted
        }));
    }
    let mut admitted = Vec::new();
    for c in clients {
        admitted.extend(c.await.unwrap());
    }
    admitted.sort();
    assert!(
        admitted.len() >= 15,
        "some hits in each of the windows: {}",
        admitted.len()
    );
    // Redis counted each hit somewhere in [sent, answered]. Any max + 1 = 6 admitted hits must
    // have been counted at least one window apart (first to last), so the last answer of the
    // group comes at least a window after its first sending.
    for group in admitted.windows(6) {
        let first_sent = group[0].0;
        let last_answered = group.iter().map(|(_, answered)| *answered).max().unwrap();
        let span = last_answered.duration_since(first_sent);
        assert!(
            span >= Duration::from_millis(999),
            "6 hits admitted within {span:?}, inside one 1 s window"
        );
    }
}

/// A descriptor of `tenant` on `path`, with its own `limit` override.
fn with_limit(
    tenant: &str,
    path: &str,
    requests_per_unit: u32,
    unit: RateLimitUnit,
) -> RateLimitRequest {
    let mut d = descriptor(&[("tenant_id", tenant), ("path", path)]);
    d.limit = Some(RateLimitOverride {
        requests_per_unit,
        unit: unit as i32,
    });
    request(vec![d])
}

/// What `tenant`'s policy on `path` has left, read without counting.
async fn remaining(app: &TestApp, tenant: &str, path: &str) -> u32 {
    let mut req = request(vec![descriptor(&[("tenant_id", tenant), ("path", path)])]);
    req.descriptors[0].hits_addend = Some(0);
    let response = check(app, req).await;
    assert!(
        response.statuses[0].current_limit.is_some(),
        "counted, not failed open: {response:?}"
    );
    response.statuses[0].limit_remaining
}

/// Milliseconds `key` has left to live in the test Redis (-2: no such key, -1: no expiry).
async fn pttl(key: &str) -> i64 {
    use fred::prelude::{Builder, ClientLike, Config, KeysInterface};
    let config = Config::from_url(&support::redis_url().await).expect("a Redis URL");
    let client = Builder::from_config(config)
        .build()
        .expect("a Redis client");
    client.init().await.expect("Redis answers");
    let ttl: i64 = client.pttl(key).await.expect("PTTL");
    let _ = client.quit().await;
    ttl
}

#[tokio::test]
async fn an_override_on_a_policy_never_disturbs_the_policys_shared_counter() {
    let prefix = support::unique_redis_prefix();
    let app = spawn_app_with(with_redis(prefix.clone()).await).await;
    let tenant = unique_tenant("shared-log");
    let created = policy(&app, new_policy(&tenant, "/o", 10)).await;
    for _ in 0..3 {
        assert_eq!(
            code(&check(&app, call(&tenant, "GET", "/o")).await),
            Code::Ok
        );
    }
    // Older than any one-second window from now on.
    tokio::time::sleep(Duration::from_millis(1_100)).await;

    // Another window: a log of its own, reported with the override's numbers and the policy id.
    for expected_remaining in [4, 3] {
        let response = check(&app, with_limit(&tenant, "/o", 5, RateLimitUnit::Second)).await;
        assert_eq!(code(&response), Code::Ok);
        let status = &response.statuses[0];
        assert_eq!(status.limit_remaining, expected_remaining);
        let limit = status.current_limit.as_ref().unwrap();
        assert_eq!(
            (limit.requests_per_unit, limit.unit, limit.name.as_str()),
            (5, Unit::Second as i32, created.id.as_str())
        );
    }
    assert_eq!(
        remaining(&app, &tenant, "/o").await,
        7,
        "the policy's three hits survive an override with a shorter window"
    );
    let policy_key = format!("{prefix}{{{tenant}}}:p:{}", created.id);
    let ttl = pttl(&policy_key).await;
    assert!(
        ttl > 50_000,
        "the policy's log keeps the expiry of its own 60 s window: {ttl} ms"
    );

    // The same window: the policy's shared log, judged against the override's number.
    let response = check(&app, with_limit(&tenant, "/o", 4, RateLimitUnit::Minute)).await;
    assert_eq!(
        (code(&response), response.statuses[0].limit_remaining),
        (Code::Ok, 0),
        "3 policy hits + this one = 4"
    );
    let response = check(&app, with_limit(&tenant, "/o", 4, RateLimitUnit::Minute)).await;
    assert_eq!(code(&response), Code::OverLimit);
    assert_eq!(remaining(&app, &tenant, "/o").await, 6);
}

#[tokio::test]
async fn a_burst_limit_is_enforced_with_or_without_an_override() {
    let app = spawn_with_redis().await;
    // (override of the request, if any): a policy of 10 per minute with a burst of 2 each.
    let cases = [
        None,
        Some((5, RateLimitUnit::Minute)),
        Some((5, RateLimitUnit::Hour)),
    ];
    for limit in cases {
        let tenant = unique_tenant("burst");
        let mut p = new_policy(&tenant, "/b", 10);
        p.burst_limit = 2;
        policy(&app, p).await;
        let req = || match limit {
            None => call(&tenant, "GET", "/b"),
            Some((n, unit)) => with_limit(&tenant, "/b", n, unit),
        };
        let started = Instant::now();
        let codes = [
            code(&check(&app, req()).await),
            code(&check(&app, req()).await),
            code(&check(&app, req()).await),
        ];
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "three checks should take well under a second: {:?}",
            started.elapsed()
        );
        assert_eq!(codes, [Code::Ok, Code::Ok, Code::OverLimit], "{limit:?}");
        // The burst recovers within a second; the window still has room.
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        assert_eq!(code(&check(&app, req()).await), Code::Ok, "{limit:?}");
    }
}

#[tokio::test]
async fn responses_carry_the_unit_of_the_window_or_of_the_override() {
    let app = spawn_with_redis().await;
    let tenant = unique_tenant("units");
    // Policies: (path, window_seconds, unit).
    let policies = [
        ("/week", 7 * 86_400, Unit::Week),
        ("/month", 30 * 86_400, Unit::Month),
        ("/ninety", 90, Unit::Unknown),
    ];
    for (path, window_seconds, unit) in policies {
        let mut p = new_policy(&tenant, path, 10);
        p.window_seconds = window_seconds;
        policy(&app, p).await;
        let response = check(&app, call(&tenant, "GET", path)).await;
        let limit = response.statuses[0].current_limit.as_ref().unwrap();
        assert_eq!(limit.unit, unit as i32, "{path}");
    }
    // Overrides without a policy: (unit of the override, unit reported).
    let overrides = [
        (RateLimitUnit::Second, Unit::Second),
        (RateLimitUnit::Week, Unit::Week),
        (RateLimitUnit::Month, Unit::Month),
        (RateLimitUnit::Year, Unit::Year),
    ];
    for (unit, reported) in overrides {
        // One descriptor, one allowed hit per unit: each unit counts in a log of its own.
        let response = check(&app, with_limit(&tenant, "/no-policy", 1, unit)).await;
        assert_eq!(code(&response), Code::Ok, "{unit:?}");
        let limit = response.statuses[0].current_limit.as_ref().unwrap();
        assert_eq!((limit.requests_per_unit, limit.unit), (1, reported as i32));
        assert!(limit.name.is_empty(), "no policy, no name");
    }
    // An override on a policy reports its own unit too.
    let response = check(&app, with_limit(&tenant, "/week", 3, RateLimitUnit::Year)).await;
    let limit = response.statuses[0].current_limit.as_ref().unwrap();
    assert_eq!(
        (limit.requests_per_unit, limit.unit),
        (3, Unit::Year as i32)
    );
}

#[tokio::test]
async fn a_request_denied_from_memory_counts_nothing_for_any_tenant() {
    let app = spawn_with_redis().await;
    let (busy, exhausted) = (unique_tenant("busy"), unique_tenant("exhausted"));
    policy(&app, new_policy(&busy, "/m", 100)).await;
    policy(&app, new_policy(&exhausted, "/m", 1)).await;
    assert_eq!(
        code(&check(&app, call(&exhausted, "GET", "/m")).await),
        Code::Ok
    );

    let both = request(vec![
        descriptor(&[("tenant_id", &busy), ("path", "/m")]),
        descriptor(&[("tenant_id", &exhausted), ("path", "/m")]),
    ]);
    let started = Instant::now();
    loop {
        // The exhausted tenant alone: denied, and the over-limit cache learns it.
        assert_eq!(
            code(&check(&app, call(&exhausted, "GET", "/m")).await),
            Code::OverLimit
        );
        let before = remaining(&app, &busy, "/m").await;
        let response = check(&app, both.clone()).await;
        assert_eq!(code(&response), Code::OverLimit, "{response:?}");
        assert_eq!(response.statuses[1].code, Code::OverLimit as i32);
        let busy_status = &response.statuses[0];
        assert_eq!(busy_status.code, Code::Ok as i32, "{response:?}");
        if busy_status.limit_remaining == before {
            // Denied from memory: the busy tenant's descriptor was read, not counted.
            assert_eq!(
                remaining(&app, &busy, "/m").await,
                before,
                "a denied request consumes no quota, not even another tenant's"
            );
            return;
        }
        // Counted: a policy reload (the NOTIFY of our own changes) replaced the snapshot between
        // learning and this request, so Redis decided it — each tenant on its own. That settles
        // within moments; a build that counts the other tenant every time never gets here.
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the busy tenant was counted on every request denied for the exhausted one"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn descriptor_entry_keys_are_configurable_end_to_end() {
    let redis = with_redis(support::unique_redis_prefix()).await;
    let app = spawn_app_with(move |s| {
        redis(s);
        s.tenant_key = "org".into();
        s.path_key = ":path".into();
        s.method_key = ":method".into();
    })
    .await;
    let tenant = unique_tenant("keys");
    let created = policy(&app, new_policy(&tenant, "POST /k/*", 1)).await;
    let custom = || {
        request(vec![descriptor(&[
            ("org", &tenant),
            (":path", "/k/1"),
            (":method", "POST"),
        ])])
    };
    // (request, limit name expected, overall code)
    let cases = [
        (custom(), Some(created.id.as_str()), Code::Ok),
        (custom(), Some(created.id.as_str()), Code::OverLimit),
        // The default keys mean nothing here: no tenant (anonymous), no path, no method.
        (call(&tenant, "POST", "/k/1"), None, Code::Ok),
        // The method is read from `:method`: GET is not matched by `POST /k/*`.
        (
            request(vec![descriptor(&[
                ("org", &tenant),
                (":path", "/k/1"),
                (":method", "GET"),
            ])]),
            None,
            Code::Ok,
        ),
    ];
    for (i, (req, name, expected)) in cases.into_iter().enumerate() {
        let response = check(&app, req).await;
        assert_eq!(code(&response), expected, "case {i}");
        assert_eq!(
            response.statuses[0]
                .current_limit
                .as_ref()
                .map(|l| l.name.as_str()),
            name,
            "case {i}"
        );
    }
}

/// What on-call reads on `/metrics` after some traffic: decisions per tenant for the first
/// `SLUICE_METRICS_TOP_TENANTS` tenants (the rest under `other`), readiness, the policy snapshot's
/// age and the Redis script calls.
#[tokio::test]
async fn metrics_say_which_tenants_are_limited_and_how_redis_calls_go() {
    let with_redis = with_redis(support::unique_redis_prefix()).await;
    let app = spawn_app_with(move |s| {
        with_redis(s);
        s.metrics_top_tenants = 2;
    })
    .await;
    let tenants = [
        unique_tenant("first"),
        unique_tenant("second"),
        unique_tenant("third"),
    ];
    for tenant in &tenants {
        policy(&app, new_policy(tenant, "GET /v1/**", 1)).await;
    }
    // A change made through this instance applies at once: one allowed and one denied each.
    for tenant in &tenants {
        assert_eq!(
            code(&check(&app, call(tenant, "GET", "/v1/a")).await),
            Code::Ok
        );
        assert_eq!(
            code(&check(&app, call(tenant, "GET", "/v1/a")).await),
            Code::OverLimit
        );
    }

    let metrics = http_get(app.http_addr, "/metrics").await.unwrap().body;
    // A real Prometheus text parser (and linter) accepts the exposition.
    let mut promtool = std::process::Command::new(support::promtool_path())
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs");
    std::io::Write::write_all(&mut promtool.stdin.take().unwrap(), metrics.as_bytes()).unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in:\n{metrics}"))
    };
    for tenant in &tenants[..2] {
        for decision in ["allowed", "denied"] {
            assert_eq!(
                value(&format!(
                    "sluice_tenant_checks_total{{decision=\"{decision}\",tenant=\"{tenant}\"}}"
                )),
                1.0,
                "{tenant} {decision}"
            );
        }
    }
    assert!(
        !metrics.contains(tenants[2].as_str()),
        "the third tenant has no series of its own:\n{metrics}"
    );
    assert!(value("sluice_tenant_checks_total{decision=\"allowed\",tenant=\"other\"}") >= 1.0);
    assert!(value("sluice_tenant_checks_total{decision=\"denied\",tenant=\"other\"}") >= 1.0);
    let labelled: std::collections::BTreeSet<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("sluice_tenant_checks_total{"))
        .filter_map(|l| l.split("tenant=\"").nth(1)?.split('"').next())
        .collect();
    assert!(labelled.len() <= 3, "two tenants and other: {labelled:?}");

    assert_eq!(value("sluice_ready"), 1.0);
    let loaded = value("sluice_policy_snapshot_timestamp_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now - 120.0..=now + 1.0).contains(&loaded),
        "the snapshot loaded {}s ago",
        now - loaded
    );
    assert_eq!(value("sluice_policy_reload_errors_total"), 0.0);
    assert!(value("sluice_redis_call_duration_seconds_count") >= 3.0);
    assert!(value("sluice_redis_batch_requests_count") >= 3.0);
    assert!(
        value("sluice_redis_batch_requests_sum") >= value("sluice_redis_batch_requests_count"),
        "every call decided at least one request"
    );
}
