//! The service around the API: gRPC health, HTTP `/healthz`, `/readyz` and `/metrics`, graceful
//! shutdown with a call in flight, and the answers while the test's own database is unreachable.

use std::time::{Duration, Instant};

use sqlx::{AssertSqlSafe, Connection, PgConnection};
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    helpers::{TestApp, expect_error, http_get, new_policy, spawn_app},
    support,
};

async fn health_status(app: &TestApp, service: &str) -> Result<ServingStatus, tonic::Status> {
    let response = HealthClient::new(app.channel.clone())
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await?;
    Ok(response.into_inner().status())
}

#[tokio::test]
async fn grpc_health_reports_serving() {
    // Arrange
    let app = spawn_app().await;

    // Act
    let overall = health_status(&app, "").await;
    let admin = health_status(&app, "sluice.admin.v1.PolicyService").await;

    // Assert
    assert_eq!(overall.expect("overall health"), ServingStatus::Serving);
    assert_eq!(admin.expect("admin health"), ServingStatus::Serving);
}

#[tokio::test]
async fn http_reports_alive_ready_and_metrics() {
    // Arrange
    let app = spawn_app().await;
    let acme = app.token("acme");
    app.create_ok(&acme, new_policy("acme", "/v1/**", 10)).await;

    // Act
    let healthz = http_get(app.http_addr, "/healthz").await.expect("/healthz");
    let readyz = http_get(app.http_addr, "/readyz").await.expect("/readyz");
    let metrics = http_get(app.http_addr, "/metrics").await.expect("/metrics");
    let unknown = http_get(app.http_addr, "/nope").await.expect("/nope");

    // Assert
    assert_eq!(healthz.status, 200, "{healthz:?}");
    assert_eq!(readyz.status, 200, "{readyz:?}");
    assert_eq!(metrics.status, 200);
    assert!(metrics.body.contains("sluice_policies"), "{}", metrics.body);
    assert!(
        metrics.body.contains("sluice_grpc_requests_total"),
        "{}",
        metrics.body
    );
    assert_eq!(unknown.status, 404);
}

/// Makes the app's database refuse connections and drops the ones it has, without touching any
/// other test's database.
async fn cut_off(admin: &mut PgConnection, database: &str) {
    sqlx::query(AssertSqlSafe(format!(
        "ALTER DATABASE \"{database}\" WITH ALLOW_CONNECTIONS false"
    )))
    .execute(&mut *admin)
    .await
    .expect("disallow connections");
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(database)
    .execute(&mut *admin)
    .await
    .expect("terminate the database's connections");
}

async fn reconnect(admin: &mut PgConnection, database: &str) {
    sqlx::query(AssertSqlSafe(format!(
        "ALTER DATABASE \"{database}\" WITH ALLOW_CONNECTIONS true"
    )))
    .execute(&mut *admin)
    .await
    .expect("allow connections again");
}

#[tokio::test]
async fn a_database_outage_answers_unavailable_and_recovers() {
    // Arrange
    let app = spawn_app().await;
    let acme = app.token("acme");
    let existing = app.create_ok(&acme, new_policy("acme", "/v1/**", 10)).await;
    let database = app
        .database()
        .expect("the app owns its database")
        .name
        .clone();
    let mut admin = PgConnection::connect(&support::postgres_admin_url().await)
        .await
        .expect("admin connection");

    // Act
    cut_off(&mut admin, &database).await;
    let mut took = Vec::new();
    let started = Instant::now();
    let create = app.create(&acme, new_policy("acme", "/v2/**", 10)).await;
    took.push(started.elapsed());
    let started = Instant::now();
    let get = app.get(&acme, &existing.id).await;
    took.push(started.elapsed());
    let started = Instant::now();
    let list = app.list(&acme, "", 0, "").await;
    took.push(started.elapsed());
    let health = health_status(&app, "").await;
    let healthz = http_get(app.http_addr, "/healthz").await;
    reconnect(&mut admin, &database).await;

    // Assert: UNAVAILABLE, quickly, without internals; the server itself keeps answering
    for (rpc, result) in [
        ("CreatePolicy", create.map(|_| ())),
        ("GetPolicy", get.map(|_| ())),
        ("ListPolicies", list.map(|_| ())),
    ] {
        let status = expect_error(result, Code::Unavailable, "STORE_UNAVAILABLE");
        assert!(
            !status.message().contains(&database),
            "{rpc} leaks internals: {status:?}"
        );
    }
    assert!(
        took.iter().all(|t| *t < Duration::from_secs(5)),
        "each call answers within a few seconds: {took:?}"
    );
    assert_eq!(health.expect("health answers"), ServingStatus::Serving);
    assert_eq!(healthz.expect("/healthz answers").status, 200);

    // Act + assert: once the database is back, calls succeed again (the pool reconnects)
    let deadline = Instant::now() + Duration::from_secs(10);
    let fetched = loop {
        match app.get(&acme, &existing.id).await {
            Ok(policy) => break policy,
            Err(status) if Instant::now() < deadline => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("still failing after the database came back: {status:?}"),
        }
    };
    assert_eq!(fetched, existing);
    app.create_ok(&acme, new_policy("acme", "/v2/**", 10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_a_call_in_flight_finish_then_stops() {
    // Arrange: a table lock held by the test makes the next List wait inside the database
    let mut app = spawn_app().await;
    let acme = app.token("acme");
    let created = app.create_ok(&acme, new_policy("acme", "/v1/**", 10)).await;
    let mut locker = app.database_connection().await;
    sqlx::query("BEGIN")
        .execute(&mut locker)
        .await
        .expect("begin");
    sqlx::query("LOCK TABLE rate_policies IN ACCESS EXCLUSIVE MODE")
        .execute(&mut locker)
        .await
        .expect("lock the table");
    let slow_list = {
        let app_client = app.client();
        let token = acme.clone();
        tokio::spawn(async move {
            let mut client = app_client;
            client
                .list_policies(crate::helpers::bearer(
                    sluice::proto::sluice::admin::v1::ListPoliciesRequest::default(),
                    &token,
                ))
                .await
        })
    };
    wait_for_a_blocked_query(&mut locker).await;

    // Act: shut down while the List waits
    app.request_shutdown();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopped_early = app.server_finished();
    let readyz_while_draining = http_get(app.http_addr, "/readyz").await;
    sqlx::query("COMMIT")
        .execute(&mut locker)
        .await
        .expect("release the lock");
    let listed = tokio::time::timeout(Duration::from_secs(10), slow_list)
        .await
        .expect("the call in flight completes")
        .expect("the call's task");
    let result = app.shutdown().await;

    // Assert
    assert!(!stopped_early, "the server stopped with a call in flight");
    if let Ok(readyz) = readyz_while_draining {
        assert_ne!(readyz.status, 200, "ready while shutting down: {readyz:?}");
    }
    let listed = listed.expect("the call in flight succeeds").into_inner();
    assert_eq!(listed.policies, vec![created]);
    result.expect("a clean exit");
}

#[tokio::test]
async fn after_shutdown_the_ports_are_closed() {
    // Arrange
    let app = spawn_app().await;
    let grpc = app.grpc_addr;
    let http = app.http_addr;
    health_status(&app, "").await.expect("serving first");

    // Act
    app.shutdown().await.expect("a clean exit");

    // Assert
    assert!(tokio::net::TcpStream::connect(grpc).await.is_err());
    assert!(tokio::net::TcpStream::connect(http).await.is_err());
}

/// Waits until the List query (the one with a LIMIT) of the test database waits on a lock.
async fn wait_for_a_blocked_query(locker: &mut PgConnection) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // Inside the locker's transaction the activity view is a snapshot taken at its first
        // read (stats_fetch_consistency); clear it so each poll sees the present.
        sqlx::query("SELECT pg_stat_clear_snapshot()")
            .execute(&mut *locker)
            .await
            .expect("clear the statistics snapshot");
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock' \
               AND query LIKE '%ORDER BY id LIMIT%'",
        )
        .fetch_one(&mut *locker)
        .await
        .expect("read pg_stat_activity");
        if waiting > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the List never reached the lock");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
