//! The `sluice` binary as an operator meets it: `--version`, one clear line for a wrong setting,
//! and a clean exit on SIGTERM.

#[path = "support/mod.rs"]
mod support;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

fn sluice() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    for var in [
        "DATABASE_URL",
        "REDIS_URL",
        "SLUICE_JWT_HS256_SECRET",
        "SLUICE_JWT_PUBLIC_KEYS",
    ] {
        command.env_remove(var);
    }
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
    ];
    for (env, name) in cases {
        let output = sluice()
            .current_dir(dir.path())
            .envs(env.iter().copied())
            .env(
                "SLUICE_GRPC_ADDR",
                env.iter()
                    .find(|(k, _)| *k == "SLUICE_GRPC_ADDR")
                    .map_or("127.0.0.1:0", |(_, v)| v),
            )
            .env("SLUICE_HTTP_ADDR", "127.0.0.1:0")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!output.status.success(), "{name}: started anyway");
        let stderr = String::from_utf8_lossy(&output.stderr);
        // Log lines are JSON; the one error line is not.
        let errors: Vec<&str> = stderr.lines().filter(|l| !l.starts_with('{')).collect();
        assert_eq!(errors.len(), 1, "{name}: {stderr}");
        assert!(
            errors[0].starts_with("sluice: ") && errors[0].contains(name),
            "{name}: {stderr}"
        );
        assert!(
            !stderr.contains("panicked") && !stderr.contains("backtrace"),
            "{stderr}"
        );
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
    let output = tokio::task::spawn_blocking(move || {
        sluice()
            .args(["migrate", "--database-url", &url])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
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
    let output = sluice()
        .current_dir(dir.path())
        .arg("migrate")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(dir.path().join("sluice.db").exists());
}
