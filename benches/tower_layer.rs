//! What the tower layer (`crates/sluice-tower`) costs a service per request (`cargo bench --bench
//! tower_layer`, results in docs/benchmarks.md, "The tower layer"). Sluice runs in-process on its
//! embedded default with in-process counters (threads `sluice-srv`); an axum router is driven
//! in-process with `oneshot` (threads `loadgen`), in three modes measured in interleaved rounds:
//!
//! - `bare`: the router alone, the service's own cost;
//! - `layer`: the same router behind `RateLimitLayer` (tenant from a header, path, method);
//! - `rpc`: the `ShouldRateLimit` call alone, as the layer sends it, over the same kind of channel.
//!
//! `layer − bare` is what a service pays per request; `layer − bare − rpc` is the layer's own work
//! beyond the call it cannot avoid. Each mode runs one request at a time (latency) and
//! `TOWER_BENCH_CONCURRENCY` (64) at a time (throughput). Settings: `TOWER_BENCH_SECS` (2) per
//! mode and round, `TOWER_BENCH_ROUNDS` (3).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, body::Body, routing::get};
use hdrhistogram::Histogram;
use http::{HeaderName, Request, StatusCode};
use sluice::proto::envoy::service::ratelimit::v3::{
    rate_limit_response::Code, rate_limit_service_client::RateLimitServiceClient,
};
use sluice_tower::{Decision, DescriptorTemplate, RateLimitLayer, lazy_channel};
use tokio::runtime::Runtime;
use tonic::transport::Channel;
use tower::ServiceExt;

#[path = "support/client.rs"]
mod client;
#[path = "support/server.rs"]
mod server;

const HS256_SECRET: &str = "bench-secret-bench-secret-bench-secret-0123";
const TENANTS: usize = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Bare,
    Layer,
    Rpc,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Bare, Mode::Layer, Mode::Rpc];

    fn name(self) -> &'static str {
        match self {
            Mode::Bare => "bare",
            Mode::Layer => "layer",
            Mode::Rpc => "rpc",
        }
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo test --all-targets` builds benches and runs them with no `--bench`: nothing to do.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let secs = env_number("TOWER_BENCH_SECS", 2);
    let rounds = env_number("TOWER_BENCH_ROUNDS", 3);
    let concurrency = env_number("TOWER_BENCH_CONCURRENCY", 64) as usize;

    let dir = tempfile::tempdir().expect("a temporary directory");
    let server = server::start(2, &dir.path().join("bench.db"), HS256_SECRET, |_| {});
    let grpc_addr = server.grpc_addr;

    let loadgen = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("loadgen")
        .enable_all()
        .build()
        .expect("a tokio runtime");
    loadgen.block_on(create_default_policy(grpc_addr));

    let bench = Arc::new(Bench::new(&loadgen, grpc_addr));
    println!(
        "tower layer overhead: Sluice in-process counters, {rounds} rounds x {secs} s per mode, \
         {concurrency} in flight for throughput"
    );
    // Per mode: p50 and p99 of each round one at a time, and each round's throughput run.
    let mut p50s: [Vec<f64>; 3] = Default::default();
    let mut p99s: [Vec<f64>; 3] = Default::default();
    let mut runs: [Vec<Throughput>; 3] = Default::default();
    for round in 0..rounds {
        for (i, mode) in Mode::ALL.iter().enumerate() {
            let histogram = loadgen.block_on(bench.one_at_a_time(*mode, secs));
            let run = loadgen.block_on(bench.many_at_a_time(*mode, secs, concurrency));
            let (p50, p99) = (
                histogram.value_at_quantile(0.5) as f64 / 1_000.0,
                histogram.value_at_quantile(0.99) as f64 / 1_000.0,
            );
            println!(
                "round {round} {:5}: p50 {p50:6.1} µs  p99 {p99:7.1} µs  {:8.0} req/s at \
                 {concurrency}, CPU/request service {:5.1} µs, Sluice {:5.1} µs",
                mode.name(),
                run.per_second,
                run.service_cpu_us,
                run.sluice_cpu_us,
            );
            p50s[i].push(p50);
            p99s[i].push(p99);
            runs[i].push(run);
        }
    }
    let failed = bench.failed.load(Ordering::Relaxed);
    let allowed = bench.allowed.load(Ordering::Relaxed);
    assert_eq!(failed, 0, "the layer failed open {failed} times");
    assert!(allowed > 0, "the layer never got a verdict");

    let median = |values: &[f64]| {
        let mut values = values.to_vec();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    println!(
        "\n| mode | p50 µs | p99 µs | req/s at {concurrency} | service CPU µs/req | Sluice CPU µs/req |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    let mut summary = [[0.0; 4]; 3];
    for (i, mode) in Mode::ALL.iter().enumerate() {
        let of = |f: fn(&Throughput) -> f64| median(&runs[i].iter().map(f).collect::<Vec<_>>());
        summary[i] = [
            median(&p50s[i]),
            of(|r| r.per_second),
            of(|r| r.service_cpu_us),
            of(|r| r.sluice_cpu_us),
        ];
        println!(
            "| {} | {:.1} | {:.1} | {:.0} | {:.1} | {:.1} |",
            mode.name(),
            summary[i][0],
            median(&p99s[i]),
            summary[i][1],
            summary[i][2],
            summary[i][3],
        );
    }
    let [bare, layer, rpc] = summary;
    println!(
        "\nmedians of {rounds} rounds. One at a time: layer − bare = {:.1} µs per request, of \
         which the layer's own (layer − bare − rpc) {:.1} µs. At {concurrency} in flight: \
         throughput layer / rpc = {:.2}; service CPU per request layer − bare − rpc = {:.1} µs.",
        layer[0] - bare[0],
        layer[0] - bare[0] - rpc[0],
        layer[1] / rpc[1],
        layer[2] - bare[2] - rpc[2],
    );

    server.shutdown();
}

async fn create_default_policy(addr: SocketAddr) {
    let token = client::admin_token(HS256_SECRET).expect("a token");
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("an endpoint")
        .connect()
        .await
        .expect("Sluice answers");
    // Every tenant: a million per minute, counted per tenant; the runs never reach it.
    let specs = vec![("*".to_owned(), "GET /v1/items/*", 1_000_000, 60, 0)];
    client::create_policies(channel, &token, &specs, 1)
        .await
        .unwrap_or_else(|status| panic!("creating the policy failed: {status:?}"));
}

/// One throughput run.
struct Throughput {
    per_second: f64,
    /// CPU of the `loadgen` threads per request: the service's side.
    service_cpu_us: f64,
    /// CPU of Sluice's threads per request.
    sluice_cpu_us: f64,
}

struct Bench {
    bare: Router,
    layered: Router,
    rpc: RateLimitServiceClient<Channel>,
    allowed: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

impl Bench {
    fn new(loadgen: &Runtime, grpc_addr: SocketAddr) -> Bench {
        let _entered = loadgen.enter();
        let allowed = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let (seen_allowed, seen_failed) = (Arc::clone(&allowed), Arc::clone(&failed));
        let layer = RateLimitLayer::builder(
            lazy_channel(&format!("http://{grpc_addr}")).expect("a channel"),
            "bench",
            DescriptorTemplate::sluice(HeaderName::from_static("x-tenant-id")),
        )
        .deadline(Duration::from_secs(1))
        .observer(move |decision: Decision<'_>, _: Duration| match decision {
            Decision::Allowed(_) => {
                seen_allowed.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                seen_failed.fetch_add(1, Ordering::Relaxed);
            }
        })
        .build();
        let bare = Router::new().route("/v1/items/{id}", get(|| async { "ok" }));
        let layered = bare.clone().layer(layer);
        let rpc = RateLimitServiceClient::new(
            lazy_channel(&format!("http://{grpc_addr}")).expect("a channel"),
        );
        Bench {
            bare,
            layered,
            rpc,
            allowed,
            failed,
        }
    }

    async fn once(&self, mode: Mode, n: usize) {
        let tenant = format!("tenant-{}", n % TENANTS);
        match mode {
            Mode::Bare | Mode::Layer => {
                let router = if mode == Mode::Bare {
                    &self.bare
                } else {
                    &self.layered
                };
                let request = Request::get(format!("/v1/items/{}", n % 1_000))
                    .header("x-tenant-id", tenant)
                    .body(Body::empty())
                    .expect("a request");
                let response = router.clone().oneshot(request).await.expect("infallible");
                assert_eq!(response.status(), StatusCode::OK);
            }
            Mode::Rpc => {
                let message = client::descriptor_request(
                    "bench",
                    &tenant,
                    "GET",
                    &format!("/v1/items/{}", n % 1_000),
                );
                let answer = self
                    .rpc
                    .clone()
                    .should_rate_limit(message)
                    .await
                    .expect("ShouldRateLimit answers");
                assert_eq!(answer.get_ref().overall_code, Code::Ok as i32);
            }
        }
    }

    async fn one_at_a_time(&self, mode: Mode, secs: u64) -> Histogram<u64> {
        let mut histogram = Histogram::<u64>::new(3).expect("a histogram");
        let until = Instant::now() + Duration::from_secs(secs);
        let mut n = 0;
        while Instant::now() < until {
            let started = Instant::now();
            self.once(mode, n).await;
            let _ = histogram.record(started.elapsed().as_nanos() as u64);
            n += 1;
        }
        histogram
    }

    /// Requests per second with `concurrency` tasks each sending one request at a time, and the
    /// CPU µs per request of the load generator's threads (the service's side: router, layer,
    /// client) and of Sluice's.
    async fn many_at_a_time(
        self: &Arc<Self>,
        mode: Mode,
        secs: u64,
        concurrency: usize,
    ) -> Throughput {
        let until = Instant::now() + Duration::from_secs(secs);
        let cpu_before = server::thread_cpu();
        let started = Instant::now();
        let mut workers = tokio::task::JoinSet::new();
        for worker in 0..concurrency {
            let bench = Arc::clone(self);
            workers.spawn(async move {
                let (mut n, mut done) = (worker, 0u64);
                while Instant::now() < until {
                    bench.once(mode, n).await;
                    done += 1;
                    n += concurrency;
                }
                done
            });
        }
        let done: u64 = workers.join_all().await.into_iter().sum();
        let elapsed = started.elapsed().as_secs_f64();
        let cpu_after = server::thread_cpu();
        let cpu_us = |group: &str| {
            let used = cpu_after.get(group).copied().unwrap_or(0.0)
                - cpu_before.get(group).copied().unwrap_or(0.0);
            used * 1e6 / done.max(1) as f64
        };
        Throughput {
            per_second: done as f64 / elapsed,
            service_cpu_us: cpu_us("loadgen"),
            sluice_cpu_us: cpu_us("sluice"),
        }
    }
}
