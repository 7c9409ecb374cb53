//! Proves the shared test fixtures in `tests/support/` do what the other test binaries rely on.

mod support;

use std::time::Duration;

use fred::prelude::{Builder, ClientLike, Config, KeysInterface};
use sqlx::{Connection, PgConnection};

async fn database_exists(admin_url: &str, name: &str) -> bool {
    let mut admin = PgConnection::connect(admin_url)
        .await
        .expect("connect to the admin database");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
        .bind(name)
        .fetch_one(&mut admin)
        .await
        .expect("query pg_database");
    count == 1
}

#[tokio::test]
async fn two_fresh_databases_are_distinct_and_usable() {
    // Arrange
    let first = support::fresh_database().await;
    let second = support::fresh_database().await;

    // Act
    let mut first_conn = PgConnection::connect(&first.url).await.expect("connect");
    let mut second_conn = PgConnection::connect(&second.url).await.expect("connect");
    sqlx::query("CREATE TABLE marker (v int)")
        .execute(&mut first_conn)
        .await
        .expect("create a table in the first database");
    sqlx::query("INSERT INTO marker VALUES (7)")
        .execute(&mut first_conn)
        .await
        .expect("insert into it");

    // Assert
    assert_ne!(first.name, second.name);
    let first_name: String = sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(&mut first_conn)
        .await
        .expect("current_database");
    assert_eq!(first_name, first.name);
    let second_name: String = sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(&mut second_conn)
        .await
        .expect("current_database");
    assert_eq!(second_name, second.name);
    let stored: i32 = sqlx::query_scalar("SELECT v FROM marker")
        .fetch_one(&mut first_conn)
        .await
        .expect("read back");
    assert_eq!(stored, 7);
    let in_second: Option<String> = sqlx::query_scalar("SELECT to_regclass('marker')::text")
        .fetch_one(&mut second_conn)
        .await
        .expect("look up the table in the second database");
    assert_eq!(in_second, None, "databases must not share tables");
}

#[tokio::test]
async fn dropping_a_test_database_removes_it_even_with_a_connection_open() {
    // Arrange
    let database = support::fresh_database().await;
    let name = database.name.clone();
    let admin_url = support::postgres_admin_url().await;
    let open_connection = PgConnection::connect(&database.url).await.expect("connect");
    assert!(database_exists(&admin_url, &name).await);

    // Act
    drop(database);

    // Assert
    assert!(!database_exists(&admin_url, &name).await);
    drop(open_connection);
}

#[tokio::test]
async fn a_private_postgres_server_starts_from_the_installed_binaries_and_stops_on_drop() {
    // Arrange
    let server = support::start_private_postgres().await;
    let root = server.root_dir().to_path_buf();
    let port = server.port;

    // Act
    let mut conn = PgConnection::connect(&server.url)
        .await
        .expect("connect to the private server");
    sqlx::query("CREATE DATABASE scratch")
        .execute(&mut conn)
        .await
        .expect("the admin URL can create databases");
    let _ = conn.close().await;
    drop(server);

    // Assert
    assert!(!root.exists(), "the server's directory is removed");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the server no longer listens"
    );
}

#[tokio::test]
async fn the_shared_redis_serves_a_real_client_within_a_unique_prefix() {
    // Arrange
    let url = support::redis_url().await;
    let prefix = support::unique_redis_prefix();
    let key = format!("{prefix}{{tenant-a}}:probe");
    let client = Builder::from_config(Config::from_url(&url).expect("parse the Redis URL"))
        .build()
        .expect("build a client");
    client.init().await.expect("connect to Redis");

    // Act
    let _: () = client
        .set(&key, "hello", None, None, false)
        .await
        .expect("SET");
    let value: Option<String> = client.get(&key).await.expect("GET");
    let _: i64 = client.del(&key).await.expect("DEL");

    // Assert
    assert_eq!(value.as_deref(), Some("hello"));
    assert!(prefix.starts_with("sluice-test:") && prefix.ends_with(':'));
    assert!(!prefix.contains('{') && !prefix.contains('}'));
    assert_ne!(prefix, support::unique_redis_prefix());
    let _ = client.quit().await;
}

#[tokio::test]
async fn a_frozen_redis_stops_answering_until_thawed() {
    // Arrange
    let redis = support::OwnedRedis::start().await;
    support::redis_ping(&redis.url, Duration::from_secs(2))
        .await
        .expect("a new server answers");

    // Act
    redis.freeze();
    let while_frozen = support::redis_ping(&redis.url, Duration::from_millis(300)).await;
    redis.thaw();
    let after_thaw = support::redis_ping(&redis.url, Duration::from_secs(2)).await;

    // Assert
    assert!(while_frozen.is_err(), "a frozen server must not answer");
    assert_eq!(after_thaw, Ok(()));
}

#[tokio::test]
async fn a_killed_redis_answers_again_after_restart_on_the_same_port() {
    // Arrange
    let mut redis = support::OwnedRedis::start().await;
    let url = redis.url.clone();

    // Act
    redis.kill();
    let while_dead = support::redis_ping(&url, Duration::from_millis(500)).await;
    redis.restart().await;
    let after_restart = support::redis_ping(&url, Duration::from_secs(2)).await;

    // Assert
    assert!(while_dead.is_err(), "a killed server must not answer");
    assert_eq!(redis.url, url);
    assert_eq!(after_restart, Ok(()));
}

#[test]
fn a_free_port_can_be_bound() {
    let port = support::free_port();
    assert_ne!(port, 0);
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("the port is free");
}

#[test]
fn grpcurl_and_envoy_resolve_to_runnable_binaries() {
    let grpcurl = std::process::Command::new(support::grpcurl_path())
        .arg("-version")
        .output()
        .expect("run grpcurl");
    let envoy = std::process::Command::new(support::envoy_path())
        .arg("--version")
        .output()
        .expect("run envoy");

    let grpcurl_says = String::from_utf8_lossy(&grpcurl.stderr).to_string()
        + &String::from_utf8_lossy(&grpcurl.stdout);
    assert!(
        grpcurl_says.contains("1.8.6"),
        "grpcurl said: {grpcurl_says}"
    );
    assert!(
        String::from_utf8_lossy(&envoy.stdout).contains("1.39.3"),
        "envoy said: {}",
        String::from_utf8_lossy(&envoy.stdout)
    );
}

/// Whether the process with `pid` (a host pid: containers share the host's process namespace)
/// runs in a Docker container, by its cgroup.
fn runs_in_a_container(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_else(|e| panic!("cannot read the cgroup of the server process {pid}: {e}"))
        .contains("docker")
}

#[tokio::test]
async fn the_shared_servers_come_from_where_the_documented_order_says() {
    // Arrange: where each server should come from (support/mod.rs)
    let expected = |url_variable: &str| match std::env::var(url_variable) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => None,
    };
    let given_redis = expected("SLUICE_TEST_REDIS_URL");
    let given_postgres = expected("SLUICE_TEST_DATABASE_URL");
    let containers = support::use_containers();

    // Act
    let redis_url = support::redis_url().await;
    let postgres_url = support::postgres_admin_url().await;

    // Assert: a given URL is used as given; otherwise a container exactly when an engine answers
    match given_redis {
        Some(url) => assert_eq!(redis_url, url),
        None => {
            let client = Builder::from_config(Config::from_url(&redis_url).unwrap())
                .build()
                .unwrap();
            client.init().await.expect("connect to the shared Redis");
            let info: String = client
                .info(Some(fred::types::InfoKind::Server))
                .await
                .unwrap();
            let pid: u32 = info
                .lines()
                .find_map(|line| line.strip_prefix("process_id:"))
                .and_then(|pid| pid.trim().parse().ok())
                .expect("INFO server names its process_id");
            assert_eq!(
                runs_in_a_container(pid),
                containers,
                "redis-server pid {pid}"
            );
            client.quit().await.unwrap();
        }
    }
    match given_postgres {
        Some(url) => assert_eq!(postgres_url, url),
        None => {
            let mut admin = PgConnection::connect(&postgres_url).await.expect("connect");
            let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                .fetch_one(&mut admin)
                .await
                .unwrap();
            assert_eq!(
                runs_in_a_container(pid as u32),
                containers,
                "postgres backend pid {pid}"
            );
        }
    }
    // CI's container pass says it expects containers, so a broken engine check cannot hide.
    if std::env::var("SLUICE_TEST_EXPECT_CONTAINERS").as_deref() == Ok("1") {
        assert!(containers, "a Docker engine was expected to answer");
    }
}
