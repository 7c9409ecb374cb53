//! `ListPolicies` paging: page sizes, walking every page, cursors that are tampered with or reused
//! with another filter, inserts while a client pages, and cursors shared by two instances.

use std::collections::HashSet;

use sqlx::PgConnection;
use tonic::Code;

use crate::helpers::{
    TestApp, expect_error, new_policy, secret, spawn_app, try_spawn_app_on, violation_fields,
};

const INVALID: &str = "INVALID_RATE_POLICY";

/// Inserts `count` policies of `tenant` straight into the database, with random (UUIDv4) ids so
/// they land anywhere in the id order, not only after the existing ones.
async fn insert_directly(db: &mut PgConnection, tenant: &str, prefix: &str, count: i32) {
    sqlx::query(
        "INSERT INTO rate_policies (id, tenant_id, endpoint_pattern, max_requests, window_seconds) \
         SELECT gen_random_uuid(), $1, $2 || g, 10, 60 FROM generate_series(1, $3) AS g",
    )
    .bind(tenant)
    .bind(format!("/{prefix}/"))
    .bind(count)
    .execute(db)
    .await
    .expect("bulk insert");
}

async fn create_many(app: &TestApp, tenant: &str, prefix: &str, count: usize) -> Vec<String> {
    let token = app.admin_token();
    let mut ids = Vec::with_capacity(count);
    for i in 0..count {
        let created = app
            .create_ok(&token, new_policy(tenant, &format!("/{prefix}/{i}"), 10))
            .await;
        ids.push(created.id);
    }
    ids
}

#[tokio::test]
async fn page_size_defaults_to_50_caps_at_500_and_may_not_be_negative() {
    // Arrange
    let app = spawn_app().await;
    let admin = app.admin_token();
    let mut db = app.database_connection().await;
    insert_directly(&mut db, "acme", "bulk", 501).await;

    // Act
    let default = app.list(&admin, "", 0, "").await.expect("default size");
    let capped = app.list(&admin, "", 10_000, "").await.expect("capped");
    let exact = app.list(&admin, "acme", 500, "").await.expect("500");
    let negative = app.list(&admin, "", -1, "").await;

    // Assert
    assert_eq!(default.policies.len(), 50);
    assert!(!default.next_page_token.is_empty());
    assert_eq!(capped.policies.len(), 500);
    assert!(!capped.next_page_token.is_empty());
    assert_eq!(exact.policies.len(), 500);
    let last = app
        .list(&admin, "acme", 500, &exact.next_page_token)
        .await
        .expect("last page");
    assert_eq!(last.policies.len(), 1);
    assert!(last.next_page_token.is_empty());
    let status = expect_error(negative, Code::InvalidArgument, INVALID);
    assert_eq!(violation_fields(&status), ["page_size"]);
}

#[tokio::test]
async fn walking_pages_returns_every_policy_exactly_once() {
    // Arrange
    let app = spawn_app().await;
    let mut expected_acme = create_many(&app, "acme", "a", 10).await;
    let expected_globex = create_many(&app, "globex", "g", 2).await;
    let acme = app.token("acme");
    let admin = app.admin_token();

    // Act: acme pages through its own policies three at a time
    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = app.list(&acme, "", 3, &page_token).await.expect("page");
        sizes.push(page.policies.len());
        seen.extend(page.policies.into_iter().map(|p| p.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }

    // Assert: creation order, no repeats, nothing missing
    assert_eq!(sizes, [3, 3, 3, 1]);
    assert_eq!(seen, expected_acme, "pages come in creation order");

    // Act + assert: the admin's unfiltered and filtered walks
    let all: Vec<String> = app
        .list_all(&admin, "", 3)
        .await
        .into_iter()
        .map(|p| p.id)
        .collect();
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(unique.len(), all.len(), "no policy twice");
    expected_acme.extend(expected_globex.iter().cloned());
    assert_eq!(
        unique,
        expected_acme.iter().collect::<HashSet<_>>(),
        "every policy once"
    );
    let globex: Vec<String> = app
        .list_all(&admin, "globex", 3)
        .await
        .into_iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(globex, expected_globex);
}

#[tokio::test]
async fn an_exactly_full_last_page_ends_the_listing() {
    // Arrange
    let app = spawn_app().await;
    create_many(&app, "acme", "a", 6).await;
    let acme = app.token("acme");

    // Act
    let first = app.list(&acme, "", 3, "").await.expect("first");
    let second = app
        .list(&acme, "", 3, &first.next_page_token)
        .await
        .expect("second");

    // Assert: no empty trailing page
    assert_eq!(second.policies.len(), 3);
    assert!(second.next_page_token.is_empty());
}

#[tokio::test]
async fn tampered_foreign_or_reused_page_tokens_are_refused() {
    // Arrange
    let app = spawn_app().await;
    create_many(&app, "acme", "a", 4).await;
    create_many(&app, "globex", "g", 4).await;
    let admin = app.admin_token();
    let acme = app.token("acme");
    let page = app.list(&admin, "acme", 2, "").await.expect("first page");
    let token = page.next_page_token;
    let mut tampered: Vec<char> = token.chars().collect();
    let middle = tampered.len() / 2;
    tampered[middle] = if tampered[middle] == 'A' { 'B' } else { 'A' };
    let tampered: String = tampered.into_iter().collect();
    let cases = [
        ("tampered", "acme", tampered.as_str()),
        ("truncated", "acme", &token[..token.len() - 3]),
        ("garbage", "acme", "not a token!"),
        ("another filter", "globex", token.as_str()),
        ("no filter", "", token.as_str()),
    ];

    for (case, filter, page_token) in cases {
        // Act
        let result = app.list(&admin, filter, 2, page_token).await;

        // Assert
        let status = expect_error(result, Code::InvalidArgument, INVALID);
        assert_eq!(violation_fields(&status), ["page_token"], "{case}");
    }

    // Act + assert: the same token with the same filter works, for any caller it allows
    let next = app.list(&admin, "acme", 2, &token).await.expect("same");
    assert_eq!(next.policies.len(), 2);
    let next = app.list(&acme, "acme", 2, &token).await.expect("acme");
    assert_eq!(next.policies.len(), 2);
}

#[tokio::test]
async fn a_page_token_of_another_deployment_is_refused() {
    // Arrange
    let first = spawn_app().await;
    let second = spawn_app().await;
    create_many(&first, "acme", "a", 3).await;
    create_many(&second, "acme", "a", 3).await;
    let token = first
        .list(&first.admin_token(), "", 1, "")
        .await
        .expect("page")
        .next_page_token;

    // Act
    let result = second.list(&second.admin_token(), "", 1, &token).await;

    // Assert
    let status = expect_error(result, Code::InvalidArgument, INVALID);
    assert_eq!(violation_fields(&status), ["page_token"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_while_policies_are_inserted_skips_and_repeats_nothing() {
    // Arrange
    let app = spawn_app().await;
    let admin = app.admin_token();
    let mut db = app.database_connection().await;
    insert_directly(&mut db, "acme", "before", 40).await;
    let before: HashSet<String> = app
        .list_all(&admin, "", 500)
        .await
        .into_iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(before.len(), 40);

    // Act: one task pages three at a time while another inserts, through the API and straight
    // into the table (random ids, so some land before the cursor and some after)
    let (page_done, mut pages_done) = tokio::sync::mpsc::unbounded_channel::<()>();
    let inserter = {
        let client = app.client();
        let token = admin.clone();
        let database_url = app.database_url.clone();
        tokio::spawn(async move {
            let mut client = client;
            let mut db = <PgConnection as sqlx::Connection>::connect(&database_url)
                .await
                .expect("inserter connects");
            let mut inserted = 0;
            while pages_done.recv().await.is_some() {
                let request = sluice::proto::sluice::admin::v1::CreatePolicyRequest {
                    policy: Some(new_policy("globex", &format!("/during/{inserted}"), 10)),
                };
                client
                    .create_policy(crate::helpers::bearer(request, &token))
                    .await
                    .expect("insert during the walk");
                insert_directly(&mut db, "acme", &format!("during-{inserted}"), 2).await;
                inserted += 3;
            }
            inserted
        })
    };
    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = app.list(&admin, "", 3, &page_token).await.expect("page");
        seen.extend(page.policies.into_iter().map(|p| p.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
        page_done.send(()).expect("the inserter runs");
        tokio::task::yield_now().await;
    }
    drop(page_done);
    let inserted = inserter.await.expect("inserter");

    // Assert
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a policy came twice");
    let missing: Vec<&String> = before.iter().filter(|id| !unique.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "policies present before the walk were skipped: {missing:?}"
    );
    assert!(
        inserted >= 30,
        "the inserter ran during the walk ({inserted})"
    );
}

#[tokio::test]
async fn two_instances_on_one_database_share_policies_and_page_tokens() {
    // Arrange
    let first = spawn_app().await;
    let shared_secret = first.hs256_secret().to_owned();
    let second = try_spawn_app_on(&first.database_url, |settings| {
        settings.jwt_hs256_secret = Some(secret(&shared_secret));
    })
    .await
    .expect("a second instance starts");
    create_many(&first, "acme", "a", 4).await;
    let acme = first.token("acme");

    // Act
    let page = first.list(&acme, "", 2, "").await.expect("first page");
    let rest = second
        .list(&acme, "", 2, &page.next_page_token)
        .await
        .expect("the second instance continues the first's listing");

    // Assert
    assert_eq!(rest.policies.len(), 2);
    let all: HashSet<String> = page
        .policies
        .iter()
        .chain(rest.policies.iter())
        .map(|p| p.id.clone())
        .collect();
    assert_eq!(all.len(), 4);
    let one = &page.policies[0];
    assert_eq!(second.get(&acme, &one.id).await.expect("get"), *one);
}
