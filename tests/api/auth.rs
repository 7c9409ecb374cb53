//! JWT authentication through the real server: every way a token can be missing or wrong gives
//! UNAUTHENTICATED with reason `UNAUTHENTICATED`; a valid token scoped to the reserved
//! `anonymous` tenant gives PERMISSION_DENIED; a public-key deployment accepts tokens signed
//! with its private key and nothing else; PostgreSQL never runs without a key.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use sluice::proto::sluice::admin::v1 as pb;
use tonic::{Code, Request, Status};

use crate::{
    helpers::{
        TestApp, bearer, expect_error, jwt_fixture, new_policy, sign_hs256, spawn_app,
        spawn_app_with, try_spawn_app_on, with_authorization,
    },
    support,
};

const UNAUTHENTICATED: &str = "UNAUTHENTICATED";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn rs256(private_pem: &str, claims: &Value) -> String {
    let pem = std::fs::read(jwt_fixture(private_pem)).expect("read the RSA fixture");
    let key = EncodingKey::from_rsa_pem(&pem).expect("an RSA private key");
    jsonwebtoken::encode(&Header::new(Algorithm::RS256), claims, &key).expect("sign RS256")
}

/// A token with `alg: none` and no signature.
fn unsigned(claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{payload}.")
}

/// Calls every RPC with `authorization` set to `value` (or absent), returning each status.
async fn call_every_rpc(app: &TestApp, value: Option<&str>) -> Vec<(&'static str, Status)> {
    fn request<T>(message: T, value: Option<&str>) -> Request<T> {
        match value {
            Some(value) => with_authorization(message, value),
            None => Request::new(message),
        }
    }
    let id = uuid::Uuid::new_v4().to_string();
    let mut client = app.client();
    let mut out = Vec::new();
    let create = client
        .create_policy(request(
            pb::CreatePolicyRequest {
                policy: Some(new_policy("acme", "/x", 1)),
            },
            value,
        ))
        .await;
    out.push(("CreatePolicy", create.expect_err("CreatePolicy succeeded")));
    let get = client
        .get_policy(request(pb::GetPolicyRequest { id: id.clone() }, value))
        .await;
    out.push(("GetPolicy", get.expect_err("GetPolicy succeeded")));
    let update = client
        .update_policy(request(
            pb::UpdatePolicyRequest {
                policy: Some(pb::Policy {
                    id: id.clone(),
                    max_requests: 2,
                    ..Default::default()
                }),
                update_mask: None,
            },
            value,
        ))
        .await;
    out.push(("UpdatePolicy", update.expect_err("UpdatePolicy succeeded")));
    let delete = client
        .delete_policy(request(
            pb::DeletePolicyRequest {
                id,
                etag: String::new(),
            },
            value,
        ))
        .await;
    out.push(("DeletePolicy", delete.expect_err("DeletePolicy succeeded")));
    let list = client
        .list_policies(request(pb::ListPoliciesRequest::default(), value))
        .await;
    out.push(("ListPolicies", list.expect_err("ListPolicies succeeded")));
    out
}

#[tokio::test]
async fn bad_or_missing_tokens_are_unauthenticated_on_every_rpc() {
    // Arrange
    let app = spawn_app().await;
    let secret = app.hs256_secret().as_bytes().to_vec();
    let valid = json!({ "tenant_id": "acme", "exp": now() + 3600 });
    let cases: Vec<(&str, Option<String>)> = vec![
        ("no authorization metadata", None),
        ("Basic scheme", Some("Basic YWNtZTpzZWNyZXQ=".into())),
        ("token without a scheme", Some(sign_hs256(&secret, &valid))),
        ("empty bearer token", Some("Bearer ".into())),
        ("not a JWT", Some("Bearer not.a.jwt".into())),
        (
            "expired an hour ago",
            Some(format!(
                "Bearer {}",
                sign_hs256(
                    &secret,
                    &json!({ "tenant_id": "acme", "exp": now() - 3600 })
                )
            )),
        ),
        (
            "signed with another secret",
            Some(format!(
                "Bearer {}",
                sign_hs256(b"another-secret-that-is-32-bytes-long!", &valid)
            )),
        ),
        ("alg none", Some(format!("Bearer {}", unsigned(&valid)))),
        (
            "no tenant_id and no admin role",
            Some(format!(
                "Bearer {}",
                sign_hs256(&secret, &json!({ "exp": now() + 3600 }))
            )),
        ),
        (
            "no exp",
            Some(format!(
                "Bearer {}",
                sign_hs256(&secret, &json!({ "tenant_id": "acme" }))
            )),
        ),
        (
            "not valid for another hour",
            Some(format!(
                "Bearer {}",
                sign_hs256(
                    &secret,
                    &json!({ "tenant_id": "acme", "exp": now() + 7200, "nbf": now() + 3600 })
                )
            )),
        ),
        (
            "invalid tenant_id claim",
            Some(format!(
                "Bearer {}",
                sign_hs256(&secret, &json!({ "tenant_id": "a b", "exp": now() + 3600 }))
            )),
        ),
        (
            "an RS256 token on an HS256 deployment",
            Some(format!("Bearer {}", rs256("rsa-private.pem", &valid))),
        ),
    ];

    for (case, value) in cases {
        // Act
        let statuses = call_every_rpc(&app, value.as_deref()).await;

        // Assert
        for (rpc, status) in statuses {
            assert_eq!(
                status.code(),
                Code::Unauthenticated,
                "{case} / {rpc}: {status:?}"
            );
            crate::helpers::assert_status(&status, Code::Unauthenticated, UNAUTHENTICATED);
            if let Some(value) = &value
                && let Some(token) = value.strip_prefix("Bearer ")
                && !token.is_empty()
            {
                assert!(
                    !status.message().contains(token),
                    "{case} / {rpc}: the token is echoed back"
                );
            }
        }
    }

    // Assert: nothing was created by any of them
    let listed = app.list(&app.admin_token(), "", 0, "").await.expect("list");
    assert!(listed.policies.is_empty());
}

#[tokio::test]
async fn a_tenant_scoped_token_for_anonymous_is_permission_denied_on_every_rpc() {
    // Arrange: a valid token the verifier accepts, for the reserved tenant without the role.
    let app = spawn_app().await;
    let anonymous = app.token_with_claims(json!({ "tenant_id": "anonymous" }));

    // Act
    let statuses = call_every_rpc(&app, Some(&format!("Bearer {anonymous}"))).await;

    // Assert
    for (rpc, status) in statuses {
        crate::helpers::assert_status(&status, Code::PermissionDenied, "PERMISSION_DENIED");
        assert!(
            status.message().contains("\"anonymous\" is reserved"),
            "{rpc}: {:?}",
            status.message()
        );
    }
}

#[tokio::test]
async fn a_token_within_the_clock_skew_leeway_is_accepted() {
    // Arrange
    let app = spawn_app().await;
    let secret = app.hs256_secret().as_bytes().to_vec();
    let just_expired = sign_hs256(&secret, &json!({ "tenant_id": "acme", "exp": now() - 5 }));

    // Act
    let result = app.list(&just_expired, "", 0, "").await;

    // Assert
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test]
async fn a_public_key_deployment_accepts_only_tokens_its_key_verifies() {
    // Arrange
    let app = spawn_app_with(|settings| {
        settings.jwt_hs256_secret = None;
        settings.jwt_public_keys = Some(jwt_fixture("rsa-public.pem"));
    })
    .await;
    let claims = json!({ "tenant_id": "acme", "exp": now() + 3600 });
    let good = rs256("rsa-private.pem", &claims);
    let other_key = rs256("rsa2-private.pem", &claims);
    let hs256_token = app.token("acme");

    // Act
    let created = app.create(&good, new_policy("acme", "/v1/**", 10)).await;
    let listed = app.list(&good, "", 0, "").await;
    let with_hs256 = app.list(&hs256_token, "", 0, "").await;
    let with_other_key = app.list(&other_key, "", 0, "").await;

    // Assert
    let created = created.expect("an RS256 token creates");
    assert_eq!(created.tenant_id, "acme");
    assert_eq!(
        listed.expect("an RS256 token lists").policies,
        vec![created]
    );
    expect_error(with_hs256, Code::Unauthenticated, UNAUTHENTICATED);
    expect_error(with_other_key, Code::Unauthenticated, UNAUTHENTICATED);
}

#[tokio::test]
async fn roles_in_an_rs256_token_make_a_platform_admin() {
    // Arrange
    let app = spawn_app_with(|settings| {
        settings.jwt_hs256_secret = None;
        settings.jwt_public_keys = Some(jwt_fixture("jwks.json"));
    })
    .await;
    let admin = rs256(
        "rsa2-private.pem",
        &json!({ "roles": ["platform-admin"], "exp": now() + 3600 }),
    );

    // Act
    let created = app.create(&admin, new_policy("*", "/v1/**", 10)).await;

    // Assert
    assert_eq!(created.expect("admin creates a default").tenant_id, "*");
}

#[tokio::test]
async fn postgres_without_a_jwt_key_does_not_start() {
    // Arrange
    let database = support::fresh_database().await;

    // Act
    let result = try_spawn_app_on(&database.url, |settings| {
        settings.jwt_hs256_secret = None;
    })
    .await;

    // Assert
    match result {
        Ok(_) => panic!("Sluice started on PostgreSQL without a JWT key"),
        Err(err) => assert!(
            err.to_string().contains("SLUICE_JWT_HS256_SECRET"),
            "the error names the setting: {err}"
        ),
    }
}

#[tokio::test]
async fn a_short_hs256_secret_does_not_start() {
    // Arrange
    let database = support::fresh_database().await;

    // Act
    let result = try_spawn_app_on(&database.url, |settings| {
        settings.jwt_hs256_secret = Some(crate::helpers::secret("too-short"));
    })
    .await;

    // Assert
    match result {
        Ok(_) => panic!("Sluice started with a 9-byte HS256 secret"),
        Err(err) => assert!(err.to_string().contains("SLUICE_JWT_HS256_SECRET"), "{err}"),
    }
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    // Arrange
    let app = spawn_app().await;
    let token = app.token("acme");

    // Act
    let result = app
        .client()
        .list_policies(with_authorization(
            pb::ListPoliciesRequest::default(),
            &format!("bearer {token}"),
        ))
        .await;
    let standard = app
        .client()
        .list_policies(bearer(pb::ListPoliciesRequest::default(), &token))
        .await;

    // Assert
    assert!(result.is_ok(), "{result:?}");
    assert!(standard.is_ok(), "{standard:?}");
}
