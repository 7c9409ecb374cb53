//! The policy-store contract: every test body here runs against both [`PolicyStore`]
//! implementations — PostgreSQL (a fresh, migrated database per test) and SQLite (a migrated file
//! in a temporary directory) — so the two can never drift apart. `contract_tests!` at the bottom
//! generates one `postgres::<name>` and one `sqlite::<name>` test per body.
//!
//! SQLite-only behaviour (the file surviving a restart, `open_store` creating it) follows at the
//! end.

mod support;

use std::{any::Any, collections::BTreeSet, path::Path, str::FromStr, sync::Arc, time::Duration};

use chrono::Utc;
use sluice::{
    domain::{
        EndpointPattern, Limits, NewPolicy, Policy, PolicyPatch, PolicyTenant, TenantId,
        TenantScope, policy::MaxPoliciesPerTenant,
    },
    settings::Settings,
    startup::open_store,
    store::{PolicyStore, StoreError, postgres::PgPolicyStore, sqlite::SqlitePolicyStore},
};
use sqlx::postgres::PgConnectOptions;

const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// A store under test, with whatever keeps its database alive (dropped after the store).
struct Subject {
    store: Arc<dyn PolicyStore>,
    _database: Box<dyn Any + Send>,
}

/// The cap on policies per tenant a contract body runs with: the default, or the one named in
/// `contract_tests!` as `body(cap)`.
fn policy_cap(named: &[u32]) -> MaxPoliciesPerTenant {
    named
        .first()
        .map_or_else(MaxPoliciesPerTenant::default, |&cap| {
            MaxPoliciesPerTenant::new(cap).expect("a valid cap")
        })
}

async fn postgres_subject(cap: MaxPoliciesPerTenant) -> Subject {
    let database = support::fresh_database().await;
    let options = PgConnectOptions::from_str(&database.url).expect("test database URL parses");
    let store =
        PgPolicyStore::connect_lazy(options, ACQUIRE_TIMEOUT).with_max_policies_per_tenant(cap);
    store.migrate().await.expect("PostgreSQL migrations apply");
    Subject {
        store: Arc::new(store),
        _database: Box::new(database),
    }
}

async fn sqlite_subject(cap: MaxPoliciesPerTenant) -> Subject {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let store = open_sqlite(&dir.path().join("sluice.db"))
        .await
        .with_max_policies_per_tenant(cap);
    Subject {
        store: Arc::new(store),
        _database: Box::new(dir),
    }
}

async fn open_sqlite(path: &Path) -> SqlitePolicyStore {
    let store = SqlitePolicyStore::open(path, ACQUIRE_TIMEOUT)
        .await
        .expect("open the SQLite database");
    store.migrate().await.expect("SQLite migrations apply");
    store
}

fn tenant(raw: &str) -> PolicyTenant {
    PolicyTenant::parse(raw).expect("valid tenant")
}

fn scope_of(raw: &str) -> TenantScope {
    TenantScope::tenant(TenantId::parse(raw).expect("valid tenant id")).expect("not reserved")
}

fn admin() -> TenantScope {
    TenantScope::platform_admin(None)
}

fn new_policy(tenant_id: &str, pattern: &str) -> NewPolicy {
    NewPolicy {
        tenant: tenant(tenant_id),
        pattern: EndpointPattern::parse(pattern).expect("valid pattern"),
        limits: Limits::new(100, 60, 0).expect("valid limits"),
        enabled: true,
        shadow: false,
    }
}

fn set_max(max_requests: u32) -> PolicyPatch {
    PolicyPatch {
        max_requests: Some(max_requests),
        ..Default::default()
    }
}

async fn create(store: &dyn PolicyStore, tenant_id: &str, pattern: &str) -> Policy {
    store
        .create(new_policy(tenant_id, pattern))
        .await
        .expect("create policy")
}

fn ids(policies: &[Policy]) -> Vec<String> {
    policies.iter().map(|p| p.id.to_string()).collect()
}

// ---------------------------------------------------------------------------------------------
// Contract bodies
// ---------------------------------------------------------------------------------------------

async fn create_then_get_round_trips_every_field(subject: Subject) {
    // Arrange
    let store = &*subject.store;
    let before = Utc::now();
    let new = NewPolicy {
        tenant: tenant("acme.corp_2-x"),
        pattern: EndpointPattern::parse("POST /v1/orders/*/items/**").expect("pattern"),
        limits: Limits::new(1_000_000, 2_678_400, 7).expect("limits"),
        enabled: false,
        shadow: true,
    };

    // Act
    let created = store.create(new.clone()).await.expect("create");
    let read = store.get(&admin(), created.id).await.expect("get");

    // Assert
    assert_eq!(read, created);
    assert_eq!(read.tenant, new.tenant);
    assert_eq!(read.pattern, new.pattern);
    assert_eq!(read.limits, new.limits);
    assert!(!read.enabled);
    assert!(read.shadow);
    assert_eq!(read.version, 1);
    assert_eq!(read.created_at, read.updated_at);
    let slack = chrono::Duration::seconds(60);
    assert!(read.created_at >= before - slack && read.created_at <= Utc::now() + slack);
    assert_eq!(
        read.created_at.timestamp_subsec_nanos() % 1_000,
        0,
        "timestamps are kept to the microsecond"
    );

    let default_policy = create(store, "*", "*").await;
    let read = store.get(&admin(), default_policy.id).await.expect("get *");
    assert_eq!(read.tenant, PolicyTenant::AllTenants);
    assert_eq!(read.pattern.as_str(), "*");
    assert!(read.enabled && !read.shadow);
}

async fn same_tenant_and_pattern_conflict_but_other_tenants_may_reuse_it(subject: Subject) {
    // Arrange
    let store = &*subject.store;
    create(store, "acme", "GET /v1/**").await;

    // Act
    let again = store.create(new_policy("acme", "GET /v1/**")).await;
    let other_tenant = store.create(new_policy("globex", "GET /v1/**")).await;
    let all_tenants = store.create(new_policy("*", "GET /v1/**")).await;

    // Assert
    match again {
        Err(StoreError::Conflict { tenant, pattern }) => {
            assert_eq!(tenant, "acme");
            assert_eq!(pattern, "GET /v1/**");
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert!(other_tenant.is_ok(), "{other_tenant:?}");
    assert!(all_tenants.is_ok(), "{all_tenants:?}");
    let all = store.list(&admin(), None, None, 100).await.expect("list");
    assert_eq!(all.len(), 3);
}

async fn another_tenants_policy_is_not_found_for_a_scoped_caller(subject: Subject) {
    // Arrange
    let store = &*subject.store;
    let theirs = create(store, "globex", "/v1/**").await;
    let default_policy = create(store, "*", "/v1/**").await;
    let acme = scope_of("acme");

    for target in [&theirs, &default_policy] {
        // Act
        let got = store.get(&acme, target.id).await;
        let updated = store.update(&acme, target.id, None, &set_max(5)).await;
        let deleted = store.delete(&acme, target.id, None).await;

        // Assert
        assert!(matches!(got, Err(StoreError::NotFound)), "{got:?}");
        assert!(matches!(updated, Err(StoreError::NotFound)), "{updated:?}");
        assert!(matches!(deleted, Err(StoreError::NotFound)), "{deleted:?}");
        let unchanged = store.get(&admin(), target.id).await.expect("still there");
        assert_eq!(&unchanged, target);
    }
    let own = create(store, "acme", "/v1/**").await;
    assert_eq!(store.get(&acme, own.id).await.expect("own policy"), own);
}

async fn a_platform_admin_sees_every_tenant(subject: Subject) {
    // Arrange
    let store = &*subject.store;
    let acme = create(store, "acme", "/a").await;
    let globex = create(store, "globex", "/a").await;
    let default_policy = create(store, "*", "/a").await;
    let admin_with_home =
        TenantScope::platform_admin(Some(TenantId::parse("acme").expect("tenant")));

    // Act
    let listed = store
        .list(&admin_with_home, None, None, 100)
        .await
        .expect("list");
    let updated = store
        .update(&admin_with_home, globex.id, None, &set_max(7))
        .await
        .expect("update another tenant's policy");

    // Assert
    assert_eq!(
        ids(&listed),
        ids(&[acme.clone(), globex.clone(), default_policy.clone()])
    );
    for policy in [&acme, &globex, &default_policy] {
        assert_eq!(
            store
                .get(&admin_with_home, policy.id)
                .await
                .expect("get")
                .id,
            policy.id
        );
    }
    assert_eq!(updated.limits.max_requests(), 7);
    store
        .delete(&admin_with_home, default_policy.id, None)
        .await
        .expect("delete the * policy");
}

async fn update_merges_fields_bumps_version_and_changes_etag(subject: Subject) {
    // Arrange
    let store = &*subject.store;
    let created = create(store, "acme", "/v1/**").await;
    let scope = scope_of("acme");

    // Act
    let first = store
        .update(&scope, created.id, Some(&created.etag()), &set_max(50))
        .await
        .expect("first update");
    let second = store
        .update(
            &scope,
            created.id,
            None,
            &PolicyPatch {
                pattern: Some(EndpointPattern::parse("GET /v2/*").expect("pattern")),
                burst_limit: Some(10),
                enabled: Some(false),
                shadow: Some(true),
                ..Default::default()
            },
        )
        .await
        .expect("second update");

    // Assert
    assert_eq!((first.version, second.version), (2, 3));
    let etags: BTreeSet<String> = [&created, &first, &second]
        .iter()
        .map(|p| p.etag())
        .collect();
    assert_eq!(etags.len(), 3, "every update changes the etag");
    assert!(created.updated_at < first.updated_at && first.updated_at < second.updated_at);
    assert_eq!(second.created_at, created.created_at);
    assert_eq!(first.limits.max_requests(), 50);
    assert_eq!(first.limits.window_seconds(), 60);
    assert_eq!(
        (
            second.pattern.as_str(),
            second.limits.max_requests(),
            second.limits.window_seconds(),
            second.limits.burst_limit(),
            second.enabled,
            second.shadow,
        ),
        ("GET /v2/*", 50, 60, 10, false, true)
    );
    assert_eq!(
        store.get(&scope, created.id).await.expect("get"),
        second,
        "the returned policy is what is stored"
    );
}

async fn a_stale_etag_is_refused_and_nothing_is_written(subject: Subject) {
    // Arrange
    let store = &*subject.store;
    let created = create(store, "acme", "/v1/**").await;
    let current = store
        .update(&admin(), created.id, None, &set_max(10))
        .await
        .expect("update");

    // Act
    let stale = store
        .update(&admin(), created.id, Some(&created.etag()), &set_max(20))
        .await;
    let garbage = store
        .update(&admin(), created.id, Some("not-an-etag"), &set_max(20))
        .await;

    // Assert
    match stale {
        Err(StoreError::EtagMismatch {
            given,
            current: now,
        }) => {
            assert_eq!(given, created.etag());
            assert_eq!(now, current.etag());
        }
        other => panic!("expected EtagMismatch, got {other:?}"),
    }
    assert!(
        matches!(garbage, Err(StoreError::EtagMismatch { .. })),
        "{garbage:?}"
    );
    assert_eq!(store.get(&admin(), created.id).await.expect("get"), current);
}

async fn an_update_whose_merge_is_invalid_writes_nothing(subject: Subject) {
    // Arrange
    let store = &*subject.store;
    let created = store
        .create(NewPolicy {
            limits: Limits::new(100, 60, 50).expect("limits"),
            ..new_policy("acme", "/v1/**")
        })
        .await
        .expect("create");

    // Act: lowering max_requests under the stored burst_limit.
    let result = store.update(&admin(), created.id, None, &set_max(10)).await;

    // Assert
    match result {
        Err(StoreError::Invalid(violations)) => {
            let fields: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
            assert_eq!(fields, ["policy.burst_limit"]);
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert_eq!(store.get(&admin(), created.id).await.expect("get"), created);
}

async fn an_update_into_a_taken_pattern_conflicts_and_writes_nothing(subject: Subject) {
    // Arrange
    let store = &*subject.store;
    create(store, "acme", "/taken").await;
    let moving = create(store, "acme", "/free").await;

    // Act
    let result = store
        .update(
            &scope_of("acme"),
            moving.id,
            None,
            &PolicyPatch {
                pattern: Some(EndpointPattern::parse("/taken").expect("pattern")),
                max_requests: Some(1),
                ..Default::default()
            },
        )
        .await;

    // Assert
    match result {
        Err(StoreError::Conflict { tenant, pattern }) => {
            assert_eq!((tenant.as_str(), pattern.as_str()), ("acme", "/taken"));
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert_eq!(store.get(&admin(), moving.id).await.expect("get"), moving);
}

async fn delete_checks_the_etag_and_removes_the_policy(subject: Subject) {
    // Arrange
    let store = &*subject.store;
    let created = create(store, "acme", "/v1/**").await;
    let updated = store
        .update(&admin(), created.id, None, &set_max(5))
        .await
        .expect("update");
    let other = create(store, "acme", "/v2/**").await;
    let scope = scope_of("acme");

    // Act
    let stale = store
        .delete(&scope, created.id, Some(&created.etag()))
        .await;
    let still_there = store.get(&scope, created.id).await;
    let fresh = store
        .delete(&scope, created.id, Some(&updated.etag()))
        .await;
    let again = store.delete(&scope, created.id, None).await;
    let without_etag = store.delete(&scope, other.id, None).await;

    // Assert
    assert!(
        matches!(stale, Err(StoreError::EtagMismatch { .. })),
        "{stale:?}"
    );
    assert_eq!(still_there.expect("kept after a stale delete"), updated);
    fresh.expect("delete with the current etag");
    assert!(matches!(again, Err(StoreError::NotFound)), "{again:?}");
    without_etag.expect("delete without an etag");
    assert!(matches!(
        store.get(&admin(), created.id).await,
        Err(StoreError::NotFound)
    ));
    assert!(
        store
            .list(&admin(), None, None, 100)
            .await
            .expect("list")
            .is_empty()
    );
}

async fn list_pages_in_creation_order_within_scope_and_filter(subject: Subject) {
    // Arrange
    let store = &*subject.store;
    let mut all = Vec::new();
    for (tenant_id, pattern) in [
        ("globex", "/a"),
        ("acme", "/a"),
        ("*", "/a"),
        ("acme", "/b"),
        ("globex", "/b"),
        ("acme", "/c"),
    ] {
        all.push(create(store, tenant_id, pattern).await);
    }
    let acme_only: Vec<Policy> = all
        .iter()
        .filter(|p| p.tenant.as_str() == "acme")
        .cloned()
        .collect();
    let acme = scope_of("acme");

    // Act
    let everything = store.list(&admin(), None, None, 100).await.expect("list");
    let first_page = store.list(&admin(), None, None, 4).await.expect("page 1");
    let cursor = first_page.last().map(|p| p.id);
    let second_page = store.list(&admin(), None, cursor, 4).await.expect("page 2");
    let past_the_end = store
        .list(&admin(), None, second_page.last().map(|p| p.id), 4)
        .await
        .expect("page 3");
    let filtered = store
        .list(&admin(), Some(&tenant("acme")), None, 100)
        .await
        .expect("tenant filter");
    let defaults = store
        .list(&admin(), Some(&tenant("*")), None, 100)
        .await
        .expect("* filter");
    let scoped = store.list(&acme, None, None, 100).await.expect("scoped");
    let scoped_page = store
        .list(&acme, None, Some(acme_only[0].id), 1)
        .await
        .expect("scoped page");
    let scoped_asking_for_others = store
        .list(&acme, Some(&tenant("globex")), None, 100)
        .await
        .expect("scoped list of another tenant");

    // Assert
    assert_eq!(everything, all);
    assert_eq!(ids(&first_page), ids(&all[..4]));
    assert_eq!(ids(&second_page), ids(&all[4..]));
    assert!(past_the_end.is_empty());
    assert_eq!(ids(&filtered), ids(&acme_only));
    assert_eq!(ids(&defaults), ids(&all[2..3]));
    assert_eq!(ids(&scoped), ids(&acme_only));
    assert_eq!(ids(&scoped_page), ids(&acme_only[1..2]));
    assert!(scoped_asking_for_others.is_empty());
}

async fn a_shared_secret_is_kept_from_the_first_caller(subject: Subject) {
    // Arrange: two instances starting on one database each bring their own random candidate
    let first_candidate = [1u8; 32];
    let second_candidate = [2u8; 32];

    // Act
    let first = subject
        .store
        .shared_secret("page_tokens", &first_candidate)
        .await
        .expect("first instance");
    let second = subject
        .store
        .shared_secret("page_tokens", &second_candidate)
        .await
        .expect("second instance");
    let other = subject
        .store
        .shared_secret("something_else", &second_candidate)
        .await
        .expect("another secret");

    // Assert: both instances sign with the first candidate; names are independent
    assert_eq!(first, first_candidate);
    assert_eq!(second, first_candidate);
    assert_eq!(other, second_candidate);
}

async fn load_enabled_skips_disabled_policies(subject: Subject) {
    // Arrange
    let store = &*subject.store;
    let on = create(store, "acme", "/on").await;
    let off = store
        .create(NewPolicy {
            enabled: false,
            ..new_policy("acme", "/off")
        })
        .await
        .expect("create disabled");
    let turned_off = create(store, "*", "/later-off").await;
    let turned_on = store
        .create(NewPolicy {
            enabled: false,
            ..new_policy("globex", "/later-on")
        })
        .await
        .expect("create disabled");
    let disable = PolicyPatch {
        enabled: Some(false),
        ..Default::default()
    };
    let enable = PolicyPatch {
        enabled: Some(true),
        ..Default::default()
    };
    store
        .update(&admin(), turned_off.id, None, &disable)
        .await
        .expect("disable");
    let turned_on = store
        .update(&admin(), turned_on.id, None, &enable)
        .await
        .expect("enable");

    // Act
    let loaded = store.load_enabled().await.expect("load_enabled");

    // Assert
    assert_eq!(ids(&loaded), ids(&[on, turned_on]));
    assert!(!loaded.iter().any(|p| p.id == off.id));
}

async fn ids_sort_in_creation_order(subject: Subject) {
    // Arrange
    let store = &*subject.store;
    let mut created = Vec::new();

    // Act: many creates within the same milliseconds.
    for n in 0..40 {
        created.push(create(store, "acme", &format!("/p{n}")).await.id);
    }
    let listed = store.list(&admin(), None, None, 100).await.expect("list");

    // Assert
    let listed: Vec<_> = listed.iter().map(|p| p.id).collect();
    assert_eq!(listed, created);
    let mut sorted = created.clone();
    sorted.sort();
    assert_eq!(sorted, created);
}

async fn concurrent_updates_without_etag_all_succeed(subject: Subject) {
    // Arrange
    let created = create(&*subject.store, "acme", "/hot").await;
    let mut tasks = tokio::task::JoinSet::new();

    // Act
    for n in 1..=20u32 {
        let store = subject.store.clone();
        tasks.spawn(async move {
            store
                .update(&scope_of("acme"), created.id, None, &set_max(n))
                .await
        });
    }
    let mut results = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        results.push(
            joined
                .expect("update task")
                .expect("every concurrent update succeeds"),
        );
    }

    // Assert
    assert_updates_serialised(&created, results);
    let last = subject.store.get(&admin(), created.id).await.expect("get");
    assert_eq!(last.version, 21);
}

// Bodies below run with a cap of 3 policies per tenant (see `contract_tests!`).

/// Asserts `result` is the cap refusal for `tenant` at 3 policies.
#[track_caller]
fn assert_policy_limit(result: Result<Policy, StoreError>, tenant: &str) {
    match result {
        Err(StoreError::PolicyLimit {
            tenant: t,
            limit: 3,
        }) if t == tenant => {}
        other => panic!("expected PolicyLimit for {tenant} at 3, got {other:?}"),
    }
}

async fn the_policy_cap_bounds_each_tenant_and_frees_a_slot_on_delete(subject: Subject) {
    // Arrange: three policies for acme, one disabled (disabled policies count too), three for `*`.
    let store = &*subject.store;
    let first = create(store, "acme", "/a").await;
    create(store, "acme", "/b").await;
    let mut disabled = new_policy("acme", "/c");
    disabled.enabled = false;
    store.create(disabled).await.expect("third policy");
    for pattern in ["/a", "/b", "/c"] {
        create(store, "*", pattern).await;
    }

    // Act
    let fourth = store.create(new_policy("acme", "/d")).await;
    let fourth_default = store.create(new_policy("*", "/d")).await;
    let other_tenant = store.create(new_policy("globex", "/d")).await;
    store
        .delete(&scope_of("acme"), first.id, None)
        .await
        .expect("delete");
    let after_delete = store.create(new_policy("acme", "/d")).await;

    // Assert
    assert_policy_limit(fourth, "acme");
    assert_policy_limit(fourth_default, "*");
    other_tenant.expect("another tenant is unaffected");
    after_delete.expect("deleting a policy frees a slot");
    let acme = store
        .list(&scope_of("acme"), None, None, 100)
        .await
        .expect("list");
    let patterns: Vec<String> = acme.iter().map(|p| p.pattern.to_string()).collect();
    assert_eq!(patterns, ["/b", "/c", "/d"]);
    assert_policy_limit(store.create(new_policy("acme", "/e")).await, "acme");
}

async fn concurrent_creates_never_pass_the_policy_cap(subject: Subject) {
    // Arrange
    let mut tasks = tokio::task::JoinSet::new();

    // Act: ten creates for one tenant at once, each for its own pattern.
    for n in 0..10 {
        let store = subject.store.clone();
        tasks.spawn(async move { store.create(new_policy("acme", &format!("/p{n}"))).await });
    }
    let (mut created, mut refused) = (0, 0);
    while let Some(joined) = tasks.join_next().await {
        match joined.expect("create task") {
            Ok(_) => created += 1,
            Err(StoreError::PolicyLimit { .. }) => refused += 1,
            Err(other) => panic!("unexpected error: {other:?}"),
        }
    }

    // Assert
    assert_eq!((created, refused), (3, 7));
    let stored = subject
        .store
        .list(&admin(), Some(&tenant("acme")), None, 100)
        .await
        .expect("list");
    assert_eq!(stored.len(), 3);
}

/// Checks that `updates` of `created` were applied one after another: versions 2, 3, … with no
/// gaps, and `updated_at` (hence the etag) strictly increasing with the version.
fn assert_updates_serialised(created: &Policy, mut updates: Vec<Policy>) {
    updates.sort_by_key(|p| p.version);
    let versions: Vec<i64> = updates.iter().map(|p| p.version).collect();
    let expected: Vec<i64> = (2..).take(updates.len()).collect();
    assert_eq!(versions, expected);
    let mut previous = created.updated_at;
    for update in &updates {
        assert!(
            update.updated_at > previous,
            "version {} has updated_at {} not after {previous}",
            update.version,
            update.updated_at
        );
        previous = update.updated_at;
    }
    let etags: BTreeSet<String> = updates.iter().map(Policy::etag).collect();
    assert_eq!(etags.len(), updates.len());
}

/// One `postgres::<name>` and one `sqlite::<name>` test per contract body; `name(cap)` runs the
/// body on stores capped at `cap` policies per tenant.
macro_rules! contract_tests {
    ($($name:ident $(($cap:expr))?),+ $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let cap = super::policy_cap(&[$($cap)?]);
                    super::$name(super::postgres_subject(cap).await).await;
                }
            )+
        }

        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let cap = super::policy_cap(&[$($cap)?]);
                    super::$name(super::sqlite_subject(cap).await).await;
                }
            )+
        }
    };
}

contract_tests!(
    create_then_get_round_trips_every_field,
    same_tenant_and_pattern_conflict_but_other_tenants_may_reuse_it,
    another_tenants_policy_is_not_found_for_a_scoped_caller,
    a_platform_admin_sees_every_tenant,
    update_merges_fields_bumps_version_and_changes_etag,
    a_stale_etag_is_refused_and_nothing_is_written,
    an_update_whose_merge_is_invalid_writes_nothing,
    an_update_into_a_taken_pattern_conflicts_and_writes_nothing,
    delete_checks_the_etag_and_removes_the_policy,
    list_pages_in_creation_order_within_scope_and_filter,
    load_enabled_skips_disabled_policies,
    ids_sort_in_creation_order,
    concurrent_updates_without_etag_all_succeed,
    a_shared_secret_is_kept_from_the_first_caller,
    the_policy_cap_bounds_each_tenant_and_frees_a_slot_on_delete(3),
    concurrent_creates_never_pass_the_policy_cap(3),
);

// ---------------------------------------------------------------------------------------------
// SQLite only
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn sqlite_policies_survive_a_restart() {
    // Arrange
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("sluice.db");
    let first = open_sqlite(&path).await;
    let kept = first
        .create(new_policy("acme", "GET /v1/**"))
        .await
        .expect("create");
    let kept = first
        .update(&admin(), kept.id, None, &set_max(42))
        .await
        .expect("update");
    let removed = first
        .create(new_policy("acme", "/gone"))
        .await
        .expect("create");
    first
        .delete(&admin(), removed.id, None)
        .await
        .expect("delete");
    first.close().await;

    // Act
    let reopened = open_sqlite(&path).await;

    // Assert
    assert_eq!(
        reopened
            .list(&admin(), None, None, 100)
            .await
            .expect("list"),
        vec![kept.clone()]
    );
    let bumped = reopened
        .update(&admin(), kept.id, Some(&kept.etag()), &set_max(43))
        .await
        .expect("the etag from before the restart still works");
    assert_eq!(bumped.version, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_writers_in_two_processes_serialise() {
    // Arrange: two stores on one file stand for two Sluice processes sharing it.
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("sluice.db");
    let first: Arc<dyn PolicyStore> = Arc::new(open_sqlite(&path).await);
    let second: Arc<dyn PolicyStore> = Arc::new(open_sqlite(&path).await);
    let created = create(&*first, "acme", "/shared").await;
    let mut tasks = tokio::task::JoinSet::new();

    // Act
    for n in 1..=20u32 {
        let store = if n % 2 == 0 {
            first.clone()
        } else {
            second.clone()
        };
        tasks.spawn(async move { store.update(&admin(), created.id, None, &set_max(n)).await });
    }
    let mut results = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        results.push(
            joined
                .expect("update task")
                .expect("every update succeeds, whichever process makes it"),
        );
    }

    // Assert
    assert_updates_serialised(&created, results);
    assert_eq!(
        second.get(&admin(), created.id).await.expect("get").version,
        21
    );
}

#[tokio::test]
async fn sqlite_rejects_rows_the_api_would_refuse() {
    // Arrange
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("sluice.db");
    open_sqlite(&path).await.close().await;
    let pool =
        sqlx::SqlitePool::connect_with(sqlx::sqlite::SqliteConnectOptions::new().filename(&path))
            .await
            .expect("open the file directly");
    let insert = |tenant_id: &'static str, max: i64, burst: i64| {
        sqlx::query(
            "INSERT INTO rate_policies (id, tenant_id, endpoint_pattern, max_requests, \
             window_seconds, burst_limit, created_at, updated_at) \
             VALUES (randomblob(16), ?1, '/x', ?2, 60, ?3, 0, 0)",
        )
        .bind(tenant_id)
        .bind(max)
        .bind(burst)
        .execute(&pool)
    };

    // Act / Assert
    insert("acme", 10, 10).await.expect("a valid row");
    insert("*", 10, 0).await.expect("the * tenant");
    for (tenant_id, max, burst) in [
        ("acme corp", 10, 0),
        ("ac*me", 10, 0),
        ("", 10, 0),
        ("acme", 0, 0),
        ("acme", 1_000_001, 0),
        ("acme", 10, 11),
    ] {
        let result = insert(tenant_id, max, burst).await;
        assert!(
            result.is_err(),
            "({tenant_id:?}, {max}, {burst}) was accepted"
        );
    }
    let too_long = "x".repeat(65);
    let result = sqlx::query(
        "INSERT INTO rate_policies (id, tenant_id, endpoint_pattern, max_requests, \
         window_seconds, burst_limit, created_at, updated_at) \
         VALUES (randomblob(16), ?1, '/y', 1, 60, 0, 0, 0)",
    )
    .bind(&too_long)
    .execute(&pool)
    .await;
    assert!(result.is_err(), "a 65-character tenant was accepted");
    pool.close().await;
}

#[tokio::test]
async fn open_store_creates_the_sqlite_file_and_its_schema() {
    // Arrange
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("fresh.db");
    let mut settings = Settings::defaults();
    settings.database_url =
        sluice::settings::SecretString::new(format!("sqlite://{}", path.display()));

    // Act
    let opened = open_store(&settings, true).await.expect("open_store");
    let created = opened
        .store
        .create(new_policy("acme", "/v1/**"))
        .await
        .expect("create in the new file");

    // Assert
    assert!(path.exists(), "{} was not created", path.display());
    assert!(opened.listen.is_none(), "SQLite has no LISTEN/NOTIFY");
    assert_eq!(
        opened.store.load_enabled().await.expect("load"),
        vec![created]
    );
}
