//! The `sluice` binary as an operator meets it: `--version`, one clear line for a wrong setting,
//! a clean exit on SIGTERM, the start-up lines naming the store and the counter, where SQLite
//! URLs put the database and its generated secret, policy changes on the embedded default taking
//! effect at once, the in-process counter's key cap, `rediss://` against a TLS Redis whose
//! certificate comes from a private CA, start-up error lines that state each cause once, and Redis
//! availability: starting while Redis is down, and counting again within a second of Redis
//! answering after an outage.

#[path = "support/mod.rs"]
mod support;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use sluice::proto::{
    envoy::{
        extensions::common::ratelimit::v3::{RateLimitDescriptor, rate_limit_descriptor::Entry},
        service::ratelimit::v3::{
            RateLimitRequest, RateLimitResponse, rate_limit_response::Code,
            rate_limit_service_client::RateLimitServiceClient,
        },
    },
    sluice::admin::v1::{self as pb, policy_service_client::PolicyServiceClient},
};
use tonic::transport::Channel;

/// Runs `command` to the end and insists that it succeeded; its output.
fn run_ok(command: &mut Command, what: &str) -> std::process::Output {
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("cannot run {what}: {err}"));
    assert!(
        output.status.success(),
        "{what} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn sluice() -> Command {
    let mut command = support::sluice_command();
    command.env("SLUICE_LOG_FORMAT", "json");
    command
}

#[test]
fn version_names_the_binary() {
    let output = sluice().arg("--version").output().unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("sluice {}", env!("CARGO_PKG_VERSION"))
    );
}

/// Runs `sluice serve` in `dir` with `env` (both listeners on port 0 unless `env` names them),
/// insists that start-up stopped with one line (log lines are JSON; the error line is not), no
/// panic and no backtrace; that line.
fn failed_start_up_line(dir: &Path, env: &[(&str, &str)]) -> String {
    let output = sluice()
        .current_dir(dir)
        .env("SLUICE_GRPC_ADDR", "127.0.0.1:0")
        .env("SLUICE_HTTP_ADDR", "127.0.0.1:0")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "{env:?}: started anyway: {stderr}"
    );
    let errors: Vec<&str> = stderr.lines().filter(|l| !l.starts_with('{')).collect();
    assert_eq!(errors.len(), 1, "{env:?}: {stderr}");
    assert!(errors[0].starts_with("sluice: "), "{env:?}: {stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
    errors[0].to_owned()
}

#[test]
fn a_wrong_setting_stops_start_up_with_one_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("SLUICE_GRPC_ADDR", "nope")], "SLUICE_GRPC_ADDR"),
        (&[("SLUICE_FAILURE_MODE", "closed")], "SLUICE_FAILURE_MODE"),
        (
            &[("RATE_LIMIT_REDIS_TIMEOUT_MS", "0")],
            "RATE_LIMIT_REDIS_TIMEOUT_MS",
        ),
        (&[("DATABASE_URL", "mysql://db/x")], "DATABASE_URL"),
        (
            &[("SLUICE_JWT_HS256_SECRET", "short")],
            "SLUICE_JWT_HS256_SECRET",
        ),
        (
            &[("SLUICE_JWT_PUBLIC_KEYS", "/no/such/keys.pem")],
            "SLUICE_JWT_PUBLIC_KEYS",
        ),
        (&[("REDIS_URL", "http://not-redis")], "REDIS_URL"),
        (&[("SLUICE_MEMORY_MAX_KEYS", "0")], "SLUICE_MEMORY_MAX_KEYS"),
        (
            &[("SLUICE_MEMORY_MAX_KEYS", "lots")],
            "SLUICE_MEMORY_MAX_KEYS",
        ),
        (&[("DATABASE_URL", "sqlite::memory:")], "DATABASE_URL"),
    ];
    for (env, name) in cases {
        let line = failed_start_up_line(dir.path(), env);
        assert!(line.contains(name), "{name}: {line}");
    }
}

/// Environment variables for one run of the binary.
type Environment = Vec<(&'static str, String)>;

/// The start-up failures an operator meets most — a database that refuses or is not there, a
/// Redis URL or password that cannot work, an unreadable key file, a port in use — each end
/// start-up with one line naming the setting and stating its cause once, without the source
/// locations some errors carry (PostgreSQL's `at line 948`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_error_lines_state_their_cause_once() {
    // Arrange
    let admin = support::postgres_admin_url().await;
    let server = admin
        .split_once('@')
        .and_then(|(_, rest)| rest.split('/').next())
        .expect("the admin URL names user@host:port")
        .to_owned();
    let redis_password = "the-right-redis-password";
    let redis = support::OwnedRedis::start_with_password(redis_password).await;
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = busy.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let key_dir = dir.path().display().to_string();
    let secret = (
        "SLUICE_JWT_HS256_SECRET",
        "a-test-secret-that-is-long-enough-for-hs256",
    );
    let closed_port = support::free_port();
    // (environment, the setting the line must name, a word of the cause it must state)
    let cases: Vec<(Environment, &str, &str)> = vec![
        (
            vec![(
                "DATABASE_URL",
                format!("postgres://sluice:pw@127.0.0.1:{closed_port}/sluice"),
            )],
            "DATABASE_URL",
            "refused",
        ),
        (
            vec![(
                "DATABASE_URL",
                format!("postgres://sluice_no_such_role:wrong-password@{server}/postgres"),
            )],
            "DATABASE_URL",
            "sluice_no_such_role",
        ),
        (
            vec![(
                "DATABASE_URL",
                format!(
                    "{}/sluice_no_such_database",
                    admin.rsplit_once('/').unwrap().0
                ),
            )],
            "DATABASE_URL",
            "does not exist",
        ),
        (
            vec![("DATABASE_URL", "mysql://db/x".into())],
            "DATABASE_URL",
            "postgres://",
        ),
        (
            vec![("REDIS_URL", "http://not-redis".into())],
            "REDIS_URL",
            "scheme",
        ),
        (
            vec![("REDIS_URL", "redis://127.0.0.1:notaport".into())],
            "REDIS_URL",
            "not a usable Redis URL",
        ),
        (
            vec![
                ("REDIS_URL", redis.url.clone()),
                ("REDIS_PASSWORD", "wrong-password".into()),
            ],
            "REDIS_PASSWORD",
            "WRONGPASS",
        ),
        (
            vec![(
                "REDIS_URL",
                format!("redis://:wrong-password@127.0.0.1:{}", redis.port),
            )],
            "REDIS_URL",
            "WRONGPASS",
        ),
        (
            vec![("REDIS_URL", redis.url.clone())],
            "REDIS_URL",
            "NOAUTH",
        ),
        (
            vec![("SLUICE_JWT_PUBLIC_KEYS", key_dir)],
            "SLUICE_JWT_PUBLIC_KEYS",
            "directory",
        ),
        (
            vec![("SLUICE_GRPC_ADDR", busy)],
            "SLUICE_GRPC_ADDR",
            "in use",
        ),
    ];

    for (mut env, setting, cause) in cases {
        // Act
        env.push((secret.0, secret.1.to_owned()));
        let dir = dir.path().to_owned();
        let line = tokio::task::spawn_blocking(move || {
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            failed_start_up_line(&dir, &env)
        })
        .await
        .unwrap();

        // Assert
        assert!(
            line.contains(setting) && line.contains(cause),
            "{setting}: {line}"
        );
        assert!(!line.contains("at line"), "{setting}: {line}");
        assert!(
            !line.contains("wrong-password") && !line.contains(redis_password),
            "a password in {line}"
        );
        // No part of the line comes back later in it.
        let parts: Vec<&str> = line.split(": ").filter(|p| p.len() >= 12).collect();
        for part in &parts {
            assert_eq!(line.matches(part).count(), 1, "{part:?} repeats in {line}");
        }
    }
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let http_port = support::free_port();
    let mut child = sluice()
        .current_dir(dir.path())
        .env("SLUICE_GRPC_ADDR", "127.0.0.1:0")
        .env("SLUICE_HTTP_ADDR", format!("127.0.0.1:{http_port}"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", http_port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never listened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn migrate_applies_the_schema_and_exits() {
    // PostgreSQL: the test's own fresh database.
    let database = support::fresh_database().await;
    let url = database.url.clone();
    tokio::task::spawn_blocking(move || {
        run_ok(
            sluice().args(["migrate", "--database-url", &url]),
            "sluice migrate",
        )
    })
    .await
    .unwrap();
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&database.url)
        .await
        .unwrap();
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'rate_policies'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(tables, 1);

    // SQLite: the file is created.
    let dir = tempfile::tempdir().unwrap();
    run_ok(
        sluice().current_dir(dir.path()).arg("migrate"),
        "sluice migrate",
    );
    assert!(dir.path().join("sluice.db").exists());
}

/// The database and its generated secret for each way of writing an SQLite URL, with `sluice
/// migrate` then `sluice token` run from another working directory.
#[test]
fn sqlite_urls_put_the_database_and_its_secret_where_they_say() {
    let root = tempfile::tempdir().unwrap();
    let cwd = root.path().join("cwd");
    std::fs::create_dir_all(cwd.join("data")).unwrap();
    let absolute = root.path().join("abs");
    std::fs::create_dir_all(&absolute).unwrap();
    assert!(absolute.is_absolute());
    let slashless = absolute.display().to_string();
    let slashless = slashless.trim_start_matches('/');

    let cases: [(String, PathBuf); 4] = [
        ("sqlite://sluice.db".into(), cwd.join("sluice.db")),
        ("sqlite://data/p.db".into(), cwd.join("data/p.db")),
        (
            format!("sqlite:///{slashless}/three.db"),
            absolute.join("three.db"),
        ),
        (
            format!("sqlite:////{slashless}/four.db"),
            absolute.join("four.db"),
        ),
    ];
    for (url, database) in cases {
        for args in [&["migrate"][..], &["token", "--tenant", "acme"]] {
            run_ok(
                sluice()
                    .current_dir(&cwd)
                    .env("DATABASE_URL", &url)
                    .args(args),
                &format!("{url} {args:?}"),
            );
        }
        assert!(database.is_file(), "{url}: no {}", database.display());
        let secret = database.with_file_name("sluice.secret");
        assert!(secret.is_file(), "{url}: no {}", secret.display());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&secret).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{url}: {}", secret.display());
        }
        std::fs::remove_file(&secret).unwrap();
    }
    // Nothing landed anywhere else, e.g. a relative `tmp/…/four.db` under the working directory.
    let mut left: Vec<String> = std::fs::read_dir(&cwd)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with("sluice.db"))
        .collect();
    left.sort();
    assert_eq!(left, ["data"]);
}

/// `sluice serve` running in `dir`, its JSON log lines kept in a file. Dropping it kills it.
struct Served {
    child: Child,
    grpc: SocketAddr,
    http_port: u16,
    log: PathBuf,
    dir: PathBuf,
}

impl Served {
    /// Starts the binary in `dir` with `env` and waits until `/readyz` answers 200.
    fn start(dir: &Path, env: &[(&str, &str)]) -> Self {
        let grpc: SocketAddr = format!("127.0.0.1:{}", support::free_port())
            .parse()
            .unwrap();
        let http_port = support::free_port();
        let log = dir.join(format!("sluice-{}.log", grpc.port()));
        let child = sluice()
            .current_dir(dir)
            .envs(env.iter().copied())
            .env("SLUICE_GRPC_ADDR", grpc.to_string())
            .env("SLUICE_HTTP_ADDR", format!("127.0.0.1:{http_port}"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut served = Served {
            child,
            grpc,
            http_port,
            log,
            dir: dir.to_owned(),
        };
        served.wait_ready(http_port);
        served
    }

    fn wait_ready(&mut self, http_port: u16) {
        let started = Instant::now();
        loop {
            if support::readyz_is_ok(http_port) {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "sluice exited ({status}) before it was ready:\n{}",
                    self.log_text()
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "sluice never became ready:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every log line so far, parsed (`SLUICE_LOG_FORMAT=json`).
    fn log_lines(&self) -> Vec<serde_json::Value> {
        self.log_text()
            .lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|err| panic!("not a JSON log line ({err}): {line}"))
            })
            .collect()
    }

    /// `sluice token` with `args`, run beside the server (so from the same generated secret).
    fn token(&self, args: &[&str]) -> String {
        let output = run_ok(
            sluice().current_dir(&self.dir).arg("token").args(args),
            "sluice token",
        );
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    }

    /// `GET path` on the HTTP listener: the status code and the body.
    fn http_get(&self, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.http_port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        let status = answer
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP answer: {answer}"));
        let body = answer
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    /// The value of the unlabelled series `name` on `/metrics`, if it is there.
    fn metric(&self, name: &str) -> Option<f64> {
        let (_, text) = self.http_get("/metrics");
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc))
            .unwrap()
            .connect_lazy()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn message(line: &serde_json::Value) -> &str {
    line["message"].as_str().unwrap_or_default()
}

fn bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// `CreatePolicy` for `tenant_id` ("" = the token's own tenant), `pattern` and `max_requests`.
async fn create_policy(
    channel: &Channel,
    token: &str,
    tenant_id: &str,
    pattern: &str,
    max_requests: u32,
) -> pb::Policy {
    PolicyServiceClient::new(channel.clone())
        .create_policy(bearer(
            pb::CreatePolicyRequest {
                policy: Some(pb::Policy {
                    tenant_id: tenant_id.into(),
                    endpoint_pattern: pattern.into(),
                    max_requests,
                    ..Default::default()
                }),
            },
            token,
        ))
        .await
        .unwrap_or_else(|status| panic!("CreatePolicy {pattern}: {status:?}"))
        .into_inner()
}

/// One descriptor for `tenant` calling `GET /v1/orders`.
fn get_orders(tenant: &str) -> RateLimitRequest {
    let entries = [
        ("tenant_id", tenant),
        ("path", "/v1/orders"),
        ("method", "GET"),
    ]
    .iter()
    .map(|(key, value)| Entry {
        key: (*key).into(),
        value: (*value).into(),
    })
    .collect();
    RateLimitRequest {
        domain: "edge".into(),
        descriptors: vec![RateLimitDescriptor {
            entries,
            ..Default::default()
        }],
        hits_addend: 0,
    }
}

async fn should_rate_limit(
    channel: &Channel,
    request: RateLimitRequest,
) -> Result<RateLimitResponse, tonic::Status> {
    RateLimitServiceClient::new(channel.clone())
        .should_rate_limit(request)
        .await
        .map(tonic::Response::into_inner)
}

/// The overall code and, for the one descriptor, (requests_per_unit, limit_remaining) when a
/// policy matched.
async fn decide(channel: &Channel, tenant: &str) -> (Code, Option<(u32, u32)>) {
    let response = should_rate_limit(channel, get_orders(tenant))
        .await
        .unwrap_or_else(|status| panic!("ShouldRateLimit failed: {status:?}"));
    let status = &response.statuses[0];
    (
        response.overall_code(),
        status
            .current_limit
            .as_ref()
            .map(|limit| (limit.requests_per_unit, status.limit_remaining)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_memory_key_cap_a_new_counter_fails_per_the_failure_mode() {
    for mode in ["open", "unavailable"] {
        let dir = tempfile::tempdir().unwrap();
        let served = tokio::task::spawn_blocking({
            let dir = dir.path().to_owned();
            move || {
                Served::start(
                    &dir,
                    &[
                        ("SLUICE_MEMORY_MAX_KEYS", "1"),
                        ("SLUICE_FAILURE_MODE", mode),
                    ],
                )
            }
        })
        .await
        .unwrap();
        let admin_token = served.token(&["--role", "platform-admin"]);
        let channel = served.channel();
        create_policy(&channel, &admin_token, "*", "/**", 100).await;

        // acme's counter takes the one slot and keeps counting.
        assert_eq!(decide(&channel, "acme").await, (Code::Ok, Some((100, 99))));
        // globex needs a second counter.
        let globex = should_rate_limit(&channel, get_orders("globex")).await;
        match mode {
            "open" => {
                let response = globex.unwrap();
                assert_eq!(response.overall_code(), Code::Ok, "{mode}");
                assert!(
                    response.statuses[0].current_limit.is_none(),
                    "failed open: no limit reported"
                );
            }
            _ => assert_eq!(
                globex.unwrap_err().code(),
                tonic::Code::Unavailable,
                "{mode}"
            ),
        }
        assert_eq!(decide(&channel, "acme").await, (Code::Ok, Some((100, 98))));
        // A flood of new tenants, more than the breaker's failure threshold, fails per the mode
        // but does not open the breaker: acme, whose counter is tracked, is still counted.
        for n in 0..(2 * sluice::ratelimit::breaker::FAILURES_TO_OPEN) {
            let _ = should_rate_limit(&channel, get_orders(&format!("flood-{n}"))).await;
        }
        assert_eq!(
            decide(&channel, "acme").await,
            (Code::Ok, Some((100, 97))),
            "{mode}: acme is still counted after the flood"
        );

        let warned = served.log_lines().into_iter().any(|l| {
            l["level"] == "WARN"
                && message(&l).contains("in-process rate counter is full")
                && message(&l).contains("SLUICE_MEMORY_MAX_KEYS")
        });
        assert!(warned, "{mode}: {}", served.log_text());
    }
}

#[test]
fn start_up_names_the_embedded_store_and_warns_that_counters_are_per_instance() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(dir.path(), &[]);

    let lines = served.log_lines();
    let store: Vec<_> = lines.iter().filter(|l| !l["store"].is_null()).collect();
    assert_eq!(store.len(), 1, "one store line: {lines:#?}");
    assert_eq!(store[0]["store"], "sqlite");
    assert_eq!(store[0]["level"], "INFO");
    assert!(
        message(store[0]).starts_with("policy store: SQLite at ")
            && message(store[0]).ends_with("sluice.db"),
        "{}",
        store[0]
    );

    let counter: Vec<_> = lines.iter().filter(|l| !l["counter"].is_null()).collect();
    assert_eq!(counter.len(), 1, "one counter line: {lines:#?}");
    assert_eq!(counter[0]["counter"], "in-process");
    assert_eq!(counter[0]["level"], "WARN");
    assert_eq!(counter[0]["max_keys"], 1_000_000);
    for needle in [
        "per instance",
        "set REDIS_URL to share them",
        "SLUICE_MEMORY_MAX_KEYS",
    ] {
        assert!(message(counter[0]).contains(needle), "{}", counter[0]);
    }
    let secret = std::fs::read_to_string(dir.path().join("sluice.secret")).unwrap();
    assert!(
        !served.log_text().contains(secret.trim()),
        "the generated secret is logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_names_postgres_and_redis_and_gives_no_per_instance_warning() {
    let database = support::fresh_database().await;
    let redis_url = support::redis_url().await;
    let prefix = support::unique_redis_prefix();
    let secret = "a-test-secret-that-is-long-enough-for-hs256";
    let dir = tempfile::tempdir().unwrap();
    let served = tokio::task::spawn_blocking({
        let (dir, url) = (dir.path().to_owned(), database.url.clone());
        move || {
            Served::start(
                &dir,
                &[
                    ("DATABASE_URL", url.as_str()),
                    ("REDIS_URL", redis_url.as_str()),
                    ("SLUICE_REDIS_KEY_PREFIX", prefix.as_str()),
                    ("SLUICE_JWT_HS256_SECRET", secret),
                ],
            )
        }
    })
    .await
    .unwrap();

    let lines = served.log_lines();
    let named = |field: &str| -> Vec<&serde_json::Value> {
        lines.iter().filter(|l| !l[field].is_null()).collect()
    };
    let store = named("store");
    assert_eq!(store.len(), 1, "{lines:#?}");
    assert_eq!(store[0]["store"], "postgres");
    assert_eq!(message(store[0]), "policy store: PostgreSQL");
    let counter = named("counter");
    assert_eq!(counter.len(), 1, "{lines:#?}");
    assert_eq!(counter[0]["counter"], "redis");
    assert_eq!(counter[0]["level"], "INFO");
    assert!(
        message(counter[0]).starts_with("counters: Redis"),
        "{}",
        counter[0]
    );
    let text = served.log_text();
    assert!(!text.contains("per instance"), "{text}");
    assert!(
        !text.contains("sluice.secret"),
        "no secret generated: {text}"
    );
    assert!(!text.contains(secret), "the JWT secret is logged");
    assert!(!dir.path().join("sluice.db").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite_an_update_or_delete_through_the_admin_api_binds_the_next_check_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let served = tokio::task::spawn_blocking({
        let dir = dir.path().to_owned();
        move || Served::start(&dir, &[])
    })
    .await
    .unwrap();
    let token = served.token(&["--tenant", "acme"]);
    let channel = served.channel();
    let mut admin = PolicyServiceClient::new(channel.clone());

    let created = create_policy(&channel, &token, "", "GET /v1/**", 1).await;
    assert_eq!(decide(&channel, "acme").await, (Code::Ok, Some((1, 0))));
    assert_eq!(
        decide(&channel, "acme").await,
        (Code::OverLimit, Some((1, 0)))
    );

    // Raised to 3: the very next check is judged by the new limit (one hit counted so far).
    admin
        .update_policy(bearer(
            pb::UpdatePolicyRequest {
                policy: Some(pb::Policy {
                    id: created.id.clone(),
                    max_requests: 3,
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["max_requests".into()],
                }),
            },
            &token,
        ))
        .await
        .unwrap();
    assert_eq!(decide(&channel, "acme").await, (Code::Ok, Some((3, 1))));

    // Deleted: the next check matches nothing.
    admin
        .delete_policy(bearer(
            pb::DeletePolicyRequest {
                id: created.id,
                etag: String::new(),
            },
            &token,
        ))
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(decide(&channel, "acme").await, (Code::Ok, None));
    }
}

/// A private CA and a certificate for `localhost` / 127.0.0.1 that it signed, made with the
/// openssl CLI in `dir`: (CA certificate, server certificate, server key), all PEM.
fn private_ca_and_server_certificate(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        run_ok(
            Command::new("openssl").current_dir(dir).args(args),
            &format!("openssl (Debian package openssl) {args:?}"),
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec[..],
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=Sluice test CA",
        ],
    ]
    .concat());
    run(&[
        &["req"][..],
        &ec[..],
        &[
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    ]
    .concat());
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_counts_in_a_tls_redis_whose_private_ca_is_given_by_ssl_cert_file() {
    // Arrange: a Redis serving TLS with a certificate from a CA no system trusts
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = private_ca_and_server_certificate(dir.path());
    let (redis, tls_port) = support::OwnedRedis::start_tls(&cert, &key).await;
    let url = format!("rediss://localhost:{tls_port}");
    let prefix = support::unique_redis_prefix();

    // Act 1: without the CA, the certificate is not trusted and start-up stops
    let untrusted = tokio::task::spawn_blocking({
        let (dir, url, prefix) = (dir.path().to_owned(), url.clone(), prefix.clone());
        move || {
            let mut child = sluice()
                .current_dir(&dir)
                .env("REDIS_URL", &url)
                .env("SLUICE_REDIS_KEY_PREFIX", &prefix)
                .env("SLUICE_GRPC_ADDR", "127.0.0.1:0")
                .env("SLUICE_HTTP_ADDR", "127.0.0.1:0")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let started = Instant::now();
            while child.try_wait().unwrap().is_none() {
                if started.elapsed() > Duration::from_secs(30) {
                    let _ = child.kill();
                    panic!("sluice kept running with an untrusted Redis certificate");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            child.wait_with_output().unwrap()
        }
    })
    .await
    .unwrap();

    // Act 2: with SSL_CERT_FILE naming the CA, Sluice counts in that Redis over TLS
    let served = tokio::task::spawn_blocking({
        let (dir, url, prefix, ca) = (
            dir.path().to_owned(),
            url.clone(),
            prefix.clone(),
            ca.display().to_string(),
        );
        move || {
            Served::start(
                &dir,
                &[
                    ("REDIS_URL", url.as_str()),
                    ("SSL_CERT_FILE", ca.as_str()),
                    ("SLUICE_REDIS_KEY_PREFIX", prefix.as_str()),
                ],
            )
        }
    })
    .await
    .unwrap();
    let token = served.token(&["--tenant", "acme"]);
    let channel = served.channel();
    create_policy(&channel, &token, "", "GET /v1/**", 2).await;
    let decisions = [
        decide(&channel, "acme").await,
        decide(&channel, "acme").await,
        decide(&channel, "acme").await,
    ];
    let stored_keys = Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "--scan", "--pattern"])
        .arg(format!("{prefix}*"))
        .output()
        .expect("redis-cli (Debian package redis-tools) is installed");

    // Assert
    assert!(!untrusted.status.success());
    let stderr = String::from_utf8_lossy(&untrusted.stderr);
    assert!(
        stderr.lines().last().is_some_and(
            |line| line.contains("REDIS_URL") && line.to_lowercase().contains("certificate")
        ),
        "the last line names REDIS_URL and the certificate problem: {stderr}"
    );
    assert_eq!(
        decisions,
        [
            (Code::Ok, Some((2, 1))),
            (Code::Ok, Some((2, 0))),
            (Code::OverLimit, Some((2, 0))),
        ]
    );
    let keys = String::from_utf8_lossy(&stored_keys.stdout);
    assert_eq!(
        keys.lines().count(),
        1,
        "one counter, in the TLS Redis, under the test's prefix: {keys:?}"
    );
    let counter_line = served
        .log_lines()
        .into_iter()
        .find(|l| !l["counter"].is_null())
        .expect("a counter line");
    assert_eq!(counter_line["counter"], "redis");
}

/// `Served::start` on a blocking thread, in a new temporary directory (returned with it).
async fn serve_in_new_dir(env: Environment) -> (tempfile::TempDir, Served) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let served = tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Served::start(&path, &env)
    })
    .await
    .unwrap();
    (dir, served)
}

/// Checks `tenant` until one gets a counted decision (a limit reported); how long that took.
/// Fails after `limit`.
async fn until_counted(served: &Served, tenant: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let answer = should_rate_limit(&served.channel(), get_orders(tenant)).await;
        if answer.is_ok_and(|response| response.statuses[0].current_limit.is_some()) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "not counting {limit:?} after Redis answered:\n{}",
            served.log_text()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits (at most 5 s: the health ping runs every 500 ms) until `/metrics` shows
/// `sluice_redis_up` = `value`.
async fn until_redis_up_is(served: &Served, value: f64) {
    let started = Instant::now();
    while served.metric("sluice_redis_up") != Some(value) {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "sluice_redis_up never became {value}: {:?}",
            served.metric("sluice_redis_up")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A restart during a Redis outage must not be a crash loop: Sluice starts, is ready, answers per
/// `SLUICE_FAILURE_MODE` and says Redis is not there yet; once Redis answers it counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn started_while_redis_is_down_it_answers_per_the_failure_mode_then_counts() {
    // Arrange: a port with no Redis on it; one instance per failure mode, a limit of 3 for
    // every tenant
    let mut redis = support::OwnedRedis::not_started();
    let mut instances = Vec::new();
    for mode in ["open", "unavailable"] {
        let (dir, served) = serve_in_new_dir(vec![
            ("REDIS_URL", redis.url.clone()),
            ("SLUICE_FAILURE_MODE", mode.to_owned()),
            ("SLUICE_REDIS_KEY_PREFIX", support::unique_redis_prefix()),
        ])
        .await;
        let token = served.token(&["--role", "platform-admin"]);
        create_policy(&served.channel(), &token, "*", "/**", 3).await;
        instances.push((mode, dir, served));
    }

    // Act 1 and assert: Redis down
    for (mode, _, served) in &instances {
        assert_eq!(
            served.http_get("/readyz"),
            (200, "ready\nredis: connecting\n".to_owned()),
            "{mode}"
        );
        assert_eq!(served.metric("sluice_redis_up"), Some(0.0), "{mode}");
        let answer = should_rate_limit(&served.channel(), get_orders("acme")).await;
        match *mode {
            "open" => {
                let response = answer.unwrap();
                assert_eq!(response.overall_code(), Code::Ok);
                assert!(response.statuses[0].current_limit.is_none(), "failed open");
            }
            _ => assert_eq!(answer.unwrap_err().code(), tonic::Code::Unavailable),
        }
    }

    // Act 2: Redis starts on that port
    redis.restart().await;

    // Assert: both count, exactly 3 admitted, and say Redis is up
    for (mode, _, served) in &instances {
        until_counted(served, "probe", Duration::from_secs(5)).await;
        let mut decisions = Vec::new();
        for _ in 0..4 {
            decisions.push(decide(&served.channel(), "globex").await);
        }
        assert_eq!(
            decisions,
            [
                (Code::Ok, Some((3, 2))),
                (Code::Ok, Some((3, 1))),
                (Code::Ok, Some((3, 0))),
                (Code::OverLimit, Some((3, 0))),
            ],
            "{mode}"
        );
        until_redis_up_is(served, 1.0).await;
        assert_eq!(
            served.http_get("/readyz"),
            (200, "ready\nredis: up\n".to_owned()),
            "{mode}"
        );
    }
}

/// Limits must not stay off longer than the outage: after 10 s without Redis (traffic all along,
/// so the circuit breaker is open), the first counted decision comes within 1 s of the restarted
/// Redis answering PING.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counting_resumes_within_a_second_of_redis_answering_after_a_ten_second_outage() {
    // Arrange
    let mut redis = support::OwnedRedis::start().await;
    let (_dir, served) = serve_in_new_dir(vec![
        ("REDIS_URL", redis.url.clone()),
        ("SLUICE_REDIS_KEY_PREFIX", support::unique_redis_prefix()),
    ])
    .await;
    let token = served.token(&["--role", "platform-admin"]);
    create_policy(&served.channel(), &token, "*", "/**", 1_000_000).await;
    assert!(
        decide(&served.channel(), "acme").await.1.is_some(),
        "counted before the outage"
    );

    // Act: 10 s down, a check every 100 ms; then back
    redis.kill();
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(10) {
        assert_eq!(
            decide(&served.channel(), "acme").await,
            (Code::Ok, None),
            "fails open while Redis is down"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(served.metric("sluice_circuit_open"), Some(1.0));
    assert_eq!(served.metric("sluice_redis_up"), Some(0.0));
    assert_eq!(
        served.http_get("/readyz"),
        (200, "ready\nredis: down\n".to_owned()),
        "still ready: Sluice answers per the failure mode"
    );
    // `restart` returns as soon as the new server answers PING.
    redis.restart().await;
    let resumed_after = until_counted(&served, "acme", Duration::from_secs(5)).await;

    // Assert
    assert!(
        resumed_after <= Duration::from_secs(1),
        "counting resumed {resumed_after:?} after Redis answered"
    );
    assert_eq!(served.metric("sluice_circuit_open"), Some(0.0));
    until_redis_up_is(&served, 1.0).await;
}

// ---------------------------------------------------------------------------------------------
// `sluice token`
// ---------------------------------------------------------------------------------------------

#[test]
fn token_refuses_the_reserved_anonymous_tenant_without_the_admin_role() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let token = |args: &[&str]| {
        sluice()
            .current_dir(dir.path())
            .env(
                "SLUICE_JWT_HS256_SECRET",
                "a-cli-test-secret-of-at-least-32-bytes",
            )
            .arg("token")
            .args(args)
            .output()
            .expect("run sluice token")
    };

    // Act
    let refused = token(&["--tenant", "anonymous"]);
    let as_admin = token(&["--tenant", "anonymous", "--role", "platform-admin"]);

    // Assert
    assert!(!refused.status.success());
    assert!(refused.stdout.is_empty(), "no token is printed");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr:?}");
    assert!(
        lines[0].starts_with("sluice: ")
            && lines[0].contains("\"anonymous\" is reserved")
            && lines[0].contains("platform-admin"),
        "{stderr:?}"
    );
    assert!(
        as_admin.status.success(),
        "{}",
        String::from_utf8_lossy(&as_admin.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&as_admin.stdout).split('.').count(),
        3
    );
}
