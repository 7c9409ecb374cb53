//! The hot-path benchmark (`cargo bench --bench checks`, or `scripts/bench.sh`): a load generator
//! that starts Sluice's real [`Application`] in-process (its own tokio runtime, threads named
//! `sluice-srv`), creates a realistic policy set through the admin API, then drives
//! `ShouldRateLimit` over gRPC from a second runtime (threads named `loadgen`) with N concurrent
//! HTTP/2 streams for a fixed time per scenario; plus a microbenchmark of
//! [`RateLimiter::decide`] without the network. Results and method: `docs/benchmarks.md`.
//!
//! Settings (environment, so `cargo bench` arguments pass through untouched):
//! - `BENCH_SECS` (10): measured seconds per scenario, after 1 s of warm-up;
//! - `BENCH_CONCURRENCY` (64): concurrent requests in flight, over `BENCH_CONNECTIONS` (4)
//!   HTTP/2 connections;
//! - `BENCH_REDIS_URL` (`redis://127.0.0.1:6379`): the Redis the Redis scenarios count in, under
//!   a fresh key prefix per run (keys expire on their own; nothing is ever flushed);
//! - `BENCH_SCENARIOS` (all): a comma list of `micro,memory,redis,hot,unmatched,mixed`;
//! - `BENCH_SERVER_THREADS` (2) and `BENCH_LOADGEN_THREADS` (2): worker threads per runtime;
//! - `BENCH_REDIS_POOL` (Sluice's default): `SLUICE_REDIS_POOL_SIZE` of the server.
//!
//! The machine has two cores shared by Sluice, Redis and this load generator: the numbers are a
//! floor for one instance and mostly useful as ratios between runs of the same script.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use fred::prelude::{Builder, ClientLike, Config};
use fred::types::InfoKind;
use sluice::{
    domain::{EndpointPattern, Limits, Policy, PolicyId, PolicyTenant, TenantId},
    proto::envoy::service::ratelimit::v3::{
        RateLimitRequest, rate_limit_response::Code,
        rate_limit_service_client::RateLimitServiceClient,
    },
    ratelimit::{
        counter::InMemoryCounter,
        request::DescriptorKeys,
        service::{RateLimiter, RateLimiterConfig},
        snapshot::{PolicySnapshot, SharedSnapshot},
    },
    settings::{FailureMode, SecretString},
    telemetry::Metrics,
};

use tonic::transport::Channel;

#[path = "support/client.rs"]
mod client;
#[path = "support/server.rs"]
mod server;

use server::{Server, thread_cpu};

/// Tenants with generous limits, three policies each.
const TENANTS: usize = 100;
/// Tenants with a tiny limit, hammered past it.
const HOT_TENANTS: usize = 2;
const HOT_LIMIT: u32 = 100;
const WARM_UP: Duration = Duration::from_secs(1);
const HS256_SECRET: &str = "bench-secret-bench-secret-bench-secret-0123";

/// The endpoints every normal tenant has a policy for: (method, path a request sends).
const ENDPOINTS: [(&str, &str); 3] = [
    ("GET", "/v1/items/42"),
    ("POST", "/v1/items"),
    ("GET", "/v1/users/7/profile"),
];

struct Options {
    secs: u64,
    concurrency: usize,
    connections: usize,
    redis_url: String,
    scenarios: Vec<String>,
    server_threads: usize,
    loadgen_threads: usize,
    redis_pool: Option<u32>,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(raw) => raw
            .parse()
            .unwrap_or_else(|_| panic!("{name}={raw} is not a valid value")),
        Err(_) => default,
    }
}

impl Options {
    fn from_env() -> Self {
        let scenarios = std::env::var("BENCH_SCENARIOS")
            .unwrap_or_else(|_| "micro,memory,redis,hot,unmatched,mixed".into())
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        Self {
            secs: env_or("BENCH_SECS", 10),
            concurrency: env_or("BENCH_CONCURRENCY", 64),
            connections: env_or("BENCH_CONNECTIONS", 4),
            redis_url: env_or("BENCH_REDIS_URL", "redis://127.0.0.1:6379".to_owned()),
            scenarios,
            server_threads: env_or("BENCH_SERVER_THREADS", 2),
            loadgen_threads: env_or("BENCH_LOADGEN_THREADS", 2),
            redis_pool: std::env::var("BENCH_REDIS_POOL")
                .ok()
                .map(|raw| raw.parse().expect("BENCH_REDIS_POOL is a number")),
        }
    }

    fn wants(&self, scenario: &str) -> bool {
        self.scenarios.iter().any(|s| s == scenario)
    }
}

// ---------------------------------------------------------------------------------------------
// Requests and policies

fn tenant_name(i: usize) -> String {
    format!("t{i:03}")
}

fn hot_tenant_name(i: usize) -> String {
    format!("hot{i}")
}

fn request(tenant: &str, method: &str, path: &str) -> RateLimitRequest {
    client::descriptor_request("edge", tenant, method, path)
}

/// The policies every scenario runs against, as (tenant, pattern, max, window s, burst).
fn policy_specs() -> Vec<(String, &'static str, u32, u32, u32)> {
    let mut specs = Vec::new();
    for t in 0..TENANTS {
        let tenant = tenant_name(t);
        specs.push((tenant.clone(), "GET /v1/items/*", 1_000_000, 60, 0));
        specs.push((tenant.clone(), "POST /v1/items", 500_000, 60, 0));
        // One with a burst limit, so the burst read is part of the mix.
        specs.push((tenant, "/v1/users/**", 1_000_000, 60, 100_000));
    }
    for h in 0..HOT_TENANTS {
        specs.push((hot_tenant_name(h), "*", HOT_LIMIT, 60, 0));
    }
    specs
}

/// Under-limit traffic: every normal tenant, every endpoint.
fn under_limit_requests() -> Vec<RateLimitRequest> {
    (0..TENANTS * ENDPOINTS.len())
        .map(|i| {
            let (method, path) = ENDPOINTS[i % ENDPOINTS.len()];
            request(&tenant_name(i / ENDPOINTS.len()), method, path)
        })
        .collect()
}

fn hot_requests() -> Vec<RateLimitRequest> {
    vec![request(&hot_tenant_name(0), "GET", "/v1/anything")]
}

/// Tenants with no policy (and there is no `*` default): no counter call at all.
fn unmatched_requests() -> Vec<RateLimitRequest> {
    (0..100)
        .map(|i| request(&format!("nobody{i}"), "GET", "/v1/items/1"))
        .collect()
}

/// 90 % under-limit traffic, 10 % from the hot tenants.
fn mixed_requests() -> Vec<RateLimitRequest> {
    let mut requests = Vec::new();
    let under = under_limit_requests();
    for (i, r) in under.into_iter().enumerate() {
        requests.push(r);
        if i % 9 == 8 {
            requests.push(request(
                &hot_tenant_name(i % HOT_TENANTS),
                "GET",
                "/v1/anything",
            ));
        }
    }
    requests
}

// ---------------------------------------------------------------------------------------------
// The server

fn start_server(options: &Options, dir: &Path, redis_prefix: Option<&str>) -> Server {
    let db = dir.join(format!("bench-{}.db", redis_prefix.is_some()));
    server::start(options.server_threads, &db, HS256_SECRET, |settings| {
        settings.redis_url = redis_prefix.map(|_| SecretString::new(options.redis_url.clone()));
        if let Some(prefix) = redis_prefix {
            settings.redis_key_prefix = prefix.to_owned();
        }
        if let Some(pool) = options.redis_pool {
            settings.redis_pool_size = pool;
        }
    })
}

async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("a valid endpoint")
        .tcp_nodelay(true)
        .connect()
        .await
        .unwrap_or_else(|err| panic!("cannot connect to {addr}: {err}"))
}

/// Creates every policy through the admin API, eight calls at a time.
async fn create_policies(addr: SocketAddr) {
    let token = client::admin_token(HS256_SECRET).expect("a token");
    if let Err(status) =
        client::create_policies(channel(addr).await, &token, &policy_specs(), 8).await
    {
        panic!("creating a policy failed: {status:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Load

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    calls_ok: u64,
    calls_over: u64,
    errors: u64,
    allowed: u64,
    denied: u64,
    unmatched: u64,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.latencies_us.extend(other.latencies_us);
        self.calls_ok += other.calls_ok;
        self.calls_over += other.calls_over;
        self.errors += other.errors;
        self.allowed += other.allowed;
        self.denied += other.denied;
        self.unmatched += other.unmatched;
    }
}

/// What Redis reports about itself: CPU seconds and the EVALSHA totals.
#[derive(Default, Clone, Copy)]
struct RedisStats {
    cpu_s: f64,
    evalsha_calls: f64,
    evalsha_usec: f64,
}

async fn redis_stats(client: &fred::clients::Client) -> RedisStats {
    let cpu: String = client.info(Some(InfoKind::Cpu)).await.unwrap_or_default();
    let commands: String = client
        .info(Some(InfoKind::CommandStats))
        .await
        .unwrap_or_default();
    let field = |text: &str, name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let mut stats = RedisStats {
        cpu_s: field(&cpu, "used_cpu_user:") + field(&cpu, "used_cpu_sys:"),
        ..Default::default()
    };
    if let Some(line) = commands
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:"))
    {
        for part in line.split(',') {
            if let Some(v) = part.strip_prefix("calls=") {
                stats.evalsha_calls = v.parse().unwrap_or(0.0);
            } else if let Some(v) = part.strip_prefix("usec=") {
                stats.evalsha_usec = v.parse().unwrap_or(0.0);
            }
        }
    }
    stats
}

/// Drives `requests` (round-robin per stream) at `addr` for warm-up + `secs`, and prints a line.
fn drive(
    options: &Options,
    name: &str,
    addr: SocketAddr,
    requests: Vec<RateLimitRequest>,
    redis: Option<&fred::clients::Client>,
) -> f64 {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(options.loadgen_threads)
        .thread_name("loadgen")
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let requests = Arc::new(requests);
    let measure = Duration::from_secs(options.secs);
    let (tally, elapsed, cpu, redis_delta) = runtime.block_on(async {
        let mut channels = Vec::new();
        for _ in 0..options.connections.max(1) {
            channels.push(channel(addr).await);
        }
        let start = Instant::now();
        let measure_from = start + WARM_UP;
        let end = measure_from + measure;
        let mut tasks = Vec::new();
        for stream in 0..options.concurrency {
            let mut client = RateLimitServiceClient::new(channels[stream % channels.len()].clone());
            let requests = requests.clone();
            tasks.push(tokio::spawn(async move {
                let mut tally = Tally::default();
                let mut next = stream * 7919;
                loop {
                    let sent = Instant::now();
                    if sent >= end {
                        break;
                    }
                    let request = requests[next % requests.len()].clone();
                    next += 1;
                    let result = client.should_rate_limit(request).await;
                    if sent < measure_from {
                        continue;
                    }
                    tally
                        .latencies_us
                        .push(sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                    match result {
                        Ok(response) => {
                            let response = response.into_inner();
                            if response.overall_code == Code::OverLimit as i32 {
                                tally.calls_over += 1;
                            } else {
                                tally.calls_ok += 1;
                            }
                            for status in response.statuses {
                                if status.current_limit.is_none() {
                                    tally.unmatched += 1;
                                } else if status.code == Code::OverLimit as i32 {
                                    tally.denied += 1;
                                } else {
                                    tally.allowed += 1;
                                }
                            }
                        }
                        Err(_) => tally.errors += 1,
                    }
                }
                tally
            }));
        }
        tokio::time::sleep_until(measure_from.into()).await;
        let cpu_before = thread_cpu();
        let redis_before = match redis {
            Some(client) => Some(redis_stats(client).await),
            None => None,
        };
        tokio::time::sleep_until(end.into()).await;
        let cpu_after = thread_cpu();
        let redis_after = match redis {
            Some(client) => Some(redis_stats(client).await),
            None => None,
        };
        let mut tally = Tally::default();
        for task in tasks {
            tally.merge(task.await.expect("a load task"));
        }
        let cpu: BTreeMap<String, f64> = cpu_after
            .iter()
            .map(|(k, v)| (k.clone(), v - cpu_before.get(k).copied().unwrap_or(0.0)))
            .collect();
        let redis_delta = redis_before.zip(redis_after).map(|(b, a)| RedisStats {
            cpu_s: a.cpu_s - b.cpu_s,
            evalsha_calls: a.evalsha_calls - b.evalsha_calls,
            evalsha_usec: a.evalsha_usec - b.evalsha_usec,
        });
        (tally, measure.as_secs_f64(), cpu, redis_delta)
    });
    runtime.shutdown_timeout(Duration::from_secs(2));

    let mut latencies = tally.latencies_us;
    latencies.sort_unstable();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let i = ((latencies.len() as f64 * p) as usize).min(latencies.len() - 1);
        f64::from(latencies[i]) / 1000.0
    };
    let calls = latencies.len() as f64;
    let rate = calls / elapsed;
    let per_check = |cpu_s: f64| cpu_s / calls.max(1.0) * 1e6;
    let sluice_cpu = cpu.get("sluice").copied().unwrap_or(0.0);
    let loadgen_cpu = cpu.get("loadgen").copied().unwrap_or(0.0);
    println!(
        "{name:<10} {rate:>9.0} checks/s  p50 {:>6.2} ms  p99 {:>6.2} ms  p99.9 {:>6.2} ms  | calls ok {} over {} err {} | descriptors allowed {} denied {} unmatched {}",
        pct(0.50),
        pct(0.99),
        pct(0.999),
        tally.calls_ok,
        tally.calls_over,
        tally.errors,
        tally.allowed,
        tally.denied,
        tally.unmatched,
    );
    let mut cpu_line = format!(
        "{:<10} cpu/check: sluice {:.1} µs, loadgen {:.1} µs",
        "",
        per_check(sluice_cpu),
        per_check(loadgen_cpu),
    );
    if let Some(r) = redis_delta {
        let per_call = if r.evalsha_calls > 0.0 {
            r.evalsha_usec / r.evalsha_calls
        } else {
            0.0
        };
        cpu_line.push_str(&format!(
            ", redis {:.1} µs (EVALSHA {:.0}/s, {per_call:.1} µs per call inside Redis)",
            per_check(r.cpu_s),
            r.evalsha_calls / elapsed,
        ));
    }
    println!("{cpu_line}");
    rate
}

// ---------------------------------------------------------------------------------------------
// The decide microbenchmark

fn domain_policies() -> Vec<Policy> {
    policy_specs()
        .into_iter()
        .map(|(tenant, pattern, max, window, burst)| {
            let now = chrono::Utc::now();
            Policy {
                id: PolicyId::generate(),
                tenant: PolicyTenant::Tenant(TenantId::parse(&tenant).expect("a tenant id")),
                pattern: EndpointPattern::parse(pattern).expect("a pattern"),
                limits: Limits::new(max, window, burst).expect("valid limits"),
                enabled: true,
                shadow: false,
                created_at: now,
                updated_at: now,
                version: 1,
            }
        })
        .collect()
}

fn micro(secs: f64) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let snapshot = Arc::new(SharedSnapshot::new());
    snapshot.store(PolicySnapshot::build(domain_policies()));
    let limiter = RateLimiter::new(
        snapshot,
        Arc::new(InMemoryCounter::new(1_000_000)),
        RateLimiterConfig {
            keys: DescriptorKeys::default(),
            deadline: Duration::from_millis(50),
            failure_mode: FailureMode::Open,
        },
        Metrics::new(),
    );
    for (name, requests) in [
        ("under", under_limit_requests()),
        ("hot", hot_requests()),
        ("unmatched", unmatched_requests()),
    ] {
        let (n, elapsed) = runtime.block_on(async {
            // Warm-up: fills the counters and the over-limit cache.
            for r in requests.iter().cycle().take(10_000) {
                let _ = limiter.decide(r).await;
            }
            let start = Instant::now();
            let mut n = 0usize;
            while start.elapsed().as_secs_f64() < secs {
                for _ in 0..1000 {
                    let response = limiter.decide(&requests[n % requests.len()]).await;
                    std::hint::black_box(&response);
                    n += 1;
                }
            }
            (n, start.elapsed())
        });
        println!(
            "micro/{name:<9} {:>7.0} ns per decide ({:.0} decides/s on one thread)",
            elapsed.as_nanos() as f64 / n as f64,
            n as f64 / elapsed.as_secs_f64(),
        );
    }
}

// ---------------------------------------------------------------------------------------------

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it, in a
    // debug build: there, only prove the benchmark still runs, briefly.
    if !std::env::args().any(|arg| arg == "--bench") {
        println!(
            "checks: smoke run (use `cargo bench --bench checks` or scripts/bench.sh to measure)"
        );
        micro(0.05);
        return;
    }
    let options = Options::from_env();
    println!(
        "sluice hot-path bench: {} s per scenario (+{} s warm-up), {} streams over {} connections, server {} threads, loadgen {} threads, {} cores",
        options.secs,
        WARM_UP.as_secs(),
        options.concurrency,
        options.connections,
        options.server_threads,
        options.loadgen_threads,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    if options.wants("micro") {
        micro(2.0);
    }
    let dir = tempfile::tempdir().expect("a temporary directory");

    if options.wants("memory") {
        let server = start_server(&options, dir.path(), None);
        server.runtime.block_on(create_policies(server.grpc_addr));
        drive(
            &options,
            "memory",
            server.grpc_addr,
            under_limit_requests(),
            None,
        );
        server.shutdown();
    }

    let redis_scenarios = ["redis", "hot", "unmatched", "mixed"];
    if redis_scenarios.iter().any(|s| options.wants(s)) {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let prefix = format!("sluicebench:{}-{nanos}:", std::process::id());
        let server = start_server(&options, dir.path(), Some(&prefix));
        server.runtime.block_on(create_policies(server.grpc_addr));
        // Its own thread, so the stats client's connection is driven while the load runs.
        let stats_runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("bench-stats")
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let stats_client = stats_runtime.block_on(async {
            let config = Config::from_url(&options.redis_url).expect("a Redis URL");
            let client = Builder::from_config(config)
                .build()
                .expect("a Redis client");
            client.init().await.expect("Redis reachable");
            client
        });
        for (scenario, requests) in [
            ("redis", under_limit_requests()),
            ("hot", hot_requests()),
            ("unmatched", unmatched_requests()),
            ("mixed", mixed_requests()),
        ] {
            if options.wants(scenario) {
                drive(
                    &options,
                    scenario,
                    server.grpc_addr,
                    requests,
                    Some(&stats_client),
                );
            }
        }
        server.shutdown();
        stats_runtime.block_on(async {
            let _ = stats_client.quit().await;
        });
    }
}
