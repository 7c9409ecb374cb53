//! A Redis Cluster primary failing under load: three primaries with a replica each, two Sluice
//! instances, many tenants spread over every primary, and one primary killed (or frozen) while
//! clients keep checking. Only the tenants whose slots that primary held may fail open; everyone
//! else keeps exact counts at full speed; the replica takes over and those tenants are counted
//! again within seconds; and no tenant is ever admitted past its limit by counting.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use sluice::{
    proto::envoy::service::ratelimit::v3::{
        RateLimitRequest, rate_limit_response::Code,
        rate_limit_service_client::RateLimitServiceClient,
    },
    proto::sluice::admin::v1 as pb,
    settings::Settings,
};

use crate::{
    helpers::{TestApp, http_get, secret, spawn_app_with, try_spawn_app_on},
    rate_limit::{descriptor, request},
    support::{self, OwnedRedisCluster},
};

/// Sluice's counter deadline here: short enough that a dead node costs little, long enough for
/// debug builds of two instances on two cores.
const DEADLINE: Duration = Duration::from_millis(300);
/// What an answer may take beyond the deadline on a busy machine.
const SLACK: Duration = Duration::from_millis(700);
/// Per tenant per minute: reached by the busiest tenants during the run.
const LIMIT: u32 = 150;
const TENANTS: usize = 36;
const CLIENTS: usize = 12;
/// Load before the fault, and after it.
const BEFORE: Duration = Duration::from_millis(1_500);
const AFTER: Duration = Duration::from_secs(14);
/// Counting must resume on the failed primary's slots within this long of the fault.
const RESUMED_WITHIN: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug)]
enum Fault {
    Kill,
    Freeze,
}

/// What one check was answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    /// Decided by the counter (or its over-limit cache): a limit came back.
    Counted { allowed: bool },
    /// No limit came back: the counter step failed and the check was let through.
    FailedOpen,
}

struct Sample {
    tenant: usize,
    /// Since the fault (negative: before it), in milliseconds.
    at_ms: i64,
    took: Duration,
    answer: Answer,
}

fn check_request(tenant: &str) -> RateLimitRequest {
    request(vec![descriptor(&[
        ("tenant_id", tenant),
        ("path", "/v1/orders"),
    ])])
}

async fn ask(
    client: &mut RateLimitServiceClient<tonic::transport::Channel>,
    tenant: &str,
) -> Answer {
    let response = client
        .should_rate_limit(check_request(tenant))
        .await
        .unwrap_or_else(|status| panic!("a check failed with {status:?}: fail-open never errors"))
        .into_inner();
    match response.statuses[0].current_limit {
        Some(_) => Answer::Counted {
            allowed: response.overall_code == Code::Ok as i32,
        },
        None => Answer::FailedOpen,
    }
}

async fn two_instances(cluster: &OwnedRedisCluster) -> (TestApp, TestApp) {
    let (url, prefix) = (cluster.url.clone(), support::unique_redis_prefix());
    let configure = move |s: &mut Settings| {
        s.redis_url = Some(secret(&url));
        s.redis_key_prefix = prefix;
        s.redis_timeout_ms = DEADLINE.as_millis() as u64;
    };
    let a = spawn_app_with(configure.clone()).await;
    let b = try_spawn_app_on(&a.database_url, configure)
        .await
        .unwrap_or_else(|err| panic!("the second instance did not start: {err}"));
    (a, b)
}

async fn failover_under_load(fault: Fault) {
    // Arrange: the cluster, two instances, one default policy for every tenant
    let mut cluster = OwnedRedisCluster::start_with_replicas(3).await;
    let (a, b) = two_instances(&cluster).await;
    let policy = pb::Policy {
        tenant_id: "*".into(),
        endpoint_pattern: "/**".into(),
        max_requests: LIMIT,
        window_seconds: 60,
        ..Default::default()
    };
    a.create_ok(&a.admin_token(), policy).await;
    let tenants: Vec<String> = (0..TENANTS)
        .map(|i| format!("t{i}-{}", &uuid::Uuid::new_v4().simple().to_string()[..6]))
        .collect();
    let owner: Vec<u16> = tenants
        .iter()
        .map(|t| {
            cluster
                .primary_of_slot(cluster.slot_of(t))
                .expect("every slot has a primary")
        })
        .collect();
    let victim = owner[0];
    let on_victim: Vec<bool> = owner.iter().map(|port| *port == victim).collect();
    assert!(
        on_victim.iter().any(|v| !v),
        "every tenant landed on one primary; rerun"
    );
    // Both instances see the policy (b by NOTIFY) before the clock starts.
    for app in [&a, &b] {
        let mut client = RateLimitServiceClient::new(app.channel.clone());
        let started = Instant::now();
        while ask(&mut client, "warm-up").await == Answer::FailedOpen {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no policy on an instance"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // Act: clients on both instances, the fault after BEFORE
    let samples = Arc::new(Mutex::new(Vec::new()));
    let fault_at = Instant::now() + BEFORE;
    let end = fault_at + AFTER;
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        let channel = if c % 2 == 0 { &a } else { &b }.channel.clone();
        let (tenants, samples) = (tenants.clone(), Arc::clone(&samples));
        clients.spawn(async move {
            let mut client = RateLimitServiceClient::new(channel);
            let mut n = c;
            while Instant::now() < end {
                let tenant = n % TENANTS;
                let started = Instant::now();
                let answer = ask(&mut client, &tenants[tenant]).await;
                let at_ms = if started >= fault_at {
                    (started - fault_at).as_millis() as i64
                } else {
                    -((fault_at - started).as_millis() as i64)
                };
                samples.lock().unwrap().push(Sample {
                    tenant,
                    at_ms,
                    took: started.elapsed(),
                    answer,
                });
                n += CLIENTS + 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
    }
    // What /readyz says about Redis around the fault (it stays 200 either way: operations.md).
    let watching = {
        let http = a.http_addr;
        tokio::spawn(async move {
            tokio::time::sleep_until(fault_at.into()).await;
            let mut seen = Vec::new();
            while Instant::now() < fault_at + Duration::from_millis(2_500) {
                // /readyz must answer throughout: a Redis fault never takes the HTTP listener down.
                let response = http_get(http, "/readyz")
                    .await
                    .unwrap_or_else(|err| panic!("/readyz did not answer during the fault: {err}"));
                seen.push((response.status, response.body));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            seen
        })
    };
    tokio::time::sleep_until(fault_at.into()).await;
    match fault {
        Fault::Kill => cluster.kill(victim),
        Fault::Freeze => cluster.freeze(victim),
    }
    clients.join_all().await;
    let promoted = cluster.primary_of_slot(cluster.slot_of(&tenants[0]));
    if let Fault::Freeze = fault {
        cluster.thaw(victim);
    }

    // Assert: /readyz said Redis was down while a primary was, stayed 200, and says up again
    let seen = watching.await.unwrap();
    assert!(seen.iter().all(|(status, _)| *status == 200), "{seen:?}");
    assert!(
        seen.iter().any(|(_, body)| body.contains("redis: down")),
        "/readyz never said a primary was down: {seen:?}"
    );
    for app in [&a, &b] {
        within_five_seconds(app, "/readyz", "redis: up", |body| {
            body.contains("redis: up")
        })
        .await;
        // ...and the failed primary's open breaker left with it: nothing is open any more.
        within_five_seconds(app, "/metrics", "sluice_circuit_open 0", |body| {
            body.lines().any(|line| line == "sluice_circuit_open 0")
        })
        .await;
    }
    let samples = std::mem::take(&mut *samples.lock().unwrap());
    assert!(
        samples.len() > 1_000,
        "only {} checks were sent",
        samples.len()
    );
    assert_ne!(promoted, Some(victim), "no replica took over from {victim}");
    assert!(
        promoted.is_some(),
        "the failed primary's slots have no primary"
    );
    let mut per_tenant: HashMap<usize, (u32, u32, u32)> = HashMap::new(); // (sent, counted allowed, failed open)
    for sample in samples.iter() {
        let entry = per_tenant.entry(sample.tenant).or_default();
        entry.0 += 1;
        match sample.answer {
            Answer::Counted { allowed: true } => entry.1 += 1,
            Answer::Counted { allowed: false } => {}
            Answer::FailedOpen => entry.2 += 1,
        }
        assert!(
            sample.took <= DEADLINE + SLACK,
            "a check of tenant {} took {:?} at {} ms",
            sample.tenant,
            sample.took,
            sample.at_ms
        );
    }
    let healthy_fail_open: Vec<_> = samples
        .iter()
        .filter(|s| !on_victim[s.tenant] && s.answer == Answer::FailedOpen)
        .map(|s| (s.tenant, s.at_ms))
        .collect();
    if !healthy_fail_open.is_empty() {
        panic!(
            "tenants on healthy primaries failed open ({} times; first (tenant, ms after the \
             fault): {:?}); fail-open by reason: {}",
            healthy_fail_open.len(),
            &healthy_fail_open[..healthy_fail_open.len().min(5)],
            fail_open_reasons(&[&a, &b]).await
        );
    }
    for (tenant, (sent, allowed, failed_open)) in &per_tenant {
        if on_victim[*tenant] {
            assert!(
                *allowed <= LIMIT,
                "tenant {tenant} on the failed primary: {allowed} counted as allowed, limit {LIMIT}"
            );
        } else {
            assert_eq!(*failed_open, 0);
            assert_eq!(
                *allowed,
                (*sent).min(LIMIT),
                "tenant {tenant} on a healthy primary: exact counts"
            );
        }
    }
    let victim_fail_open: Vec<i64> = samples
        .iter()
        .filter(|s| on_victim[s.tenant] && s.answer == Answer::FailedOpen)
        .map(|s| s.at_ms)
        .collect();
    assert!(
        !victim_fail_open.is_empty(),
        "no check of the failed primary's tenants failed open: was it hit at all?"
    );
    let last_fail_open = *victim_fail_open.iter().max().unwrap();
    let slowest = samples.iter().map(|s| s.took).max().unwrap_or_default();
    eprintln!(
        "{fault:?}: {} checks; the failed primary's tenants failed open {} times, from {} to \
         {last_fail_open} ms after the fault; other tenants 0 times; slowest answer {slowest:?}",
        samples.len(),
        victim_fail_open.len(),
        victim_fail_open.iter().min().unwrap(),
    );
    assert!(
        last_fail_open >= 0 && last_fail_open <= RESUMED_WITHIN.as_millis() as i64,
        "the failed primary's tenants failed open until {last_fail_open} ms after the fault"
    );
    let counted_after = samples
        .iter()
        .filter(|s| on_victim[s.tenant] && s.at_ms > last_fail_open)
        .filter(|s| matches!(s.answer, Answer::Counted { .. }))
        .count();
    assert!(
        counted_after > 0,
        "the failed primary's tenants were never counted again"
    );
}

/// Polls `path` on `app`'s HTTP listener until its body satisfies `done` (described as `what`),
/// for at most five seconds.
async fn within_five_seconds(app: &TestApp, path: &str, what: &str, done: impl Fn(&str) -> bool) {
    let started = Instant::now();
    loop {
        let body = http_get(app.http_addr, path)
            .await
            .unwrap_or_else(|err| panic!("{path} did not answer: {err}"))
            .body;
        if done(&body) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{path} never showed {what:?} after the failover; last: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The instances' `sluice_checks_total{decision="fail_open"}` series, for a failure message.
async fn fail_open_reasons(apps: &[&TestApp]) -> String {
    let mut lines = Vec::new();
    for app in apps {
        let metrics = http_get(app.http_addr, "/metrics")
            .await
            .map(|response| response.body)
            .unwrap_or_default();
        lines.extend(
            metrics
                .lines()
                .filter(|line| {
                    line.starts_with("sluice_checks_total") && line.contains("fail_open")
                })
                .map(str::to_owned),
        );
    }
    lines.join("; ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_primary_fails_open_only_its_own_tenants_until_its_replica_takes_over() {
    failover_under_load(Fault::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_primary_fails_open_only_its_own_tenants_until_its_replica_takes_over() {
    failover_under_load(Fault::Freeze).await;
}
