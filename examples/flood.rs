//! The flood benchmark's load generator (run by `scripts/bench-flood.sh`, which builds it, starts
//! the real `sluice` binary on PostgreSQL and Redis and passes its addresses here).
//!
//! It creates the policies through the admin API, then, per scenario and per in-flight count,
//! sends real `ShouldRateLimit` requests from a few thousand different pre-encoded bodies (h2load
//! repeats one body) over a few HTTP/2 connections, for warm-up + a fixed time and at most a
//! fixed number of checks, and prints one table row: checks/s, p50/p99, answers by kind, Sluice's
//! decisions and fail-open reasons (deltas of its `/metrics`), hits counted in Redis against
//! checks answered OK, and CPU per check of Sluice (`/proc/<pid>/stat`), Redis (`INFO cpu`) and
//! this process. Then the ceiling: `redis-benchmark` running a naive one-call-per-request
//! sliding-window script (`naive_sliding_window.lua`) at the same concurrency.
//!
//! Scenarios, each on tenants of its own (named after the in-flight count, so runs never share a
//! counter):
//! - `one`: one tenant, one policy of 1,000,000 per 10 minutes (never denies): hot keys;
//! - `zipf`: `--tenants` tenants (1,000), one policy each, picked with Zipf-like popularity
//!   (the tenant of rank k with weight 1/k);
//! - `deny`: one tenant with a limit of 100 per 10 minutes, flooded: the over-limit cache.
//!
//! `--check` makes it exit non-zero when an answer was an error, a scenario ran no check, or the
//! hits counted in Redis differ from the checks answered OK (CI's smoke run).

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::{BufMut, Bytes};
use clap::{Parser, ValueEnum};
use fred::prelude::{
    Builder, ClientLike, Config, KeysInterface, LuaInterface, SortedSetsInterface,
};
use fred::types::InfoKind;
use hdrhistogram::Histogram;
use http::uri::PathAndQuery;
use prost::Message;
use rand::{Rng, SeedableRng, rngs::StdRng};
use sluice::proto::envoy::service::ratelimit::v3::{RateLimitResponse, rate_limit_response::Code};
use tonic::{
    Request, Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    transport::{Channel, Endpoint},
};

#[path = "../benches/support/client.rs"]
mod client;

const SHOULD_RATE_LIMIT: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";
const NAIVE_SCRIPT: &str = include_str!("naive_sliding_window.lua");
/// Every policy's window: long enough that nothing a run counts leaves it before it is read.
const WINDOW_SECONDS: u32 = 600;
/// The allow scenarios' limit: the most a policy may have, never reached in a run.
const NEVER_DENY: u32 = 1_000_000;
const DENY_LIMIT: u32 = 100;
/// Different bodies per scenario (paths and, for `zipf`, tenants vary).
const BODIES: usize = 16_384;

#[derive(Parser)]
#[command(about = "Floods a running Sluice with ShouldRateLimit; see scripts/bench-flood.sh")]
struct Args {
    /// Sluice's gRPC listener (loopback).
    #[arg(long)]
    grpc: SocketAddr,
    /// Sluice's HTTP listener, for `/metrics`.
    #[arg(long)]
    http: SocketAddr,
    /// Sluice's process id, for its CPU time.
    #[arg(long)]
    sluice_pid: u32,
    /// The Redis Sluice counts in.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Sluice's `SLUICE_REDIS_KEY_PREFIX`: counted hits are read under it.
    #[arg(long)]
    key_prefix: String,
    #[arg(long, value_delimiter = ',', default_value = "one,zipf,deny")]
    scenarios: Vec<Scenario>,
    /// Requests in flight, one run per value.
    #[arg(long, value_delimiter = ',', default_value = "256,1024")]
    inflight: Vec<usize>,
    /// Measured seconds per run, after the warm-up.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    #[arg(long, default_value_t = 1)]
    warmup_secs: u64,
    /// At most this many checks per run, warm-up included.
    #[arg(long, default_value_t = 5_000_000)]
    max_checks: u64,
    /// Tenants of the `zipf` scenario.
    #[arg(long, default_value_t = 1_000)]
    tenants: usize,
    /// Calls of the naive script per in-flight count (0: no ceiling run).
    #[arg(long, default_value_t = 200_000)]
    ceiling_calls: u64,
    /// Worker threads of this generator.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Open loop: send this many checks per second in all, each timed from when it was due (so a
    /// stall shows in the latency instead of slowing the sender); `--inflight` caps how many are
    /// outstanding. 0: closed loop, every stream sends as soon as its last answer came.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Exit non-zero on an error answer, an empty run or counted hits != OK answers.
    #[arg(long)]
    check: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    One,
    Zipf,
    Deny,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Self::One => "one",
            Self::Zipf => "zipf",
            Self::Deny => "deny",
        }
    }
}

/// HTTP/2 connections for `inflight` streams: 32 streams each up to 256 in flight, then 16
/// connections (the issue's h2load `-c 8 -m 32` and `-c 16 -m 64`).
fn connections_for(inflight: usize) -> usize {
    (inflight / 32).clamp(1, 16)
}

// ---------------------------------------------------------------------------------------------
// Requests, pre-encoded

/// A gRPC message body passed through as is: the request is encoded once, before the run.
#[derive(Clone, Copy)]
struct PreEncoded;

struct PassThrough;
struct ResponseDecoder;

impl Codec for PreEncoded {
    type Encode = Bytes;
    type Decode = RateLimitResponse;
    type Encoder = PassThrough;
    type Decoder = ResponseDecoder;

    fn encoder(&mut self) -> PassThrough {
        PassThrough
    }

    fn decoder(&mut self) -> ResponseDecoder {
        ResponseDecoder
    }
}

impl Encoder for PassThrough {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for ResponseDecoder {
    type Item = RateLimitResponse;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<RateLimitResponse>, Status> {
        RateLimitResponse::decode(src)
            .map(Some)
            .map_err(|err| Status::internal(format!("undecodable response: {err}")))
    }
}

fn encoded_request(tenant: &str, method: &str, path: &str) -> Bytes {
    client::descriptor_request("flood", tenant, method, path)
        .encode_to_vec()
        .into()
}

/// One run's tenants (with their limits), bodies, and the Redis key pattern of its counters.
struct Plan {
    tenants: Vec<(String, u32)>,
    bodies: Vec<Bytes>,
    key_pattern: String,
}

fn plan(scenario: Scenario, inflight: usize, zipf_tenants: usize, prefix: &str) -> Plan {
    let mut rng = StdRng::seed_from_u64(inflight as u64);
    let mut request_for = |tenant: &str, i: usize| {
        let method = if i.is_multiple_of(4) { "POST" } else { "GET" };
        encoded_request(
            tenant,
            method,
            &format!("/v1/items/{}", rng.random::<u32>()),
        )
    };
    match scenario {
        Scenario::One | Scenario::Deny => {
            let tenant = format!("{}-c{inflight}", scenario.name());
            let limit = if scenario == Scenario::One {
                NEVER_DENY
            } else {
                DENY_LIMIT
            };
            Plan {
                bodies: (0..BODIES).map(|i| request_for(&tenant, i)).collect(),
                key_pattern: format!("{prefix}{{{tenant}}}:*"),
                tenants: vec![(tenant, limit)],
            }
        }
        Scenario::Zipf => {
            let tenants: Vec<String> = (0..zipf_tenants)
                .map(|k| format!("zipf-c{inflight}-{k:05}"))
                .collect();
            // Rank k (from 1) has weight 1/k: sample by the cumulative weights.
            let cumulative: Vec<f64> = (1..=zipf_tenants)
                .scan(0.0, |sum, k| {
                    *sum += 1.0 / k as f64;
                    Some(*sum)
                })
                .collect();
            let total = cumulative.last().copied().unwrap_or(1.0);
            let mut picks = StdRng::seed_from_u64(7 + inflight as u64);
            let bodies = (0..BODIES)
                .map(|i| {
                    let x = picks.random::<f64>() * total;
                    let k = cumulative.partition_point(|&c| c < x).min(zipf_tenants - 1);
                    request_for(&tenants[k], i)
                })
                .collect();
            Plan {
                key_pattern: format!("{prefix}{{zipf-c{inflight}-*"),
                tenants: tenants.into_iter().map(|t| (t, NEVER_DENY)).collect(),
                bodies,
            }
        }
    }
}

async fn connect(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("a valid endpoint")
        .tcp_nodelay(true)
        .connect()
        .await
        .unwrap_or_else(|err| fail(&format!("cannot connect to Sluice at {addr}: {err}")))
}

fn fail(message: &str) -> ! {
    eprintln!("flood: {message}");
    std::process::exit(2)
}

/// Creates one policy per tenant through the admin API, sixteen calls at a time.
async fn create_policies(channel: Channel, token: &str, tenants: &[(String, u32)]) {
    let specs: Vec<client::PolicySpec<'_>> = tenants
        .iter()
        .map(|(tenant, limit)| (tenant.clone(), "/v1/**", *limit, WINDOW_SECONDS, 0))
        .collect();
    if let Err(status) = client::create_policies(channel, token, &specs, 16).await {
        fail(&format!(
            "creating a policy failed: {:?} {}",
            status.code(),
            status.message()
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// Load

/// Answers of one stream (then of the run): all of them, and those started in the measured span.
struct Tally {
    ok: u64,
    over_limit: u64,
    other_code: u64,
    errors: BTreeMap<String, u64>,
    measured: u64,
    measured_ok: u64,
    latency_us: Histogram<u64>,
}

impl Tally {
    fn new() -> Self {
        Self {
            ok: 0,
            over_limit: 0,
            other_code: 0,
            errors: BTreeMap::new(),
            measured: 0,
            measured_ok: 0,
            latency_us: Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds"),
        }
    }

    fn merge(&mut self, other: Self) {
        self.ok += other.ok;
        self.over_limit += other.over_limit;
        self.other_code += other.other_code;
        for (code, n) in other.errors {
            *self.errors.entry(code).or_default() += n;
        }
        self.measured += other.measured;
        self.measured_ok += other.measured_ok;
        self.latency_us
            .add(&other.latency_us)
            .expect("same histogram bounds");
    }

    fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// CPU seconds (user + system) of a process, from `/proc/<pid>/stat`.
fn process_cpu_seconds(pid: u32, ticks_per_second: f64) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|err| fail(&format!("cannot read /proc/{pid}/stat: {err}")));
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis,
    // where field 3 (state) is index 0, utime (14) index 11 and stime (15) index 12.
    let rest = &stat[stat.rfind(')').map_or(0, |i| i + 1)..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / ticks_per_second
}

fn ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Redis's CPU seconds, EVALSHA calls and the seconds spent running them (commandstats: the
/// script's own time, without reading the request or writing the reply) so far.
async fn redis_counters(redis: &fred::clients::Client) -> (f64, f64, f64) {
    let cpu: String = redis.info(Some(InfoKind::Cpu)).await.unwrap_or_default();
    let commands: String = redis
        .info(Some(InfoKind::CommandStats))
        .await
        .unwrap_or_default();
    let field = |name: &str| -> f64 {
        cpu.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let evalsha = |name: &str| -> f64 {
        commands
            .lines()
            .find_map(|l| l.strip_prefix("cmdstat_evalsha:"))
            .and_then(|line| line.split(',').find_map(|p| p.strip_prefix(name)))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    (
        field("used_cpu_user:") + field("used_cpu_sys:"),
        evalsha("calls="),
        evalsha("usec=") / 1e6,
    )
}

/// `sluice_checks_total` by decision (and `fail_open:<reason>`), summed over other labels.
fn sluice_checks(http: SocketAddr) -> BTreeMap<String, f64> {
    let text = http_get(http, "/metrics");
    let mut checks = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("sluice_checks_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|l| l.strip_prefix(&format!("{name}=\"")[..]))
                .map(|v| v.trim_end_matches('"').to_owned())
        };
        let Some(decision) = label("decision") else {
            continue;
        };
        let key = match label("reason") {
            Some(reason) if decision == "fail_open" => format!("fail_open:{reason}"),
            _ => decision,
        };
        *checks.entry(key).or_default() += value.trim().parse::<f64>().unwrap_or(0.0);
    }
    checks
}

/// A plain HTTP/1.0 GET (no chunking), so no HTTP client crate is needed.
fn http_get(addr: SocketAddr, path: &str) -> String {
    let attempt = || -> std::io::Result<String> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response)
    };
    match attempt() {
        Ok(response) => response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default(),
        Err(err) => fail(&format!("GET http://{addr}{path} failed: {err}")),
    }
}

/// Hits recorded in every counter key matching `pattern`: each member of a log is
/// `<cumulative>:<weight>` (src/ratelimit/counter/sliding_window.lua), so the hits are the sum of
/// the weights; a member of another shape counts as one hit.
async fn counted_hits(redis: &fred::clients::Client, pattern: &str) -> u64 {
    let mut cursor = "0".to_owned();
    let mut hits = 0;
    loop {
        let (next, keys): (String, Vec<String>) = redis
            .scan_page(cursor, pattern.to_owned(), Some(1000), None)
            .await
            .unwrap_or_else(|err| fail(&format!("SCAN {pattern} failed: {err}")));
        for key in keys {
            let members: Vec<String> = redis
                .zrange(&key, 0, -1, None, false, None, false)
                .await
                .unwrap_or_else(|err| fail(&format!("ZRANGE {key} failed: {err}")));
            hits += members
                .iter()
                .map(|m| {
                    m.rsplit_once(':')
                        .and_then(|(_, w)| w.parse::<u64>().ok())
                        .unwrap_or(1)
                })
                .sum::<u64>();
        }
        if next == "0" {
            return hits;
        }
        cursor = next;
    }
}

struct Sample {
    sluice_cpu: f64,
    own_cpu: f64,
    redis_cpu: f64,
    evalsha: f64,
    /// Seconds Redis spent inside EVALSHA.
    script_secs: f64,
}

struct Probe {
    sluice_pid: u32,
    ticks: f64,
    redis: fred::clients::Client,
}

impl Probe {
    async fn sample(&self) -> Sample {
        let (redis_cpu, evalsha, script_secs) = redis_counters(&self.redis).await;
        Sample {
            sluice_cpu: process_cpu_seconds(self.sluice_pid, self.ticks),
            own_cpu: process_cpu_seconds(std::process::id(), self.ticks),
            redis_cpu,
            evalsha,
            script_secs,
        }
    }
}

struct RunResult {
    scenario: Scenario,
    inflight: usize,
    tally: Tally,
    measured_secs: f64,
    start: Sample,
    end: Sample,
    checks: BTreeMap<String, f64>,
    counted: u64,
}

impl RunResult {
    fn rate(&self) -> f64 {
        self.tally.measured as f64 / self.measured_secs
    }

    /// CPU µs per measured check; `per_ok` divides by the checks answered OK instead.
    fn cpu_us(&self, cpu: impl Fn(&Sample) -> f64, per_ok: bool) -> f64 {
        let n = if per_ok {
            self.tally.measured_ok
        } else {
            self.tally.measured
        };
        (cpu(&self.end) - cpu(&self.start)) * 1e6 / n.max(1) as f64
    }

    fn fail_open(&self) -> String {
        let reasons: Vec<String> = self
            .checks
            .iter()
            .filter(|(k, v)| k.starts_with("fail_open:") && **v > 0.0)
            .map(|(k, v)| format!("{}={v}", &k["fail_open:".len()..]))
            .collect();
        if reasons.is_empty() {
            "0".to_owned()
        } else {
            reasons.join(",")
        }
    }
}

async fn drive(
    args: &Args,
    probe: &Probe,
    scenario: Scenario,
    inflight: usize,
    bodies: Vec<Bytes>,
    key_pattern: &str,
) -> RunResult {
    let connections = connections_for(inflight);
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections {
        channels.push(connect(args.grpc).await);
    }
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicU64::new(0));
    let before = sluice_checks(args.http);
    let begin = Instant::now();
    let measure_from = begin + Duration::from_secs(args.warmup_secs);
    let stop_at = measure_from + Duration::from_secs(args.secs);
    let path = PathAndQuery::from_static(SHOULD_RATE_LIMIT);
    let max_checks = args.max_checks;
    // Open loop: check n is due at begin + n / rate.
    let every = (args.rate > 0).then(|| Duration::from_secs_f64(1.0 / args.rate as f64));

    let streams: Vec<_> = (0..inflight)
        .map(|i| {
            let mut grpc = tonic::client::Grpc::new(channels[i % connections].clone());
            let (bodies, next, path) = (bodies.clone(), next.clone(), path.clone());
            tokio::spawn(async move {
                let mut tally = Tally::new();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let due = every.map(|every| begin + every.mul_f64(n as f64));
                    if n >= max_checks || due.unwrap_or_else(Instant::now) >= stop_at {
                        return tally;
                    }
                    if let Some(due) = due {
                        tokio::time::sleep_until(due.into()).await;
                    }
                    let body = bodies[n as usize % bodies.len()].clone();
                    if let Err(err) = grpc.ready().await {
                        *tally.errors.entry(format!("transport: {err}")).or_default() += 1;
                        return tally;
                    }
                    // Open loop: from when it was due, so waiting for a free stream counts too.
                    let sent = due.unwrap_or_else(Instant::now);
                    let answer = grpc
                        .unary(Request::new(body), path.clone(), PreEncoded)
                        .await;
                    let took = sent.elapsed();
                    let measured = sent >= measure_from && sent < stop_at;
                    match answer.map(|r| r.into_inner().overall_code()) {
                        Ok(Code::Ok) => {
                            tally.ok += 1;
                            tally.measured_ok += u64::from(measured);
                        }
                        Ok(Code::OverLimit) => tally.over_limit += 1,
                        Ok(Code::Unknown) => tally.other_code += 1,
                        Err(status) => {
                            *tally
                                .errors
                                .entry(format!("{:?}", status.code()))
                                .or_default() += 1
                        }
                    }
                    if measured {
                        tally.measured += 1;
                        tally
                            .latency_us
                            .saturating_record(took.as_micros().try_into().unwrap_or(u64::MAX));
                    }
                }
            })
        })
        .collect();

    tokio::time::sleep_until(measure_from.into()).await;
    let start = probe.sample().await;
    let measured_begin = Instant::now();
    tokio::time::sleep_until(stop_at.into()).await;
    let end = probe.sample().await;
    let measured_secs = measured_begin.elapsed().as_secs_f64();

    let mut tally = Tally::new();
    for stream in streams {
        tally.merge(stream.await.expect("a stream task does not panic"));
    }
    let after = sluice_checks(args.http);
    let checks = after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v != 0.0)
        .collect();
    let counted = counted_hits(&probe.redis, key_pattern).await;
    RunResult {
        scenario,
        inflight,
        tally,
        measured_secs,
        start,
        end,
        checks,
        counted,
    }
}

// ---------------------------------------------------------------------------------------------
// The ceiling: redis-benchmark and the naive script

struct Ceiling {
    inflight: usize,
    calls: u64,
    calls_per_second: f64,
    redis_cpu_us_per_call: f64,
    /// The script's own time per call (commandstats).
    script_us_per_call: f64,
}

async fn ceiling(args: &Args, redis: &fred::clients::Client, inflight: usize) -> Ceiling {
    let sha: String = redis
        .script_load(NAIVE_SCRIPT)
        .await
        .unwrap_or_else(|err| fail(&format!("SCRIPT LOAD of the naive script failed: {err}")));
    let (host, port) = redis_host_port(&args.redis_url);
    let clients = connections_for(inflight);
    let pipeline = (inflight / clients).max(1);
    let key = format!("{}{{naive-c{inflight}}}:log", args.key_prefix);
    let window_ms = (u64::from(WINDOW_SECONDS) * 1000).to_string();
    let (cpu_before, _, script_before) = redis_counters(redis).await;
    let output = Command::new("redis-benchmark")
        .args(["-h", &host, "-p", &port, "--csv", "-r", "1000000000"])
        .args(["-c", &clients.to_string(), "-P", &pipeline.to_string()])
        .args(["-n", &args.ceiling_calls.to_string()])
        .args(["EVALSHA", &sha, "1", &key, &window_ms])
        .args([&NEVER_DENY.to_string(), "__rand_int__"])
        .output()
        .unwrap_or_else(|err| {
            fail(&format!(
                "cannot run redis-benchmark ({err}): apt-get install redis-tools"
            ))
        });
    let (cpu_after, _, script_after) = redis_counters(redis).await;
    if !output.status.success() {
        fail(&format!(
            "redis-benchmark failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    // --csv: a header line, then "<test>","<requests per second>",…
    let stdout = String::from_utf8_lossy(&output.stdout);
    let calls_per_second = stdout
        .lines()
        .last()
        .and_then(|line| line.split(',').nth(1))
        .and_then(|v| v.trim_matches('"').parse().ok())
        .unwrap_or(0.0);
    Ceiling {
        inflight,
        calls: args.ceiling_calls,
        calls_per_second,
        redis_cpu_us_per_call: (cpu_after - cpu_before) * 1e6 / args.ceiling_calls.max(1) as f64,
        script_us_per_call: (script_after - script_before) * 1e6 / args.ceiling_calls.max(1) as f64,
    }
}

/// Host and port of a `redis://host:port[/db]` URL (the benchmark is loopback only).
fn redis_host_port(url: &str) -> (String, String) {
    let rest = url
        .strip_prefix("redis://")
        .unwrap_or_else(|| fail(&format!("--redis-url must be redis://host:port, not {url}")));
    let authority = rest.split('/').next().unwrap_or(rest);
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    match authority.rsplit_once(':') {
        Some((host, port)) => (host.to_owned(), port.to_owned()),
        None => (authority.to_owned(), "6379".to_owned()),
    }
}

// ---------------------------------------------------------------------------------------------
// Report

fn print_runs(runs: &[RunResult]) {
    println!(
        "\n{:<5} {:>6} {:>9} {:>8} {:>8} {:>9} {:>8} {:>6} {:>14} {:>9} {:>5} {:>8} {:>8} {:>7} {:>8} {:>7}",
        "scen",
        "flight",
        "checks/s",
        "p50 ms",
        "p99 ms",
        "ok",
        "over",
        "errors",
        "fail_open",
        "counted",
        "exact",
        "sluice",
        "redis",
        "script",
        "loadgen",
        "chk/call"
    );
    for run in runs {
        let t = &run.tally;
        let evalsha = run.end.evalsha - run.start.evalsha;
        let per_call = if evalsha > 0.0 {
            format!("{:.1}", t.measured as f64 / evalsha)
        } else {
            "-".to_owned()
        };
        println!(
            "{:<5} {:>6} {:>9.0} {:>8.2} {:>8.2} {:>9} {:>8} {:>6} {:>14} {:>9} {:>5} {:>8.2} {:>8.2} {:>7.2} {:>8.2} {:>7}",
            run.scenario.name(),
            run.inflight,
            run.rate(),
            t.latency_us.value_at_quantile(0.5) as f64 / 1000.0,
            t.latency_us.value_at_quantile(0.99) as f64 / 1000.0,
            t.ok,
            t.over_limit,
            t.error_count() + t.other_code,
            run.fail_open(),
            run.counted,
            if run.counted == t.ok { "yes" } else { "NO" },
            run.cpu_us(|s| s.sluice_cpu, false),
            run.cpu_us(|s| s.redis_cpu, false),
            run.cpu_us(|s| s.script_secs, false),
            run.cpu_us(|s| s.own_cpu, false),
            per_call,
        );
    }
    println!(
        "(ok/over/errors/fail_open/counted: every answer of the run, warm-up included; checks/s, \
         latency and CPU (µs per check): the measured span; script: Redis's time inside EVALSHA \
         (commandstats), part of redis; chk/call: checks per EVALSHA)"
    );
    for run in runs {
        let decisions: Vec<String> = run.checks.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let errors: Vec<String> = run
            .tally
            .errors
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!(
            "  {}/{}: Sluice decisions: {}{}",
            run.scenario.name(),
            run.inflight,
            decisions.join(" "),
            if errors.is_empty() {
                String::new()
            } else {
                format!("; errors: {}", errors.join(" "))
            }
        );
    }
}

fn print_ceilings(runs: &[RunResult], ceilings: &[Ceiling]) {
    if ceilings.is_empty() {
        return;
    }
    println!("\nceiling: redis-benchmark, naive 5-command sliding-window script by EVALSHA");
    println!(
        "{:>6} {:>9} {:>10} {:>14} {:>15}",
        "flight", "calls", "calls/s", "redis µs/call", "script µs/call"
    );
    for c in ceilings {
        println!(
            "{:>6} {:>9} {:>10.0} {:>14.2} {:>15.2}",
            c.inflight, c.calls, c.calls_per_second, c.redis_cpu_us_per_call, c.script_us_per_call
        );
    }
    println!("\nratios (same run):");
    let find = |scenario, inflight| {
        runs.iter()
            .find(|r| r.scenario == scenario && r.inflight == inflight)
    };
    for c in ceilings {
        let deny = find(Scenario::Deny, c.inflight);
        for scenario in [Scenario::One, Scenario::Zipf] {
            let Some(run) = find(scenario, c.inflight) else {
                continue;
            };
            let allow_vs_deny = deny.map_or("-".to_owned(), |d| {
                format!("{:.2}", run.rate() / d.rate().max(f64::MIN_POSITIVE))
            });
            let redis_per_ok = run.cpu_us(|s| s.redis_cpu, true);
            let script_per_ok = run.cpu_us(|s| s.script_secs, true);
            println!(
                "  {}/{}: allow/deny throughput {allow_vs_deny}; Redis µs per allowed check \
                 {redis_per_ok:.2} = {:.2} × the naive script's per call; in the script \
                 {script_per_ok:.2} = {:.2} × the naive script's",
                scenario.name(),
                c.inflight,
                redis_per_ok / c.redis_cpu_us_per_call.max(f64::MIN_POSITIVE),
                script_per_ok / c.script_us_per_call.max(f64::MIN_POSITIVE),
            );
        }
    }
}

/// What `--check` refuses, one line each.
fn check_failures(runs: &[RunResult]) -> Vec<String> {
    let mut failures = Vec::new();
    for run in runs {
        let name = format!("{}/{}", run.scenario.name(), run.inflight);
        let t = &run.tally;
        if t.ok + t.over_limit == 0 {
            failures.push(format!("{name}: no check was answered"));
        }
        if t.error_count() + t.other_code > 0 {
            failures.push(format!(
                "{name}: {} error answers ({:?}), {} with overall_code UNKNOWN",
                t.error_count(),
                t.errors,
                t.other_code
            ));
        }
        if run.counted != t.ok {
            failures.push(format!(
                "{name}: {} hits counted in Redis but {} checks answered OK",
                run.counted, t.ok
            ));
        }
    }
    failures
}

fn main() {
    let args = Args::parse();
    let secret = std::env::var("SLUICE_JWT_HS256_SECRET").unwrap_or_else(|_| {
        fail("SLUICE_JWT_HS256_SECRET is not set (the secret Sluice runs with)")
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .thread_name("flood")
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let failures = runtime.block_on(async {
        let redis = Builder::from_config(
            Config::from_url(&args.redis_url)
                .unwrap_or_else(|err| fail(&format!("--redis-url: {err}"))),
        )
        .build()
        .expect("a Redis client");
        redis
            .init()
            .await
            .unwrap_or_else(|err| fail(&format!("cannot connect to Redis: {err}")));
        let probe = Probe {
            sluice_pid: args.sluice_pid,
            ticks: ticks_per_second(),
            redis,
        };
        let token = client::admin_token(&secret)
            .unwrap_or_else(|err| fail(&format!("cannot mint an admin token: {err}")));
        let admin = connect(args.grpc).await;

        let mut runs = Vec::new();
        for &inflight in &args.inflight {
            for &scenario in &args.scenarios {
                let plan = plan(scenario, inflight, args.tenants, &args.key_prefix);
                create_policies(admin.clone(), &token, &plan.tenants).await;
                eprintln!(
                    "flood: {} with {inflight} in flight ({} tenants, {} bodies), {}+{} s",
                    scenario.name(),
                    plan.tenants.len(),
                    plan.bodies.len(),
                    args.warmup_secs,
                    args.secs
                );
                runs.push(
                    drive(
                        &args,
                        &probe,
                        scenario,
                        inflight,
                        plan.bodies,
                        &plan.key_pattern,
                    )
                    .await,
                );
            }
        }
        let mut ceilings = Vec::new();
        if args.ceiling_calls > 0 {
            for &inflight in &args.inflight {
                eprintln!("flood: ceiling, naive script with {inflight} in flight");
                ceilings.push(ceiling(&args, &probe.redis, inflight).await);
            }
        }
        print_runs(&runs);
        print_ceilings(&runs, &ceilings);
        check_failures(&runs)
    });
    if args.check {
        if failures.is_empty() {
            println!("\ncheck: every answer a decision, counted hits == OK answers in every run");
        } else {
            for failure in &failures {
                eprintln!("check FAILED: {failure}");
            }
            std::process::exit(1);
        }
    }
}
