//! The README's quick start and walkthrough, run exactly as written (the blocks are read from
//! README.md, never copied here) against the embedded default: the real `sluice` binary with no
//! `DATABASE_URL` and no `REDIS_URL`, in an empty directory, so SQLite and in-process counters.
//! Only the address is substituted, so the test never needs port 8081 to be free.
//!
//! The directory stands for the repository root as the README describes it: `sluice` sits at
//! `target/release/sluice` and grpcurl at `.venv/bin/grpcurl`, and the PATH the commands start
//! with has neither, so the README's own `export PATH=…` line must find them. What stays untested:
//! `target/release/sluice` is a link to the debug binary cargo built for the tests (a release build
//! here would cost minutes), and `.venv/bin/grpcurl` is a link to the grpcurl binary the suite
//! uses, not one installed by the README's `pip` commands (those need root and the network).

#[path = "support/mod.rs"]
mod support;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// The body of the README's fenced block whose info string is `sh <tag>`.
fn readme_block(tag: &str) -> String {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md is readable");
    let opening = format!("```sh {tag}\n");
    let start = readme
        .find(&opening)
        .unwrap_or_else(|| panic!("README.md has no ```sh {tag} block"))
        + opening.len();
    let end = readme[start..].find("\n```").expect("the block is closed") + start;
    readme[start..end].to_owned()
}

/// The first line of the quick start that sets PATH, for later scripts in a fresh shell.
fn readme_path_line() -> String {
    readme_block("quickstart")
        .lines()
        .find(|line| line.starts_with("export PATH="))
        .expect("the quick start sets PATH")
        .to_owned()
}

/// Lays `dir` out as the README's repository root: `target/release/sluice` (the binary under
/// test) and `.venv/bin/grpcurl`, both symbolic links.
fn lay_out_repository_root(dir: &Path) {
    let links = [
        (
            PathBuf::from(env!("CARGO_BIN_EXE_sluice")),
            dir.join("target/release/sluice"),
        ),
        (support::grpcurl_path(), dir.join(".venv/bin/grpcurl")),
    ];
    for (target, link) in links {
        std::fs::create_dir_all(link.parent().unwrap()).expect("create the link's directory");
        std::os::unix::fs::symlink(&target, &link).unwrap_or_else(|err| {
            panic!(
                "cannot link {} to {}: {err}",
                link.display(),
                target.display()
            )
        });
    }
}

/// The caller's PATH without any directory holding a `sluice` or `grpcurl`, so only the README's
/// PATH line can put them there.
fn path_without_sluice_or_grpcurl() -> String {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let kept: Vec<PathBuf> = std::env::split_paths(&path)
        .filter(|dir| !dir.join("sluice").exists() && !dir.join("grpcurl").exists())
        .collect();
    std::env::join_paths(kept)
        .expect("PATH entries stay joinable")
        .into_string()
        .expect("PATH is UTF-8")
}

/// `sluice` serving from `dir` on its embedded default, as `cargo run --release` would.
struct Sluice {
    child: Child,
    grpc: String,
    http_port: u16,
}

impl Sluice {
    fn start(dir: &Path) -> Self {
        let (grpc_port, http_port) = (support::free_port(), support::free_port());
        let grpc = format!("127.0.0.1:{grpc_port}");
        let mut command = support::sluice_command();
        let child = command
            .current_dir(dir)
            .env("SLUICE_GRPC_ADDR", &grpc)
            .env("SLUICE_HTTP_ADDR", format!("127.0.0.1:{http_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("sluice starts");
        let server = Self {
            child,
            grpc,
            http_port,
        };
        server.wait_ready();
        server
    }

    fn wait_ready(&self) {
        let started = Instant::now();
        loop {
            if support::readyz_is_ok(self.http_port) {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "sluice never became ready"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `script` in bash, in `dir` (laid out by [`lay_out_repository_root`]), with neither `sluice`
    /// nor grpcurl on the PATH it starts with, and the README's address replaced by this server's.
    fn run(&self, dir: &Path, script: &str) -> String {
        let script = script.replace("localhost:8081", &self.grpc);
        let output = Command::new("bash")
            .args(["-euo", "pipefail", "-c", &script])
            .current_dir(dir)
            .env("PATH", path_without_sluice_or_grpcurl())
            .env_remove("DATABASE_URL")
            .env_remove("SLUICE_JWT_HS256_SECRET")
            .output()
            .expect("bash runs");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "the README commands failed ({}):\n{script}\n--- stdout\n{stdout}\n--- stderr\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_readme_quick_start_reaches_over_limit_and_the_walkthrough_manages_policies() {
    let dir = tempfile::tempdir().expect("a temp dir");
    lay_out_repository_root(dir.path());
    let sluice = Sluice::start(dir.path());

    // One shell, as a reader would: the walkthrough continues with the quick start's $TOKEN.
    let script = format!(
        "{}\n{}\n{}",
        readme_block("quickstart"),
        readme_block("explain"),
        readme_block("walkthrough")
    );
    let output = sluice.run(dir.path(), &script);
    let codes: Vec<&str> = output
        .lines()
        .filter(|l| l.contains("overallCode"))
        .map(str::trim)
        .collect();
    assert_eq!(
        codes,
        [
            "\"overallCode\": \"OK\",",
            "\"overallCode\": \"OK\",",
            "\"overallCode\": \"OVER_LIMIT\","
        ],
        "{output}"
    );
    assert!(dir.path().join("sluice.db").exists());
    assert!(dir.path().join("sluice.secret").exists());
    for expected in [
        "sluice.admin.v1.PolicyService",
        "envoy.service.ratelimit.v3.RateLimitService",
        "\"maxRequests\": 10",
        // ExplainRateLimit on the third, limited check: two counted, a request would be denied.
        "\"current\": 2",
        "\"wouldBeDenied\": true",
        "\"tenantId\": \"*\"",
    ] {
        assert!(output.contains(expected), "missing {expected} in\n{output}");
    }
}

#[test]
fn policies_survive_a_restart() {
    let dir = tempfile::tempdir().expect("a temp dir");
    lay_out_repository_root(dir.path());
    let sluice = Sluice::start(dir.path());
    sluice.run(dir.path(), &readme_block("quickstart"));
    drop(sluice);

    let restarted = Sluice::start(dir.path());
    // The same check as the quick start's: the policy is there (and so is the secret) after the
    // restart; the in-process counts start afresh.
    let listed = restarted.run(
        dir.path(),
        &format!(
            "{}\ngrpcurl -plaintext -H \"authorization: Bearer $(sluice token --tenant acme)\" \
             -d '{{}}' localhost:8081 sluice.admin.v1.PolicyService/ListPolicies",
            readme_path_line()
        ),
    );
    assert!(
        listed.contains("\"endpointPattern\": \"GET /v1/**\""),
        "{listed}"
    );
}
