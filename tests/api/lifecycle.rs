//! The service around the API: gRPC health, HTTP `/healthz`, `/readyz` and `/metrics`, graceful
//! shutdown with a call in flight, and the answers while the test's own database is unreachable.

use std::time::{Duration, Instant};

use sqlx::{AssertSqlSafe, Connection, PgConnection};
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    helpers::{TestApp, expect_error, http_get, new_policy, spawn_app, spawn_app_with},
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
         WHERE datname = $1 AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
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
    let mut raised = existing.clone();
    raised.max_requests = 99;
    let started = Instant::now();
    let update = app.update(&acme, raised, &["max_requests"]).await;
    took.push(started.elapsed());
    let started = Instant::now();
    let delete = app.delete(&acme, &existing.id, "").await;
    took.push(started.elapsed());
    let health = health_status(&app, "").await;
    let healthz = http_get(app.http_addr, "/healthz").await;
    reconnect(&mut admin, &database).await;

    // Assert: UNAVAILABLE, quickly, without internals; the server itself keeps answering
    for (rpc, result) in [
        ("CreatePolicy", create.map(|_| ())),
        ("GetPolicy", get.map(|_| ())),
        ("ListPolicies", list.map(|_| ())),
        ("UpdatePolicy", update.map(|_| ())),
        ("DeletePolicy", delete),
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
    assert_eq!(
        fetched, existing,
        "the failed update and delete changed nothing"
    );
    app.create_ok(&acme, new_policy("acme", "/v2/**", 10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_database_answers_unavailable_and_keeps_nothing_half_done() {
    // Arrange: the database accepts connections, but a lock held by the test makes every query
    // on the policies table wait, as a stuck migration or a hung peer would.
    let app = spawn_app().await;
    let acme = app.token("acme");
    let existing = app.create_ok(&acme, new_policy("acme", "/v1/**", 10)).await;
    let mut locker = lock_the_policies_table(&app).await;

    // Act: a create and an update wait behind the lock; the lock is held past the store
    // deadline, then released, so anything still queued inside the database could run then
    let mut raised = existing.clone();
    raised.max_requests = 99;
    let started = Instant::now();
    let answered = tokio::time::timeout(Duration::from_secs(15), async {
        tokio::join!(
            async {
                let result = app.create(&acme, new_policy("acme", "/v2/**", 10)).await;
                (result, started.elapsed())
            },
            async {
                let result = app.update(&acme, raised, &["max_requests"]).await;
                (result, started.elapsed())
            },
        )
    })
    .await;
    tokio::time::sleep(Duration::from_secs(6).saturating_sub(started.elapsed())).await;
    sqlx::query("COMMIT")
        .execute(&mut locker)
        .await
        .expect("release the lock");
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Assert: both UNAVAILABLE within the store deadline, not a hang; and neither write landed,
    // not even once the lock was gone
    let ((create, create_took), (update, update_took)) =
        answered.expect("the calls answered instead of hanging on the stalled database");
    expect_error(create, Code::Unavailable, "STORE_UNAVAILABLE");
    expect_error(update, Code::Unavailable, "STORE_UNAVAILABLE");
    for took in [create_took, update_took] {
        assert!(
            took >= Duration::from_secs(3) && took < Duration::from_secs(9),
            "each call gave up at the statement timeout or store deadline, took {took:?}"
        );
    }
    assert_eq!(app.list_all(&acme, "", 0).await, vec![existing]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_a_call_in_flight_finish_then_stops() {
    // Arrange: a table lock held by the test makes the next List wait inside the database
    let mut app = spawn_app().await;
    let acme = app.token("acme");
    let created = app.create_ok(&acme, new_policy("acme", "/v1/**", 10)).await;
    let mut locker = lock_the_policies_table(&app).await;
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
    // The HTTP listener answers until the drain is over, so probes see the instance leave.
    let readyz = readyz_while_draining.expect("/readyz answers while calls in flight finish");
    assert_eq!(readyz.status, 503, "ready while shutting down: {readyz:?}");
    let listed = listed.expect("the call in flight succeeds").into_inner();
    assert_eq!(listed.policies, vec![created]);
    result.expect("a clean exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_tells_health_watchers_not_serving_and_does_not_wait_on_them_forever() {
    // Arrange: a client watching health (grpc-go's client-side health checking does this); its
    // stream never ends by itself
    let app = spawn_app_with(|settings| settings.shutdown_grace_seconds = 1).await;
    let mut watch = HealthClient::new(app.channel.clone())
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watch health")
        .into_inner();
    let first = watch.message().await.expect("first update");

    // Act
    let started = Instant::now();
    let stopped = tokio::spawn(app.shutdown());
    let next = tokio::time::timeout(Duration::from_secs(5), watch.message()).await;
    let result = tokio::time::timeout(Duration::from_secs(10), stopped).await;

    // Assert: the watcher hears NOT_SERVING first, then the server stops after the grace period
    assert_eq!(
        first.map(|m| m.status()),
        Some(ServingStatus::Serving),
        "serving before shutdown"
    );
    let next = next
        .expect("an update soon after shutdown")
        .expect("the update arrives on the stream");
    assert_eq!(next.map(|m| m.status()), Some(ServingStatus::NotServing));
    result
        .expect("the server stopped although a Watch stream was still open")
        .expect("the shutdown task")
        .expect("a clean exit");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stopped after the 1 s grace period, took {:?}",
        started.elapsed()
    );
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

/// A connection of the test's own holding `rate_policies` in ACCESS EXCLUSIVE mode inside an open
/// transaction: every query of the app on that table waits until the test sends COMMIT.
async fn lock_the_policies_table(app: &TestApp) -> PgConnection {
    let mut locker = app.database_connection().await;
    sqlx::query("BEGIN")
        .execute(&mut locker)
        .await
        .expect("begin");
    sqlx::query("LOCK TABLE rate_policies IN ACCESS EXCLUSIVE MODE")
        .execute(&mut locker)
        .await
        .expect("lock the table");
    locker
}
