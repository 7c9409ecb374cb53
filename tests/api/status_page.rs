//! `GET /`, the human status page, through the real server counting in Redis: what an operator
//! reads there (readiness, Redis, policies, tenants by traffic, the limited ones), the headers that
//! keep it inert (`text/html`, a Content-Security-Policy allowing no script), tenant values from
//! requests escaped; and the same page as headless Chromium renders it.

use std::{
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use sha2::{Digest, Sha256};
use sluice::{
    proto::envoy::service::ratelimit::v3::rate_limit_response::Code,
    status_page::CONTENT_SECURITY_POLICY,
};

use crate::{
    helpers::{HttpResponse, TestApp, http_get, new_policy},
    rate_limit::{call, check, code, policy, spawn_with_redis, unique_tenant},
    support::chromium_path,
};

/// A tenant value a client could send to inject markup into the page.
const MARKUP_TENANT: &str = "<script>alert(1)</script>";

/// How long Chromium may take to load and dump the page before it is killed.
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(25);

/// Two tenants with their own policies: `busy` well within its limit, `limited` over its limit
/// of 2.
struct Traffic {
    busy: String,
    limited: String,
}

impl Traffic {
    async fn arrange(app: &TestApp) -> Self {
        let traffic = Traffic {
            busy: unique_tenant("busy"),
            limited: unique_tenant("limited"),
        };
        policy(app, new_policy(&traffic.busy, "GET /v1/**", 1_000)).await;
        policy(app, new_policy(&traffic.limited, "GET /v1/**", 2)).await;
        wait_until_ready(app).await;
        traffic
    }

    /// `busy` calls `times` times (all allowed), `limited` as often (denied after its first 2),
    /// and one call names [`MARKUP_TENANT`] (no policy: unmatched).
    async fn send(&self, app: &TestApp, times: usize) {
        for _ in 0..times {
            let response = check(app, call(&self.busy, "GET", "/v1/orders")).await;
            assert_eq!(code(&response), Code::Ok);
            check(app, call(&self.limited, "GET", "/v1/orders")).await;
        }
        check(app, call(MARKUP_TENANT, "GET", "/v1/orders")).await;
        let response = check(app, call(&self.limited, "GET", "/v1/orders")).await;
        assert_eq!(
            code(&response),
            Code::OverLimit,
            "limited is over its limit"
        );
    }
}

async fn wait_until_ready(app: &TestApp) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let readyz = http_get(app.http_addr, "/readyz").await.expect("/readyz");
        if readyz.status == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "never ready: {readyz:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The label Sluice gives a tenant value that is not a valid tenant id: `~` and a hash.
fn hashed_label(value: &str) -> String {
    format!("~{}", hex::encode(&Sha256::digest(value.as_bytes())[..12]))
}

async fn status_page(app: &TestApp) -> HttpResponse {
    let page = http_get(app.http_addr, "/").await.expect("GET /");
    assert_eq!(page.status, 200, "{page:?}");
    page
}

#[tokio::test]
async fn the_status_page_shows_the_instance_its_tenants_and_the_limited_ones() {
    // Arrange
    let app = spawn_with_redis().await;
    let traffic = Traffic::arrange(&app).await;
    traffic.send(&app, 5).await;

    // Act: a first view (totals), more traffic, a second view (rates since the first).
    let first = status_page(&app).await;
    traffic.send(&app, 3).await;
    let second = status_page(&app).await;

    // Assert
    for page in [&first, &second] {
        assert_eq!(
            page.header("content-type"),
            Some("text/html; charset=utf-8")
        );
        let csp = page.header("content-security-policy").unwrap_or_default();
        assert_eq!(csp, CONTENT_SECURITY_POLICY);
        assert!(
            csp.contains("default-src 'none'") && !csp.contains("script-src"),
            "{csp}"
        );
        assert_eq!(page.header("cache-control"), Some("no-store"));
        assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
        let html = &page.body;
        assert!(html.contains("All clear: ready"), "{html}");
        assert!(
            html.contains("<tr><th>Ready</th><td class=\"ok\">ready</td></tr>"),
            "{html}"
        );
        assert!(
            html.contains("<tr><th>Redis</th><td class=\"ok\">up</td></tr>"),
            "{html}"
        );
        assert!(
            html.contains("<tr><th>Circuit breaker</th><td class=\"ok\">closed</td></tr>"),
            "{html}"
        );
        assert!(
            html.contains("<tr><th>Policies loaded (enabled)</th><td>2</td></tr>"),
            "{html}"
        );
        assert!(html.contains("last full load"), "{html}");
        assert!(
            html.contains(&format!(
                "<tr><th>Version</th><td>{}</td></tr>",
                env!("CARGO_PKG_VERSION")
            )),
            "{html}"
        );
        for tenant in [&traffic.busy, &traffic.limited] {
            assert!(
                html.contains(&format!("<tr class=\"tenant\"><td>{tenant}</td>")),
                "{tenant} among the tenants: {html}"
            );
        }
        assert!(
            !html.contains(&format!("<tr class=\"limited\"><td>{}</td>", traffic.busy)),
            "busy was never denied: {html}"
        );
        assert!(
            html.contains("No check failed open"),
            "nothing failed open: {html}"
        );
        // The markup a client sent is never echoed: Sluice labels the value by its hash, and the
        // page has no script of its own.
        assert!(!html.to_lowercase().contains("<script"), "{html}");
        assert!(
            html.contains(&format!(
                "<tr class=\"tenant\"><td>{}</td>",
                hashed_label(MARKUP_TENANT)
            )),
            "{html}"
        );
    }
    let first = &first.body;
    assert!(first.contains("rates after the next refresh"), "{first}");
    // Totals since start: limited was denied 5 - 2 + 1 = 4 times.
    assert!(
        first.contains(&format!(
            "<tr class=\"limited\"><td>{}</td><td class=\"n\">4</td>",
            traffic.limited
        )),
        "{first}"
    );
    let second = &second.body;
    assert!(second.contains("rates over the last"), "{second}");
    // Since the first view: 3 + 1 more denials, each a rate now.
    assert!(
        second.contains(&format!(
            "<tr class=\"limited\"><td>{}</td><td class=\"n\">4</td><td class=\"n\">",
            traffic.limited
        )),
        "{second}"
    );
    assert!(second.contains("/s</td>"), "{second}");
    assert!(
        !second.contains("<tr><th>Mean latency</th><td>no calls</td></tr>"),
        "Redis calls in the interval: {second}"
    );
}

#[tokio::test]
async fn headless_chromium_renders_the_status_page() {
    // Arrange
    let chromium = chromium_path();
    let app = spawn_with_redis().await;
    let traffic = Traffic::arrange(&app).await;
    traffic.send(&app, 4).await;
    status_page(&app).await;
    traffic.send(&app, 2).await;
    let scratch = tempfile::tempdir().expect("a temporary directory");
    let screenshot = scratch.path().join("status.png");

    // Act
    let dom = dump_dom(
        &chromium,
        &format!("http://{}/", app.http_addr),
        &scratch.path().join("profile"),
        &screenshot,
    )
    .await;

    // Assert
    for expected in [
        "<title>Sluice status</title>",
        "<h1>Sluice status</h1>",
        "<h2>Instance</h2>",
        "<h2>Decisions per second by tenant</h2>",
        "<h2>Top limited tenants</h2>",
        "<h2>Fail-open</h2>",
        "<h2>Redis calls</h2>",
        "rates over the last",
        "<td class=\"ok\">ready</td>",
        "<td class=\"ok\">up</td>",
        &format!("<tr class=\"tenant\"><td>{}</td>", traffic.busy),
        &format!("<tr class=\"limited\"><td>{}</td>", traffic.limited),
    ] {
        assert!(dom.contains(expected), "{expected} not in the DOM:\n{dom}");
    }
    assert!(
        !dom.to_lowercase().contains("<script"),
        "a script element in the DOM:\n{dom}"
    );
    let png = std::fs::read(&screenshot)
        .unwrap_or_else(|err| panic!("no screenshot at {}: {err}", screenshot.display()));
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let (width, height) = (
        u32::from_be_bytes(png[16..20].try_into().unwrap()),
        u32::from_be_bytes(png[20..24].try_into().unwrap()),
    );
    assert_eq!((width, height), (1200, 900));
    assert!(
        png.len() > 20_000,
        "a {} byte screenshot is too small for a page of tables",
        png.len()
    );
    // Kept as the run's artifact (CI uploads it): what on-call would have seen.
    let kept = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    std::fs::write(&kept, &png)
        .unwrap_or_else(|err| panic!("cannot keep the screenshot at {}: {err}", kept.display()));
}

/// Loads `url` in headless Chromium with a fresh `profile`, saves a 1200×900 screenshot to
/// `screenshot` and returns the DOM after load. Kills Chromium (its whole process group) if it
/// takes longer than [`CHROMIUM_TIMEOUT`].
async fn dump_dom(chromium: &Path, url: &str, profile: &Path, screenshot: &Path) -> String {
    let mut command = tokio::process::Command::new(chromium);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1200,900",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", screenshot.display()))
        .arg("--dump-dom")
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let child = command
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start {}: {err}", chromium.display()));
    let group = child.id();
    let output = match tokio::time::timeout(CHROMIUM_TIMEOUT, child.wait_with_output()).await {
        Ok(output) => output.unwrap_or_else(|err| panic!("waiting for chromium failed: {err}")),
        Err(_) => {
            if let Some(group) = group {
                // Chromium's renderer and GPU processes share the group we gave the browser.
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", "--", &format!("-{group}")])
                    .status();
            }
            panic!("chromium did not load {url} within {CHROMIUM_TIMEOUT:?}; killed it");
        }
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "chromium failed ({}):\n{stderr}",
        output.status
    );
    let dom = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(!dom.is_empty(), "chromium printed no DOM:\n{stderr}");
    dom
}
