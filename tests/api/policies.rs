//! Every PolicyService RPC as the owning tenant, another tenant and a platform admin; create
//! defaults; field validation; (tenant, pattern) conflicts; update masks and etags; delete; the
//! reserved `anonymous` tenant; the cap on policies per tenant.

use serde_json::json;
use tonic::Code;
use uuid::Uuid;

use crate::helpers::{expect_error, new_policy, spawn_app, spawn_app_with, violation_fields};
use sluice::{
    domain::policy::MaxPoliciesPerTenant,
    proto::{
        envoy::{
            extensions::common::ratelimit::v3::{
                RateLimitDescriptor, rate_limit_descriptor::Entry,
            },
            service::ratelimit::v3::{
                RateLimitRequest, rate_limit_response::Code as RlsCode,
                rate_limit_service_client::RateLimitServiceClient,
            },
        },
        sluice::admin::v1 as pb,
    },
};

const NOT_FOUND: &str = "RATE_POLICY_NOT_FOUND";
const CONFLICT: &str = "RATE_POLICY_CONFLICT";
const INVALID: &str = "INVALID_RATE_POLICY";
const ETAG_MISMATCH: &str = "ETAG_MISMATCH";
const PERMISSION_DENIED: &str = "PERMISSION_DENIED";

fn ids(policies: &[pb::Policy]) -> Vec<String> {
    let mut ids: Vec<String> = policies.iter().map(|p| p.id.clone()).collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn the_owning_tenant_can_create_read_update_list_and_delete_its_policy() {
    // Arrange
    let app = spawn_app().await;
    let acme = app.token("acme");

    // Act: create
    let created = app
        .create_ok(&acme, new_policy("acme", "GET /v1/orders/*", 100))
        .await;

    // Assert
    assert_eq!(created.tenant_id, "acme");
    assert_eq!(created.endpoint_pattern, "GET /v1/orders/*");
    assert_eq!(created.max_requests, 100);

    // Act + assert: get returns the same policy
    let fetched = app.get(&acme, &created.id).await.expect("get");
    assert_eq!(fetched, created);

    // Act + assert: update
    let updated = app
        .update(
            &acme,
            pb::Policy {
                id: created.id.clone(),
                max_requests: 250,
                shadow: true,
                ..Default::default()
            },
            &["max_requests", "shadow"],
        )
        .await
        .expect("update");
    assert_eq!(updated.max_requests, 250);
    assert!(updated.shadow);
    assert_eq!(updated.endpoint_pattern, created.endpoint_pattern);
    assert_eq!(updated.created_at, created.created_at);
    assert_ne!(updated.etag, created.etag);
    assert_eq!(app.get(&acme, &created.id).await.expect("get"), updated);

    // Act + assert: list
    let listed = app.list(&acme, "", 0, "").await.expect("list");
    assert_eq!(listed.policies, vec![updated.clone()]);
    assert!(listed.next_page_token.is_empty());
    let filtered = app.list(&acme, "acme", 0, "").await.expect("list acme");
    assert_eq!(filtered.policies, vec![updated.clone()]);

    // Act + assert: delete, after which the policy is gone
    app.delete(&acme, &created.id, &updated.etag)
        .await
        .expect("delete");
    expect_error(app.get(&acme, &created.id).await, Code::NotFound, NOT_FOUND);
    assert!(
        app.list(&acme, "", 0, "")
            .await
            .expect("list")
            .policies
            .is_empty()
    );
}

#[tokio::test]
async fn another_tenants_policy_is_not_found_exactly_like_a_random_id() {
    // Arrange
    let app = spawn_app().await;
    let acme = app.token("acme");
    let globex = app.token("globex");
    let theirs = app.create_ok(&acme, new_policy("acme", "/v1/**", 10)).await;
    let ours = app
        .create_ok(&globex, new_policy("globex", "/v1/**", 20))
        .await;
    let random = Uuid::new_v4().to_string();

    // Act + assert: get, update and delete answer the same for their id and a random one
    for id in [&theirs.id, &random] {
        let get = expect_error(app.get(&globex, id).await, Code::NotFound, NOT_FOUND);
        let update = expect_error(
            app.set_max_requests(&globex, id, 1).await,
            Code::NotFound,
            NOT_FOUND,
        );
        let delete = expect_error(app.delete(&globex, id, "").await, Code::NotFound, NOT_FOUND);
        for status in [get, update, delete] {
            assert_eq!(status.message(), "policy not found", "{status:?}");
        }
    }

    // Act + assert: creating for acme, or listing acme's, is refused
    expect_error(
        app.create(&globex, new_policy("acme", "/v2/**", 10)).await,
        Code::PermissionDenied,
        PERMISSION_DENIED,
    );
    expect_error(
        app.list(&globex, "acme", 0, "").await,
        Code::PermissionDenied,
        PERMISSION_DENIED,
    );

    // Act + assert: an unfiltered list shows only globex's own policy
    let listed = app.list(&globex, "", 0, "").await.expect("list");
    assert_eq!(listed.policies, vec![ours]);

    // Assert: acme's policy was not touched
    assert_eq!(app.get(&acme, &theirs.id).await.expect("get"), theirs);
}

#[tokio::test]
async fn a_platform_admin_acts_on_every_tenant_and_on_default_policies() {
    // Arrange
    let app = spawn_app().await;
    let admin = app.admin_token();
    let acme = app.token("acme");

    // Act: the admin creates for acme, for globex and a `*` default
    let for_acme = app.create_ok(&admin, new_policy("acme", "/a", 10)).await;
    let for_globex = app.create_ok(&admin, new_policy("globex", "/a", 10)).await;
    let default = app.create_ok(&admin, new_policy("*", "*", 1000)).await;

    // Assert
    assert_eq!(default.tenant_id, "*");
    assert_eq!(default.endpoint_pattern, "*");
    assert_eq!(app.get(&acme, &for_acme.id).await.expect("get"), for_acme);
    let all = app.list(&admin, "", 0, "").await.expect("list all");
    assert_eq!(
        ids(&all.policies),
        ids(&[for_acme.clone(), for_globex.clone(), default.clone()])
    );
    let defaults = app.list(&admin, "*", 0, "").await.expect("list *");
    assert_eq!(defaults.policies, vec![default.clone()]);
    let globex_only = app.list(&admin, "globex", 0, "").await.expect("list");
    assert_eq!(globex_only.policies, vec![for_globex.clone()]);

    // Act + assert: the admin reads, updates and deletes another tenant's policy
    let fetched = app.get(&admin, &for_globex.id).await.expect("get");
    assert_eq!(fetched, for_globex);
    let updated = app
        .set_max_requests(&admin, &for_globex.id, 99)
        .await
        .expect("update");
    assert_eq!(updated.max_requests, 99);
    app.delete(&admin, &for_globex.id, &updated.etag)
        .await
        .expect("delete");

    // Act + assert: a tenant caller can neither create nor see `*` policies
    expect_error(
        app.create(&acme, new_policy("*", "/b", 10)).await,
        Code::PermissionDenied,
        PERMISSION_DENIED,
    );
    expect_error(app.get(&acme, &default.id).await, Code::NotFound, NOT_FOUND);
    expect_error(
        app.list(&acme, "*", 0, "").await,
        Code::PermissionDenied,
        PERMISSION_DENIED,
    );
    let own = app.list(&acme, "", 0, "").await.expect("list");
    assert_eq!(own.policies, vec![for_acme]);
}

#[tokio::test]
async fn an_admin_token_without_a_tenant_must_name_the_tenant() {
    // Arrange
    let app = spawn_app().await;
    let admin = app.admin_token();
    let admin_of_acme = app.token_with(Some("acme"), &["platform-admin"]);

    // Act
    let missing = app.create(&admin, new_policy("", "/a", 10)).await;
    let defaulted = app
        .create_ok(&admin_of_acme, new_policy("", "/a", 10))
        .await;

    // Assert
    let status = expect_error(missing, Code::InvalidArgument, INVALID);
    assert_eq!(violation_fields(&status), ["policy.tenant_id"]);
    assert_eq!(defaulted.tenant_id, "acme");
}

#[tokio::test]
async fn create_fills_in_the_defaults() {
    // Arrange
    let app = spawn_app().await;
    let acme = app.token("acme");
    let before = chrono::Utc::now().timestamp();

    // Act
    let created = app.create_ok(&acme, new_policy("", "/v1/**", 5)).await;
    let disabled = app
        .create_ok(
            &acme,
            pb::Policy {
                enabled: Some(false),
                window_seconds: 3600,
                burst_limit: 2,
                ..new_policy("acme", "/v2/**", 5)
            },
        )
        .await;

    // Assert
    assert_eq!(
        created.tenant_id, "acme",
        "empty tenant_id means the token's"
    );
    assert_eq!(created.enabled, Some(true));
    assert_eq!(created.window_seconds, 60);
    assert_eq!(created.burst_limit, 0);
    assert!(!created.shadow);
    Uuid::parse_str(&created.id).expect("the id is a UUID");
    assert!(!created.etag.is_empty());
    let created_at = created.created_at.expect("created_at");
    let updated_at = created.updated_at.expect("updated_at");
    assert!(created_at.seconds >= before - 5 && created_at.seconds <= before + 60);
    assert_eq!(created_at, updated_at);
    assert_eq!(disabled.enabled, Some(false));
    assert_eq!(disabled.window_seconds, 3600);
    assert_eq!(disabled.burst_limit, 2);
    assert_ne!(disabled.id, created.id);
}

#[tokio::test]
async fn create_uses_the_configured_default_window() {
    // Arrange
    let app = spawn_app_with(|settings| settings.default_window_seconds = 300).await;
    let acme = app.token("acme");

    // Act
    let created = app.create_ok(&acme, new_policy("acme", "/x", 5)).await;

    // Assert
    assert_eq!(created.window_seconds, 300);
}

#[tokio::test]
async fn invalid_policies_are_refused_naming_every_bad_field() {
    // Arrange
    let app = spawn_app().await;
    let admin = app.admin_token();
    let valid = || new_policy("acme", "/ok", 10);
    let cases: Vec<(&str, pb::Policy, Vec<&str>)> = vec![
        (
            "tenant with a space",
            pb::Policy {
                tenant_id: "acme corp".into(),
                ..valid()
            },
            vec!["policy.tenant_id"],
        ),
        (
            "tenant of 65 characters",
            pb::Policy {
                tenant_id: "a".repeat(65),
                ..valid()
            },
            vec!["policy.tenant_id"],
        ),
        (
            "tenant with a star inside",
            pb::Policy {
                tenant_id: "ac*me".into(),
                ..valid()
            },
            vec!["policy.tenant_id"],
        ),
        (
            "tenant with a non-ASCII letter",
            pb::Policy {
                tenant_id: "acmé".into(),
                ..valid()
            },
            vec!["policy.tenant_id"],
        ),
        (
            "tenant with a slash",
            pb::Policy {
                tenant_id: "acme/eu".into(),
                ..valid()
            },
            vec!["policy.tenant_id"],
        ),
        (
            "empty pattern",
            pb::Policy {
                endpoint_pattern: String::new(),
                ..valid()
            },
            vec!["policy.endpoint_pattern"],
        ),
        (
            "path without a leading slash",
            pb::Policy {
                endpoint_pattern: "v1/users".into(),
                ..valid()
            },
            vec!["policy.endpoint_pattern"],
        ),
        (
            "method and path separated by two spaces",
            pb::Policy {
                endpoint_pattern: "GET  /v1".into(),
                ..valid()
            },
            vec!["policy.endpoint_pattern"],
        ),
        (
            "`**` not last",
            pb::Policy {
                endpoint_pattern: "/v1/**/users".into(),
                ..valid()
            },
            vec!["policy.endpoint_pattern"],
        ),
        (
            "`*` inside a segment",
            pb::Policy {
                endpoint_pattern: "/v1/user*".into(),
                ..valid()
            },
            vec!["policy.endpoint_pattern"],
        ),
        (
            "a method with `*`",
            pb::Policy {
                endpoint_pattern: "GET *".into(),
                ..valid()
            },
            vec!["policy.endpoint_pattern"],
        ),
        (
            "a query string",
            pb::Policy {
                endpoint_pattern: "/v1/users?id=1".into(),
                ..valid()
            },
            vec!["policy.endpoint_pattern"],
        ),
        (
            "leading whitespace",
            pb::Policy {
                endpoint_pattern: " /v1".into(),
                ..valid()
            },
            vec!["policy.endpoint_pattern"],
        ),
        (
            "a pattern over 1024 bytes",
            pb::Policy {
                endpoint_pattern: format!("/{}", "a".repeat(1024)),
                ..valid()
            },
            vec!["policy.endpoint_pattern"],
        ),
        (
            "max_requests 0",
            pb::Policy {
                max_requests: 0,
                ..valid()
            },
            vec!["policy.max_requests"],
        ),
        (
            "max_requests 1,000,001",
            pb::Policy {
                max_requests: 1_000_001,
                ..valid()
            },
            vec!["policy.max_requests"],
        ),
        (
            "window of 31 days and a second",
            pb::Policy {
                window_seconds: 2_678_401,
                ..valid()
            },
            vec!["policy.window_seconds"],
        ),
        (
            "burst above max",
            pb::Policy {
                burst_limit: 11,
                ..valid()
            },
            vec!["policy.burst_limit"],
        ),
        (
            "several bad fields at once",
            pb::Policy {
                tenant_id: "bad tenant".into(),
                endpoint_pattern: "nope".into(),
                max_requests: 0,
                window_seconds: 3_000_000,
                ..valid()
            },
            vec![
                "policy.tenant_id",
                "policy.endpoint_pattern",
                "policy.max_requests",
                "policy.window_seconds",
            ],
        ),
    ];

    for (case, policy, expected) in cases {
        // Act
        let result = app.create(&admin, policy).await;

        // Assert
        let status = match result {
            Ok(created) => panic!("{case}: expected INVALID_ARGUMENT, created {created:?}"),
            Err(status) => status,
        };
        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
        crate::helpers::assert_status(&status, Code::InvalidArgument, INVALID);
        assert_eq!(violation_fields(&status), expected, "{case}");
    }
    assert!(
        app.list(&admin, "", 0, "")
            .await
            .expect("list")
            .policies
            .is_empty(),
        "nothing invalid was stored"
    );
}

#[tokio::test]
async fn the_boundary_values_of_every_field_are_accepted() {
    // Arrange
    let app = spawn_app().await;
    let admin = app.admin_token();
    let cases = [
        pb::Policy {
            tenant_id: "A.b_c-9".repeat(10)[..64].to_owned(),
            ..new_policy("", "/tenant-64", 1)
        },
        pb::Policy {
            window_seconds: 2_678_400,
            burst_limit: 1_000_000,
            ..new_policy("acme", "/max", 1_000_000)
        },
        pb::Policy {
            window_seconds: 1,
            burst_limit: 1,
            ..new_policy("acme", "/min", 1)
        },
        new_policy("acme", "*", 1),
        new_policy("acme", "/", 1),
        new_policy("acme", "delete /v1/*/items/**", 1),
    ];

    for policy in cases {
        // Act
        let shown = format!("{policy:?}");
        let created = app.create(&admin, policy.clone()).await;

        // Assert
        let created = created.unwrap_or_else(|status| panic!("{shown}: {status:?}"));
        assert_eq!(created.max_requests, policy.max_requests);
        assert_eq!(created.burst_limit, policy.burst_limit);
    }
}

#[tokio::test]
async fn the_same_tenant_and_pattern_conflict_even_when_written_differently() {
    // Arrange
    let app = spawn_app().await;
    let acme = app.token("acme");
    let globex = app.token("globex");
    let first = app.create_ok(&acme, new_policy("acme", "GET /a", 10)).await;

    // Act + assert: the same pattern, or a canonically equal one, conflicts
    for pattern in ["GET /a", "get /a/", "Get //a", "GET /a//"] {
        let status = expect_error(
            app.create(&acme, new_policy("acme", pattern, 10)).await,
            Code::AlreadyExists,
            CONFLICT,
        );
        assert!(status.message().contains("GET /a"), "{status:?}");
    }

    // Act + assert: other tenants and other patterns are fine
    let other_tenant = app
        .create_ok(&globex, new_policy("globex", "get /a/", 10))
        .await;
    assert_eq!(other_tenant.endpoint_pattern, "GET /a");
    let no_method = app.create_ok(&acme, new_policy("acme", "/a", 10)).await;

    // Act + assert: updating into a taken pattern conflicts and changes nothing
    let status = expect_error(
        app.update(
            &acme,
            pb::Policy {
                id: no_method.id.clone(),
                endpoint_pattern: "get /a".into(),
                ..Default::default()
            },
            &["endpoint_pattern"],
        )
        .await,
        Code::AlreadyExists,
        CONFLICT,
    );
    assert!(status.message().contains("acme"), "{status:?}");
    assert_eq!(app.get(&acme, &no_method.id).await.expect("get"), no_method);
    assert_eq!(app.get(&acme, &first.id).await.expect("get"), first);
}

#[tokio::test]
async fn update_masks_take_snake_and_camel_case_and_change_only_the_named_fields() {
    // Arrange
    let app = spawn_app().await;
    let acme = app.token("acme");
    let created = app.create_ok(&acme, new_policy("acme", "/v1/**", 10)).await;
    let body = |id: &str| pb::Policy {
        id: id.to_owned(),
        endpoint_pattern: "/elsewhere".into(),
        max_requests: 42,
        window_seconds: 120,
        burst_limit: 7,
        enabled: Some(false),
        shadow: true,
        ..Default::default()
    };

    // Act: snake_case, one field
    let snake = app
        .update(&acme, body(&created.id), &["max_requests"])
        .await
        .expect("snake_case mask");

    // Assert: only max_requests changed
    assert_eq!(snake.max_requests, 42);
    assert_eq!(snake.window_seconds, created.window_seconds);
    assert_eq!(snake.endpoint_pattern, created.endpoint_pattern);
    assert_eq!(snake.burst_limit, 0);
    assert_eq!(snake.enabled, Some(true));
    assert!(!snake.shadow);

    // Act: camelCase, several fields
    let camel = app
        .update(
            &acme,
            body(&created.id),
            &[
                "windowSeconds",
                "burstLimit",
                "endpointPattern",
                "policy.shadow",
            ],
        )
        .await
        .expect("camelCase mask");

    // Assert
    assert_eq!(camel.window_seconds, 120);
    assert_eq!(camel.burst_limit, 7);
    assert_eq!(camel.endpoint_pattern, "/elsewhere");
    assert!(camel.shadow);
    assert_eq!(camel.max_requests, 42);
    assert_eq!(camel.enabled, Some(true));
}

#[tokio::test]
async fn update_masks_naming_unknown_or_immutable_fields_are_refused() {
    // Arrange
    let app = spawn_app().await;
    let acme = app.token("acme");
    let created = app.create_ok(&acme, new_policy("acme", "/v1/**", 10)).await;
    let cases: [&[&str]; 7] = [
        &["colour"],
        &["tenant_id"],
        &["tenantId"],
        &["id"],
        &["etag"],
        &["created_at"],
        &["max_requests", "nope"],
    ];

    for paths in cases {
        // Act
        let result = app
            .update(
                &acme,
                pb::Policy {
                    id: created.id.clone(),
                    tenant_id: "globex".into(),
                    max_requests: 5,
                    ..Default::default()
                },
                paths,
            )
            .await;

        // Assert
        let status = expect_error(result, Code::InvalidArgument, INVALID);
        assert_eq!(violation_fields(&status), ["update_mask"], "{paths:?}");
    }
    assert_eq!(app.get(&acme, &created.id).await.expect("get"), created);
}

#[tokio::test]
async fn an_update_without_a_mask_refuses_to_move_a_policy_to_another_tenant() {
    // Arrange: a full policy as Get returned it, edited, and sent back without a mask
    let app = spawn_app().await;
    let admin = app.admin_token();
    let created = app
        .create_ok(&admin, new_policy("acme", "/v1/**", 10))
        .await;
    let mut moved = created.clone();
    moved.tenant_id = "globex".into();
    moved.max_requests = 20;
    let mut same_tenant = created.clone();
    same_tenant.max_requests = 30;

    // Act
    let refused = app.update(&admin, moved, &[]).await;
    let unchanged = app.get(&admin, &created.id).await.expect("get");
    let accepted = app.update(&admin, same_tenant, &[]).await;

    // Assert: refused, naming the field, with nothing applied; the policy's own tenant is fine
    let status = expect_error(refused, Code::InvalidArgument, INVALID);
    assert_eq!(violation_fields(&status), ["policy.tenant_id"]);
    assert_eq!(unchanged, created);
    let accepted = accepted.expect("an update that repeats the policy's own tenant");
    assert_eq!(accepted.tenant_id, "acme");
    assert_eq!(accepted.max_requests, 30);
}

#[tokio::test]
async fn an_update_with_nothing_to_change_or_a_bad_id_is_invalid() {
    // Arrange
    let app = spawn_app().await;
    let acme = app.token("acme");
    let created = app.create_ok(&acme, new_policy("acme", "/v1/**", 10)).await;

    // Act
    let nothing = app
        .update(
            &acme,
            pb::Policy {
                id: created.id.clone(),
                ..Default::default()
            },
            &[],
        )
        .await;
    let bad_id = app.set_max_requests(&acme, "not-a-uuid", 3).await;
    let bad_get = app.get(&acme, "not-a-uuid").await;

    // Assert
    let status = expect_error(nothing, Code::InvalidArgument, INVALID);
    assert_eq!(violation_fields(&status), ["update_mask"]);
    let status = expect_error(bad_id, Code::InvalidArgument, INVALID);
    assert_eq!(violation_fields(&status), ["policy.id"]);
    let status = expect_error(bad_get, Code::InvalidArgument, INVALID);
    assert_eq!(violation_fields(&status), ["id"]);
}

#[tokio::test]
async fn an_update_without_a_mask_applies_the_fields_it_sets() {
    // Arrange
    let app = spawn_app().await;
    let acme = app.token("acme");
    let created = app.create_ok(&acme, new_policy("acme", "/v1/**", 10)).await;

    // Act
    let updated = app
        .update(
            &acme,
            pb::Policy {
                id: created.id.clone(),
                max_requests: 77,
                ..Default::default()
            },
            &[],
        )
        .await
        .expect("update");

    // Assert
    assert_eq!(updated.max_requests, 77);
    assert_eq!(updated.window_seconds, created.window_seconds);
    assert_eq!(updated.endpoint_pattern, created.endpoint_pattern);
}

#[tokio::test]
async fn etags_guard_updates_against_lost_writes() {
    // Arrange
    let app = spawn_app().await;
    let acme = app.token("acme");
    let created = app.create_ok(&acme, new_policy("acme", "/v1/**", 10)).await;
    let change = |etag: &str, max_requests: u32| pb::Policy {
        id: created.id.clone(),
        etag: etag.to_owned(),
        max_requests,
        ..Default::default()
    };

    // Act: a matching etag
    let first = app
        .update(&acme, change(&created.etag, 20), &["max_requests"])
        .await
        .expect("update with the current etag");

    // Assert: a new etag, and a newer updated_at
    assert_ne!(first.etag, created.etag);
    let instant = |p: &pb::Policy| p.updated_at.map(|t| (t.seconds, t.nanos));
    assert!(instant(&first) > instant(&created));
    assert_eq!(first.created_at, created.created_at);

    // Act: the stale etag
    let stale = app
        .update(&acme, change(&created.etag, 30), &["max_requests"])
        .await;

    // Assert: ABORTED, nothing changed
    expect_error(stale, Code::Aborted, ETAG_MISMATCH);
    assert_eq!(app.get(&acme, &created.id).await.expect("get"), first);

    // Act + assert: every update changes the etag, even when the values stay the same
    let second = app
        .update(&acme, change(&first.etag, 20), &["max_requests"])
        .await
        .expect("update with the new etag");
    assert_ne!(second.etag, first.etag);
    assert_eq!(second.max_requests, 20);
}

#[tokio::test]
async fn a_disabled_policy_is_kept_and_readable() {
    // Arrange
    let app = spawn_app().await;
    let acme = app.token("acme");
    let created = app.create_ok(&acme, new_policy("acme", "/v1/**", 10)).await;

    // Act
    let disabled = app
        .update(
            &acme,
            pb::Policy {
                id: created.id.clone(),
                enabled: Some(false),
                ..Default::default()
            },
            &["enabled"],
        )
        .await
        .expect("disable");

    // Assert
    assert_eq!(disabled.enabled, Some(false));
    assert_eq!(app.get(&acme, &created.id).await.expect("get"), disabled);
    let listed = app.list(&acme, "", 0, "").await.expect("list");
    assert_eq!(listed.policies, vec![disabled.clone()]);

    // Act + assert: enabling it again
    let enabled = app
        .update(
            &acme,
            pb::Policy {
                id: created.id.clone(),
                enabled: Some(true),
                ..Default::default()
            },
            &["enabled"],
        )
        .await
        .expect("enable");
    assert_eq!(enabled.enabled, Some(true));
}

#[tokio::test]
async fn an_update_may_not_leave_burst_above_max() {
    // Arrange
    let app = spawn_app().await;
    let acme = app.token("acme");
    let created = app
        .create_ok(
            &acme,
            pb::Policy {
                burst_limit: 5,
                ..new_policy("acme", "/v1/**", 10)
            },
        )
        .await;
    let cases: [(pb::Policy, &[&str], &[&str]); 3] = [
        (
            pb::Policy {
                max_requests: 3,
                ..Default::default()
            },
            &["max_requests"],
            &["policy.burst_limit"],
        ),
        (
            pb::Policy {
                burst_limit: 11,
                ..Default::default()
            },
            &["burst_limit"],
            &["policy.burst_limit"],
        ),
        (
            pb::Policy {
                max_requests: 0,
                window_seconds: 2_678_401,
                ..Default::default()
            },
            &["max_requests", "window_seconds"],
            &["policy.max_requests", "policy.window_seconds"],
        ),
    ];

    for (change, mask, expected) in cases {
        // Act
        let result = app
            .update(
                &acme,
                pb::Policy {
                    id: created.id.clone(),
                    ..change
                },
                mask,
            )
            .await;

        // Assert
        let status = expect_error(result, Code::InvalidArgument, INVALID);
        assert_eq!(violation_fields(&status), expected, "{mask:?}");
    }
    assert_eq!(app.get(&acme, &created.id).await.expect("get"), created);

    // Act + assert: lowering both together is fine
    let lowered = app
        .update(
            &acme,
            pb::Policy {
                id: created.id.clone(),
                max_requests: 3,
                burst_limit: 3,
                ..Default::default()
            },
            &["max_requests", "burst_limit"],
        )
        .await
        .expect("lower both");
    assert_eq!((lowered.max_requests, lowered.burst_limit), (3, 3));
}

#[tokio::test]
async fn delete_checks_the_etag_then_the_policy_is_gone() {
    // Arrange
    let app = spawn_app().await;
    let acme = app.token("acme");
    let created = app.create_ok(&acme, new_policy("acme", "/v1/**", 10)).await;
    let updated = app
        .set_max_requests(&acme, &created.id, 11)
        .await
        .expect("update");

    // Act: a stale etag
    let stale = app.delete(&acme, &created.id, &created.etag).await;

    // Assert: ABORTED, the policy is still there
    expect_error(stale, Code::Aborted, ETAG_MISMATCH);
    assert_eq!(app.get(&acme, &created.id).await.expect("get"), updated);

    // Act: the current etag
    app.delete(&acme, &created.id, &updated.etag)
        .await
        .expect("delete");

    // Assert
    expect_error(app.get(&acme, &created.id).await, Code::NotFound, NOT_FOUND);
    expect_error(
        app.delete(&acme, &created.id, "").await,
        Code::NotFound,
        NOT_FOUND,
    );
    // The pattern is free again.
    app.create_ok(&acme, new_policy("acme", "/v1/**", 10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_concurrent_updates_with_one_etag_exactly_one_wins() {
    // Arrange
    let app = spawn_app().await;
    let acme = app.token("acme");
    let created = app.create_ok(&acme, new_policy("acme", "/v1/**", 10)).await;
    let change = |max_requests: u32| pb::Policy {
        id: created.id.clone(),
        etag: created.etag.clone(),
        max_requests,
        ..Default::default()
    };

    // Act
    let (first, second) = tokio::join!(
        app.update(&acme, change(20), &["max_requests"]),
        app.update(&acme, change(30), &["max_requests"]),
    );

    // Assert
    let (winner, loser) = match (first, second) {
        (Ok(winner), Err(loser)) | (Err(loser), Ok(winner)) => (winner, loser),
        other => panic!("expected exactly one success: {other:?}"),
    };
    crate::helpers::assert_status(&loser, Code::Aborted, ETAG_MISMATCH);
    assert_eq!(app.get(&acme, &created.id).await.expect("get"), winner);
}

#[tokio::test]
async fn requests_missing_their_policy_or_with_a_bad_filter_are_invalid() {
    // Arrange
    let app = spawn_app().await;
    let acme = app.token("acme");

    // Act
    let create = app
        .client()
        .create_policy(crate::helpers::bearer(
            pb::CreatePolicyRequest { policy: None },
            &acme,
        ))
        .await;
    let update = app
        .client()
        .update_policy(crate::helpers::bearer(
            pb::UpdatePolicyRequest {
                policy: None,
                update_mask: None,
            },
            &acme,
        ))
        .await;
    let list = app.list(&acme, "not a tenant", 0, "").await;

    // Assert
    let status = expect_error(create, Code::InvalidArgument, INVALID);
    assert_eq!(violation_fields(&status), ["policy"]);
    let status = expect_error(update, Code::InvalidArgument, INVALID);
    assert_eq!(violation_fields(&status), ["policy"]);
    let status = expect_error(list, Code::InvalidArgument, INVALID);
    assert_eq!(violation_fields(&status), ["tenant_id"]);
}

#[tokio::test]
async fn only_a_platform_admin_manages_the_anonymous_tenants_policies() {
    // Arrange
    let app = spawn_app().await;
    let admin = app.admin_token();
    let anonymous = app.token_with_claims(json!({ "tenant_id": "anonymous" }));
    let created = app
        .create_ok(&admin, new_policy("anonymous", "/public/**", 10))
        .await;

    // Act: the tenant-scoped `anonymous` token tries every RPC on that policy
    let mut takeover = new_policy("anonymous", "/**", 1_000_000);
    takeover.shadow = true;
    let denied = [
        ("create", app.create(&anonymous, takeover).await.map(|_| ())),
        ("get", app.get(&anonymous, &created.id).await.map(|_| ())),
        (
            "update",
            app.set_max_requests(&anonymous, &created.id, 1_000_000)
                .await
                .map(|_| ()),
        ),
        ("delete", app.delete(&anonymous, &created.id, "").await),
        (
            "list",
            app.list(&anonymous, "anonymous", 0, "").await.map(|_| ()),
        ),
    ];

    // Assert: each refused as reserved, and the policy is untouched
    for (rpc, result) in denied {
        let status = expect_error(result, Code::PermissionDenied, PERMISSION_DENIED);
        assert!(
            status.message().contains("\"anonymous\" is reserved"),
            "{rpc}: {:?}",
            status.message()
        );
    }
    assert_eq!(app.get(&admin, &created.id).await.expect("get"), created);

    // Act + assert: the platform admin updates, lists and deletes it
    let updated = app
        .set_max_requests(&admin, &created.id, 20)
        .await
        .expect("update");
    assert_eq!(updated.max_requests, 20);
    let listed = app.list(&admin, "anonymous", 0, "").await.expect("list");
    assert_eq!(listed.policies, vec![updated.clone()]);
    app.delete(&admin, &created.id, &updated.etag)
        .await
        .expect("delete");
    expect_error(
        app.get(&admin, &created.id).await,
        Code::NotFound,
        NOT_FOUND,
    );
}

#[tokio::test]
async fn the_default_policy_still_governs_traffic_without_a_tenant() {
    // Arrange: the platform's `*` default, and an `anonymous` token trying to override it
    let app = spawn_app().await;
    let default = app
        .create_ok(&app.admin_token(), new_policy("*", "/**", 2))
        .await;
    let anonymous = app.token_with_claims(json!({ "tenant_id": "anonymous" }));
    let mut takeover = new_policy("anonymous", "/**", 1_000_000);
    takeover.shadow = true;
    let refused = app.create(&anonymous, takeover).await;
    let no_tenant = RateLimitRequest {
        domain: "edge".into(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![Entry {
                key: "path".into(),
                value: "/v1/orders".into(),
            }],
            ..Default::default()
        }],
        hits_addend: 0,
    };
    let mut rls = RateLimitServiceClient::new(app.channel.clone());

    // Act
    let mut answers = Vec::new();
    for _ in 0..3 {
        let response = rls
            .should_rate_limit(no_tenant.clone())
            .await
            .expect("ShouldRateLimit")
            .into_inner();
        answers.push(response);
    }

    // Assert
    expect_error(refused, Code::PermissionDenied, PERMISSION_DENIED);
    let codes: Vec<i32> = answers.iter().map(|r| r.overall_code).collect();
    assert_eq!(
        codes,
        [
            RlsCode::Ok as i32,
            RlsCode::Ok as i32,
            RlsCode::OverLimit as i32
        ]
    );
    let limit = answers[0].statuses[0]
        .current_limit
        .as_ref()
        .expect("the matched limit");
    assert_eq!(limit.name, default.id);
}

#[tokio::test]
async fn creating_past_the_policy_cap_is_resource_exhausted() {
    // Arrange: a cap of two policies per tenant
    let app = spawn_app_with(|settings| {
        settings.max_policies_per_tenant = MaxPoliciesPerTenant::new(2).expect("cap");
    })
    .await;
    let acme = app.token("acme");
    let admin = app.admin_token();
    app.create_ok(&acme, new_policy("acme", "/a", 10)).await;
    let mut disabled = new_policy("acme", "/b", 10);
    disabled.enabled = Some(false);
    app.create_ok(&acme, disabled).await;

    // Act
    let third = app.create(&acme, new_policy("acme", "/c", 10)).await;
    let third_by_admin = app.create(&admin, new_policy("acme", "/c", 10)).await;
    let other_tenant = app.create(&admin, new_policy("globex", "/c", 10)).await;

    // Assert
    for result in [third, third_by_admin] {
        let status = expect_error(result, Code::ResourceExhausted, "RATE_POLICY_LIMIT");
        let message = status.message();
        assert!(
            message.contains("tenant acme") && message.contains("2 policies"),
            "{message:?}"
        );
        let info = tonic_types::StatusExt::get_details_error_info(&status).expect("ErrorInfo");
        assert_eq!(info.metadata.get("limit").map(String::as_str), Some("2"));
    }
    other_tenant.expect("another tenant is unaffected");
    let stored = app.list(&acme, "", 0, "").await.expect("list").policies;
    assert_eq!(stored.len(), 2, "the refused creates wrote nothing");
}
