//! The Grafana dashboard `deploy/grafana/sluice-dashboard.json`: it is an importable dashboard
//! (well-formed JSON, a datasource variable, every panel titled, on that datasource, with a query),
//! it covers every metric `docs/rate-limiting.md` documents, and **every panel query works**: a real
//! Sluice counting in Redis serves traffic from three tenants (allowed, denied, unmatched), a real
//! Prometheus scrapes it every second, and each query — Grafana's variables substituted as Grafana
//! would — must return samples, all finite and non-negative, and the panels a reader looks at first
//! must show what the traffic did.
//!
//! The Prometheus server comes from Debian's `prometheus` package (`.ci/run` installs it); without it
//! the test fails, naming the install step — it never passes by skipping.

#[path = "support/mod.rs"]
mod support;

// The admin-API harness (`spawn_app_with`, tokens, policies); this binary uses a part of it.
#[allow(dead_code)]
#[path = "api/helpers.rs"]
mod helpers;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    time::Duration,
};

use serde_json::Value;
use sluice::proto::envoy::{
    extensions::common::ratelimit::v3::{RateLimitDescriptor, rate_limit_descriptor::Entry},
    service::ratelimit::v3::{
        RateLimitRequest, rate_limit_response::Code,
        rate_limit_service_client::RateLimitServiceClient,
    },
};

use crate::{
    helpers::{TestApp, http_get, new_policy, secret, spawn_app_with},
    support::{PrometheusServer, Sample},
};

const DASHBOARD: &str = "deploy/grafana/sluice-dashboard.json";
const METRICS_DOC: &str = "docs/rate-limiting.md";

/// What Grafana's built-in interval variables become. `$__rate_interval` is at least four scrape
/// intervals in Grafana; here one minute, longer than the whole test, so every rate sees every
/// sample of the traffic.
const BUILT_INS: &[(&str, &str)] = &[
    ("__rate_interval", "1m"),
    ("__interval", "15s"),
    ("__range", "1m"),
];

/// How often the test's Prometheus scrapes Sluice.
const SCRAPE_EVERY: Duration = Duration::from_secs(1);

fn read(relative: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(relative))
        .unwrap_or_else(|err| panic!("cannot read {relative}: {err}"))
}

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD))
        .unwrap_or_else(|err| panic!("{DASHBOARD} is not well-formed JSON: {err}"))
}

/// The panels that show data: every panel but rows, with the panels of collapsed rows.
fn data_panels(dashboard: &Value) -> Vec<&Value> {
    let mut panels = Vec::new();
    for panel in dashboard["panels"].as_array().expect("a panels array") {
        if panel["type"] == "row" {
            panels.extend(panel["panels"].as_array().into_iter().flatten());
        } else {
            panels.push(panel);
        }
    }
    panels
}

/// One query of one panel: `"<panel title>/<refId>"` and its PromQL as written in the dashboard.
struct PanelQuery {
    name: String,
    expr: String,
}

fn panel_queries(dashboard: &Value) -> Vec<PanelQuery> {
    data_panels(dashboard)
        .into_iter()
        .flat_map(|panel| {
            let title = panel["title"].as_str().unwrap_or_default();
            panel["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |target| PanelQuery {
                    name: format!("{title}/{}", target["refId"].as_str().unwrap_or_default()),
                    expr: target["expr"].as_str().unwrap_or_default().to_owned(),
                })
        })
        .collect()
}

/// `expr` with the dashboard's variables and Grafana's built-ins replaced as Grafana would with its
/// defaults: a multi-value variable with "All" selected becomes its `allValue` (`.*`), any other its
/// current value.
fn substitute(dashboard: &Value, expr: &str) -> String {
    let mut values: Vec<(String, String)> = BUILT_INS
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect();
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = variable["name"].as_str().expect("a variable has a name");
        let value = if variable["includeAll"] == true {
            variable["allValue"].as_str()
        } else {
            variable["current"]["value"].as_str()
        };
        if let Some(value) = value {
            values.push((name.to_owned(), value.to_owned()));
        }
    }
    // Longest name first, so `$a` never eats the start of `$ab`.
    values.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
    let mut out = expr.to_owned();
    for (name, value) in &values {
        out = out.replace(&format!("${{{name}}}"), value);
        out = out.replace(&format!("${name}"), value);
    }
    assert!(
        !out.contains('$'),
        "`{expr}` uses a variable neither the dashboard nor Grafana defines: `{out}`"
    );
    out
}

#[test]
fn the_dashboard_is_importable_into_grafana() {
    let dashboard = dashboard();
    assert!(dashboard["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(dashboard["uid"].as_str().is_some_and(|u| !u.is_empty()));
    let schema = dashboard["schemaVersion"]
        .as_u64()
        .expect("a schemaVersion");
    assert!(
        (36..=41).contains(&schema),
        "schemaVersion {schema}: Grafana 9 to 11 expect 36 to 41"
    );
    // Imported as a file or provisioned, the dashboard asks for a Prometheus data source through a
    // variable, never through a data source uid of one particular Grafana.
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("a templating list");
    let datasource = variables
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("a variable of type datasource");
    assert_eq!(datasource["query"], "prometheus");
    let datasource_ref = format!("${{{}}}", datasource["name"].as_str().unwrap());

    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let id = panel["id"].as_u64().expect("every panel has a numeric id");
        assert!(ids.insert(id), "panel id {id} is used twice");
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64().unwrap(), grid["w"].as_u64().unwrap());
        assert!(x + w <= 24 && grid["h"].as_u64().unwrap() > 0, "{grid}");
    }
    let panels = data_panels(&dashboard);
    assert!(panels.len() >= 10, "only {} panels", panels.len());
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "a panel without a title: {panel}");
        assert_eq!(
            panel["datasource"]["uid"].as_str(),
            Some(datasource_ref.as_str()),
            "{title}: not on the datasource variable"
        );
        let targets = panel["targets"].as_array().map(Vec::as_slice);
        let targets = targets.unwrap_or_default();
        assert!(!targets.is_empty(), "{title}: no query");
        let mut ref_ids = BTreeSet::new();
        for target in targets {
            let ref_id = target["refId"].as_str().unwrap_or_default();
            assert!(ref_ids.insert(ref_id), "{title}: refId {ref_id:?} twice");
            assert!(
                target["expr"]
                    .as_str()
                    .is_some_and(|e| !e.trim().is_empty()),
                "{title}/{ref_id}: no expr"
            );
            assert_eq!(
                target["datasource"]["uid"].as_str(),
                Some(datasource_ref.as_str()),
                "{title}/{ref_id}: not on the datasource variable"
            );
        }
    }
}

#[test]
fn every_documented_metric_has_a_panel() {
    let doc = read(METRICS_DOC);
    let start = doc.find("\n## Metrics\n").expect("a ## Metrics section");
    let section = &doc[start + 1..];
    let section = &section[..section[3..]
        .find("\n## ")
        .map_or(section.len(), |end| end + 3)];
    let documented: BTreeSet<&str> = section
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("sluice_"))
        .collect();
    assert!(documented.len() >= 10, "{documented:?}");
    let queries = panel_queries(&dashboard());
    let missing: Vec<&str> = documented
        .into_iter()
        .filter(|metric| !queries.iter().any(|q| q.expr.contains(metric)))
        .collect();
    assert!(
        missing.is_empty(),
        "{METRICS_DOC} documents metrics no panel of {DASHBOARD} shows: {missing:?}"
    );
}

// ------------------------------------------------------------------------------------------------
// Every query against a real Prometheus scraping a real Sluice.

/// A tenant with a tiny limit (3 per minute): some of its checks are denied.
const TIGHT_LIMIT: u32 = 3;
/// Rounds of traffic, spread over several scrapes so every rate has samples before and after.
const ROUNDS: usize = 6;
const ROUND_PAUSE: Duration = Duration::from_millis(600);

fn request(tenant: &str, method: &str, path: &str) -> RateLimitRequest {
    let entry = |key: &str, value: &str| Entry {
        key: key.into(),
        value: value.into(),
    };
    RateLimitRequest {
        domain: "edge".into(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![
                entry("tenant_id", tenant),
                entry("path", path),
                entry("method", method),
            ],
            ..Default::default()
        }],
        hits_addend: 0,
    }
}

fn unique_tenant(name: &str) -> String {
    format!("{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// Sluice counting in the shared test Redis under its own key prefix.
async fn spawn_on_redis() -> TestApp {
    let url = support::redis_url().await;
    let prefix = support::unique_redis_prefix();
    spawn_app_with(move |s| {
        s.redis_url = Some(secret(&url));
        s.redis_key_prefix = prefix;
        // A debug build on a busy 2-core runner sometimes misses the production 50 ms.
        s.redis_timeout_ms = 2_000;
    })
    .await
}

/// `GET /metrics` until it holds `needle`.
async fn wait_for_metric(app: &TestApp, needle: &str) {
    for _ in 0..100 {
        let metrics = http_get(app.http_addr, "/metrics").await.unwrap().body;
        if metrics.contains(needle) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("/metrics never showed {needle}");
}

/// The samples of one panel query, by `"<panel title>/<refId>"`.
struct Results(BTreeMap<String, Vec<Sample>>);

impl Results {
    #[track_caller]
    fn of(&self, name: &str) -> &[Sample] {
        self.0.get(name).unwrap_or_else(|| {
            panic!(
                "no panel query {name:?}; the dashboard has {:?}",
                self.0.keys()
            )
        })
    }

    /// The one sample of a query that aggregates everything away.
    #[track_caller]
    fn single(&self, name: &str) -> f64 {
        match self.of(name) {
            [sample] => sample.value,
            samples => panic!("{name}: expected one sample, got {samples:?}"),
        }
    }

    /// The value of the sample that carries every one of `labels`.
    #[track_caller]
    fn labelled(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let samples = self.of(name);
        samples
            .iter()
            .find(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .unwrap_or_else(|| panic!("{name}: no sample with {labels:?} in {samples:?}"))
            .value
    }

    /// Every value of a query.
    fn values(&self, name: &str) -> Vec<f64> {
        self.of(name).iter().map(|s| s.value).collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_query_answers_with_plausible_values_from_a_real_prometheus() {
    let dashboard = dashboard();
    let queries = panel_queries(&dashboard);

    // Arrange: Sluice on Redis; a tight tenant, a roomy one, and one without policies.
    let app = spawn_on_redis().await;
    let admin = app.admin_token();
    let (tight, roomy, stranger) = (
        unique_tenant("tight"),
        unique_tenant("roomy"),
        unique_tenant("stranger"),
    );
    app.create_ok(&admin, new_policy(&tight, "GET /v1/**", TIGHT_LIMIT))
        .await;
    app.create_ok(&admin, new_policy(&roomy, "GET /v1/**", 10_000))
        .await;
    app.create_ok(&admin, new_policy(&roomy, "POST /v1/orders", 10_000))
        .await;
    wait_for_metric(&app, "\nsluice_policies 3\n").await;
    wait_for_metric(&app, "\nsluice_redis_up 1\n").await;

    // One unmatched check per tenant gives each its per-tenant series (at 0 for the other
    // decisions) before the first scrape, as in a service that has run a while: rate() cannot see
    // increments made before a series' first sample, and the tight tenant's allowance is spent in
    // the first round.
    let mut rls = RateLimitServiceClient::new(app.channel.clone());
    let mut sent = 0u32;
    for tenant in [&tight, &roomy, &stranger] {
        rls.should_rate_limit(request(tenant, "GET", "/warm-up"))
            .await
            .unwrap_or_else(|status| panic!("ShouldRateLimit failed: {status:?}"));
        sent += 1;
    }

    let prometheus = PrometheusServer::start(app.http_addr, SCRAPE_EVERY).await;
    let prometheus_pid = prometheus.pid();
    prometheus
        .wait_for(
            "the first scrape of Sluice",
            "up{job=\"sluice\"}",
            Duration::from_secs(20),
            |s| s.len() == 1 && s[0].value == 1.0,
        )
        .await;

    // Act: traffic over several scrapes.
    let (mut tight_denied, mut roomy_allowed) = (0, 0);
    for _ in 0..ROUNDS {
        let calls = [
            (&tight, "GET", "/v1/items"),
            (&tight, "GET", "/v1/items/7"),
            (&roomy, "GET", "/v1/items"),
            (&roomy, "POST", "/v1/orders"),
            (&stranger, "GET", "/v1/items"),
        ];
        for (tenant, method, path) in calls {
            let answer = rls
                .should_rate_limit(request(tenant, method, path))
                .await
                .unwrap_or_else(|status| panic!("ShouldRateLimit failed: {status:?}"))
                .into_inner();
            sent += 1;
            let code = Code::try_from(answer.overall_code).expect("a known code");
            if *tenant == tight && code == Code::OverLimit {
                tight_denied += 1;
            }
            if *tenant == roomy && code == Code::Ok {
                roomy_allowed += 1;
            }
        }
        tokio::time::sleep(ROUND_PAUSE).await;
    }
    assert!(tight_denied > 0 && roomy_allowed == 2 * ROUNDS);
    // Until Prometheus has scraped the last decision.
    prometheus
        .wait_for(
            "a scrape after the traffic",
            "sum(sluice_checks_total{job=\"sluice\"})",
            Duration::from_secs(20),
            |s| s.len() == 1 && s[0].value == f64::from(sent),
        )
        .await;

    // Assert: every query answers, with finite, non-negative numbers.
    let mut results = Results(BTreeMap::new());
    let mut failures = Vec::new();
    for query in &queries {
        let expr = substitute(&dashboard, &query.expr);
        match prometheus.query(&expr).await {
            Err(err) => failures.push(format!("{}: `{expr}`: {err}", query.name)),
            Ok(samples) if samples.is_empty() => {
                failures.push(format!("{}: `{expr}` returned nothing", query.name))
            }
            Ok(samples) => {
                if let Some(bad) = samples
                    .iter()
                    .find(|s| !s.value.is_finite() || s.value < 0.0)
                {
                    failures.push(format!("{}: `{expr}` returned {bad:?}", query.name));
                }
                results.0.insert(query.name.clone(), samples);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "panel queries that do not work:\n{}\n--- Prometheus log\n{}",
        failures.join("\n"),
        prometheus.log()
    );

    // ...and the panels show what the traffic did.
    let r = &results;
    assert_eq!(r.single("Ready instances/A"), 1.0);
    assert_eq!(r.single("Ready instances/B"), 1.0);
    assert_eq!(r.single("Redis up/A"), 1.0);
    assert_eq!(r.single("Circuit breaker/A"), 0.0);
    assert!(r.single("Checks per second/A") > 0.0);
    assert_eq!(r.single("Policies/A"), 3.0);
    assert!(r.single("Oldest policy snapshot/A") < 120.0);

    let decisions = "Decisions by decision/A";
    for decision in ["allowed", "denied", "unmatched"] {
        assert!(
            r.labelled(decisions, &[("decision", decision)]) > 0.0,
            "{decision}: {:?}",
            r.of(decisions)
        );
    }
    assert_eq!(r.labelled(decisions, &[("decision", "fail_open")]), 0.0);
    let latency: Vec<f64> = ["A", "B", "C"]
        .map(|p| r.single(&format!("Check latency/{p}")))
        .to_vec();
    assert!(
        latency[0] > 0.0 && latency.is_sorted(),
        "p50, p90, p99: {latency:?}"
    );
    assert!(
        r.values("Fail-open by reason/A").iter().all(|v| *v == 0.0),
        "{:?}",
        r.of("Fail-open by reason/A")
    );

    let per_tenant = "Allowed and denied per tenant (top $top_tenants)/A";
    let tenant_decision = |tenant: &str, decision: &str| {
        r.labelled(per_tenant, &[("tenant", tenant), ("decision", decision)])
    };
    assert!(tenant_decision(&tight, "allowed") > 0.0);
    assert!(tenant_decision(&tight, "denied") > 0.0);
    assert!(tenant_decision(&roomy, "allowed") > 0.0);
    assert_eq!(tenant_decision(&roomy, "denied"), 0.0);
    let share = "Denied share per tenant (top $top_tenants)/A";
    let tight_share = r.labelled(share, &[("tenant", &tight)]);
    assert!(
        tight_share > 0.5 && tight_share <= 1.0,
        "{tight}: {tight_share}"
    );
    assert_eq!(r.labelled(share, &[("tenant", &roomy)]), 0.0);
    assert!(
        r.of(share).iter().all(|s| s.value <= 1.0),
        "{:?}",
        r.of(share)
    );

    assert_eq!(r.values("Redis errors/A"), [0.0]);
    assert!(r.single("Redis call latency/C") > 0.0);
    assert!(r.single("Requests per Redis call/A") >= 1.0);
    assert!(r.single("Requests per Redis call/B") >= 1.0);
    assert!(r.single("Requests per Redis call/C") > 0.0);
    assert_eq!(r.values("Redis up/A"), [1.0]);
    assert_eq!(r.values("Circuit breaker open/A"), [0.0]);
    // One series per state entered (registered at 0 with Redis), or the `vector(0)` fallback.
    assert!(
        r.values("Circuit breaker transitions/A")
            .iter()
            .all(|v| *v == 0.0),
        "{:?}",
        r.of("Circuit breaker transitions/A")
    );
    assert_eq!(r.values("Policies/A"), [3.0]);
    assert!(r.single("Policy snapshot age/A") < 120.0);
    assert_eq!(r.values("Policy reload errors/A"), [0.0]);
    assert_eq!(r.values("Readiness/A"), [1.0]);
    assert_eq!(r.values("Readiness/B"), [1.0]);

    let should_rate_limit = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";
    assert!(
        r.labelled(
            "gRPC requests by method and code/A",
            &[("method", should_rate_limit), ("code", "OK")]
        ) > 0.0
    );
    assert!(
        r.labelled(
            "gRPC latency p99 by method/A",
            &[("method", should_rate_limit)]
        ) > 0.0
    );

    // The server is gone with its guard.
    drop(prometheus);
    assert!(
        !Path::new(&format!("/proc/{prometheus_pid}")).exists(),
        "Prometheus (pid {prometheus_pid}) still runs after its guard was dropped"
    );
}
