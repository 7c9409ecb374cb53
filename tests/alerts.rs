//! The Prometheus alert rules in `deploy/prometheus/sluice-alerts.yml`: promtool accepts them and
//! passes their unit tests (`sluice-alerts.test.yml`), and they cannot drift from the rest of the
//! repository — every alert has a case that must fire and one that must not, a section in
//! `docs/runbook.md` its `runbook_url` points to, and uses only metrics Sluice exports and documents.
//!
//! promtool comes from Debian's `prometheus` package (`.ci/run` installs it); without it these tests
//! fail, naming the install step — they never pass by skipping.

#[path = "support/mod.rs"]
mod support;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

const RULES: &str = "deploy/prometheus/sluice-alerts.yml";
const RULE_TESTS: &str = "deploy/prometheus/sluice-alerts.test.yml";
const RUNBOOK: &str = "docs/runbook.md";

/// Every metric family the rules name, in an expression or an annotation, with how Prometheus
/// exposes it. Sluice's own: SPEC §5 and `src/telemetry.rs`; `up` is Prometheus's own and is not
/// listed.
const RULE_METRICS: &[(&str, Kind)] = &[
    ("sluice_checks_total", Kind::Plain),
    ("sluice_check_duration_seconds", Kind::Histogram),
    ("sluice_redis_errors_total", Kind::Plain),
    ("sluice_circuit_open", Kind::Plain),
    ("sluice_redis_up", Kind::Plain),
    ("sluice_grpc_requests_total", Kind::Plain),
    // Added with issue 11: readiness, the policy snapshot's age and per-tenant decisions.
    ("sluice_ready", Kind::Plain),
    ("sluice_policy_snapshot_timestamp_seconds", Kind::Plain),
    ("sluice_policy_reload_errors_total", Kind::Plain),
    ("sluice_tenant_checks_total", Kind::Plain),
];

#[derive(Debug, Clone, Copy)]
enum Kind {
    /// A counter or gauge: one series name.
    Plain,
    /// A histogram: `_bucket`, `_count` and `_sum` series.
    Histogram,
}

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo_path(relative))
        .unwrap_or_else(|err| panic!("cannot read {relative}: {err}"))
}

/// Runs promtool with `args`, panicking with its whole output unless it succeeds; returns stdout.
fn promtool(args: &[&str]) -> String {
    let promtool = support::promtool_path();
    let output = Command::new(&promtool)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|err| panic!("cannot run {}: {err}", promtool.display()));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "`promtool {}` failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        args.join(" "),
        output.status
    );
    stdout
}

/// One `- alert:` rule of the rules file, as text: its name and every line up to the next rule
/// (`expr`, `for`, labels, annotations).
struct AlertRule {
    name: String,
    body: String,
}

/// The alerting rules of `sluice-alerts.yml`, read line by line (the file keeps one rule per
/// `- alert:` item; promtool's own rule count in [`promtool_accepts_the_alert_rules`] checks that
/// none was missed).
fn alert_rules() -> Vec<AlertRule> {
    let mut rules: Vec<AlertRule> = Vec::new();
    for line in read(RULES).lines() {
        let trimmed = line.trim_start();
        if let Some(name) = trimmed.strip_prefix("- alert:") {
            rules.push(AlertRule {
                name: name.trim().to_owned(),
                body: String::new(),
            });
        } else if trimmed.starts_with("- name:") || trimmed.starts_with("- record:") {
            // A new group (or a recording rule) ends the alert before it.
            rules.push(AlertRule {
                name: String::new(),
                body: String::new(),
            });
        } else if let Some(rule) = rules.last_mut() {
            rule.body.push_str(line);
            rule.body.push('\n');
        }
    }
    rules.retain(|rule| !rule.name.is_empty());
    assert!(!rules.is_empty(), "no `- alert:` rule in {RULES}");
    rules
}

/// Every `sluice_…` name in `text`.
fn sluice_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("sluice_") {
        let preceded_by_name = rest[..start]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if !preceded_by_name {
            names.push(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

/// The family a series name belongs to, if it is one of [`RULE_METRICS`].
fn family_of(series: &str) -> Option<&'static str> {
    RULE_METRICS
        .iter()
        .find(|(family, kind)| match kind {
            Kind::Plain => series == *family,
            Kind::Histogram => ["_bucket", "_count", "_sum"]
                .iter()
                .any(|suffix| series.strip_suffix(suffix) == Some(family)),
        })
        .map(|(family, _)| *family)
}

#[test]
fn promtool_accepts_the_alert_rules() {
    let stdout = promtool(&["check", "rules", RULES]);
    let alerts = alert_rules().len();
    assert!(
        stdout.contains(&format!("SUCCESS: {alerts} rules found")),
        "promtool should count the {alerts} alerts this test reads from {RULES}:\n{stdout}"
    );
}

#[test]
fn every_alert_passes_its_promtool_unit_tests() {
    let stdout = promtool(&["test", "rules", RULE_TESTS]);
    assert!(stdout.contains("SUCCESS"), "{stdout}");
}

#[test]
fn every_alert_has_a_case_that_must_fire_and_one_that_must_not() {
    let tests = read(RULE_TESTS);
    let lines: Vec<&str> = tests.lines().map(str::trim).collect();
    for rule in alert_rules() {
        let mut fires = false;
        let mut stays_quiet = false;
        for (i, line) in lines.iter().enumerate() {
            if line.strip_prefix("alertname:").map(str::trim) != Some(rule.name.as_str()) {
                continue;
            }
            match lines.get(i + 1).copied() {
                Some("exp_alerts: []") => stays_quiet = true,
                Some("exp_alerts:") => fires = true,
                other => panic!(
                    "{RULE_TESTS}: `alertname: {}` should be followed by `exp_alerts:`, not {other:?}",
                    rule.name
                ),
            }
        }
        assert!(
            fires,
            "{RULE_TESTS} has no case where {} must fire",
            rule.name
        );
        assert!(
            stays_quiet,
            "{RULE_TESTS} has no case where {} must not fire (`exp_alerts: []`)",
            rule.name
        );
    }
}

#[test]
fn every_alert_says_how_long_how_bad_and_where_its_runbook_section_is() {
    let runbook = read(RUNBOOK);
    let headings: Vec<&str> = runbook
        .lines()
        .filter_map(|line| line.strip_prefix("### "))
        .map(str::trim)
        .collect();
    let rules = alert_rules();
    for rule in &rules {
        let name = &rule.name;
        for needed in ["for:", "summary:", "description:"] {
            assert!(
                rule.body.contains(needed),
                "alert {name} in {RULES} has no `{needed}`"
            );
        }
        assert!(
            ["critical", "warning", "info"]
                .iter()
                .any(|level| rule.body.contains(&format!("severity: {level}\n"))),
            "alert {name} in {RULES} needs a `severity:` label of critical, warning or info"
        );
        let url = format!("runbook_url: \"{RUNBOOK}#{}\"", heading_anchor(name));
        assert!(
            rule.body.contains(&url),
            "alert {name} in {RULES} should have `{url}`"
        );
        assert!(
            headings.contains(&name.as_str()),
            "{RUNBOOK} has no `### {name}` section (what it means, how to confirm, what to do)"
        );
    }
    // And no section for an alert that no longer exists.
    for heading in headings.iter().filter(|h| h.starts_with("Sluice")) {
        assert!(
            rules.iter().any(|rule| rule.name == *heading),
            "{RUNBOOK} has a section `### {heading}` but {RULES} has no such alert"
        );
    }
}

/// The anchor GitHub gives a Markdown heading: lower case, spaces to `-`, other punctuation dropped.
fn heading_anchor(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of every heading of a Markdown file (outside fenced code blocks).
fn anchors_of(markdown: &str) -> Vec<String> {
    let mut in_fence = false;
    let mut anchors = Vec::new();
    for line in markdown.lines() {
        if line.starts_with("```") {
            in_fence = !in_fence;
        } else if !in_fence && line.starts_with('#') {
            anchors.push(heading_anchor(line.trim_start_matches('#').trim()));
        }
    }
    anchors
}

#[test]
fn the_runbooks_links_lead_to_files_and_headings_that_exist() {
    let runbook = read(RUNBOOK);
    let docs = repo_path("docs");
    let mut broken = Vec::new();
    for (at, _) in runbook.match_indices("](") {
        let rest = &runbook[at + 2..];
        let target = &rest[..rest.find(')').expect("a closed link")];
        if target.starts_with("http://") || target.starts_with("https://") {
            continue;
        }
        let (file, anchor) = target.split_once('#').unwrap_or((target, ""));
        let path = if file.is_empty() {
            repo_path(RUNBOOK)
        } else {
            docs.join(file)
        };
        if !path.exists() {
            broken.push(format!("{target}: no file {}", path.display()));
            continue;
        }
        if !anchor.is_empty() {
            let text = std::fs::read_to_string(&path).expect("a readable document");
            if !anchors_of(&text).iter().any(|known| known == anchor) {
                broken.push(format!("{target}: no such heading in {}", path.display()));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "{RUNBOOK} has broken links:\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_rules_use_only_the_metrics_listed_here() {
    let mut used = Vec::new();
    for rule in alert_rules() {
        // The expression, and the annotations that send on-call to a metric.
        for series in sluice_names(&rule.body) {
            let family = family_of(&series).unwrap_or_else(|| {
                panic!(
                    "alert {} uses {series}, which is not in RULE_METRICS: check that Sluice \
                     exports it (src/telemetry.rs, SPEC §5), then list it there",
                    rule.name
                )
            });
            used.push(family);
        }
    }
    for (family, _) in RULE_METRICS {
        assert!(
            used.contains(family),
            "RULE_METRICS lists {family}, which no rule uses any more"
        );
    }
}

/// Every file under `dir` whose name ends with `extension`, recursively.
fn files_under(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|err| panic!("cannot list {}: {err}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            files.extend(files_under(&path, extension));
        } else if path.to_string_lossy().ends_with(extension) {
            files.push(path);
        }
    }
    files
}

#[test]
fn the_metrics_the_rules_use_are_exported_and_documented() {
    let sources: String = files_under(&repo_path("src"), ".rs")
        .iter()
        .map(|path| std::fs::read_to_string(path).expect("a readable source file"))
        .collect();
    let docs: String = files_under(&repo_path("docs"), ".md")
        .into_iter()
        .filter(|path| !path.ends_with("runbook.md"))
        .chain([repo_path("README.md")])
        .map(|path| std::fs::read_to_string(path).expect("a readable document"))
        .collect();
    let mut missing = Vec::new();
    for (family, _) in RULE_METRICS {
        if !sources.contains(&format!("\"{family}\"")) {
            missing.push(format!("{family}: not registered anywhere in src/"));
        }
        if !docs.contains(family) {
            missing.push(format!(
                "{family}: not described in README.md or docs/ (besides the runbook)"
            ));
        }
    }
    assert!(
        missing.is_empty(),
        "the alert rules rely on metrics Sluice does not export or document:\n{}",
        missing.join("\n")
    );
}
