//! Telemetry: the tracing subscriber (text or JSON, levels from `RUST_LOG`), OTLP trace export
//! when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, the Prometheus registry with every series of SPEC §5,
//! and the tower layer that counts and times each gRPC call and — with OTLP on — opens its span
//! under the W3C trace context (`traceparent`) of the incoming metadata.

use std::{
    io::IsTerminal,
    pin::Pin,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Instant,
};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::{
    Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider,
    trace::span_processor_with_async_runtime::BatchSpanProcessor,
};
use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

pub use crate::top_tenants::{DEFAULT_TOP_TENANTS, TenantSeries, TopTenants};
use tracing::Instrument;
use tracing::Level;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{
    EnvFilter, Layer as _, filter::Targets, fmt, layer::SubscriberExt, util::SubscriberInitExt,
};

use crate::settings::LogFormat;

/// Whether RPC spans are exported. Process-wide, like the tracing subscriber and the OpenTelemetry
/// propagator it goes with; set once by [`init_tracing`].
static RPC_SPANS: AtomicBool = AtomicBool::new(false);

/// Keeps trace export alive; [`TelemetryGuard::shutdown`] flushes what is buffered.
#[must_use = "dropping the guard does not flush buffered spans; call shutdown() at exit"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Whether spans go to an OTLP collector.
    pub fn exports_traces(&self) -> bool {
        self.provider.is_some()
    }

    /// Flushes buffered spans and stops export (the last step of shutdown).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(err) = provider.shutdown()
        {
            eprintln!("sluice: flushing traces at exit failed: {err}");
        }
    }
}

fn env_set(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.trim().is_empty())
}

/// Whether the standard `OTEL_*` variables ask for OTLP trace export.
fn otlp_traces_wanted() -> bool {
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.eq_ignore_ascii_case("none"));
    !disabled
        && (env_set("OTEL_EXPORTER_OTLP_ENDPOINT") || env_set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// Builds the OTLP/gRPC span exporter from the standard `OTEL_*` variables. Must run inside the
/// Tokio runtime: the batch processor exports on it.
fn otlp_provider() -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|err| {
            format!("OTEL_EXPORTER_OTLP_ENDPOINT: cannot build the OTLP exporter: {err}")
        })?;
    // The async-runtime processor exports on our Tokio runtime; the default one exports from a
    // plain thread, where tonic finds no reactor.
    let processor =
        BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
    let mut resource = Resource::builder();
    if !env_set("OTEL_SERVICE_NAME") {
        resource = resource.with_service_name("sluice");
    }
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource.build())
        .build())
}

/// Installs the global tracing subscriber. `format` `None` picks text on a terminal, else JSON.
/// With `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) set, spans are
/// also exported over OTLP/gRPC, with W3C trace context taken from incoming gRPC metadata.
pub fn init_tracing(format: Option<LogFormat>) -> Result<TelemetryGuard, String> {
    let format = format.unwrap_or(if std::io::stderr().is_terminal() {
        LogFormat::Text
    } else {
        LogFormat::Json
    });
    let provider = if otlp_traces_wanted() {
        Some(otlp_provider()?)
    } else {
        None
    };
    // Each layer has its own filter: RUST_LOG governs the logs only, so a production `warn`
    // still exports every RPC span (sampling is OTEL_TRACES_SAMPLER's business).
    let otel_layer = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("sluice"))
            .with_filter(Targets::new().with_target("sluice", Level::INFO))
    });
    let log_filter =
        || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(otel_layer);
    let result = match format {
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_filter(log_filter()),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr)
                    .with_filter(log_filter()),
            )
            .try_init(),
    };
    // A second init (tests that build several apps in one process) keeps the first subscriber.
    if result.is_ok() && provider.is_some() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        RPC_SPANS.store(true, Ordering::Release);
        tracing::info!("traces: exported over OTLP");
    }
    Ok(TelemetryGuard { provider })
}

/// Whether RPC spans are exported (OTLP on), so the hot path records its span fields
/// (`sluice.tenant`, `sluice.policy`, `sluice.decision`) only then.
pub fn rpc_spans_exported() -> bool {
    RPC_SPANS.load(Ordering::Relaxed)
}

/// Reads W3C trace-context headers (`traceparent`, `tracestate`) from gRPC request metadata.
struct MetadataExtractor<'a>(&'a http::HeaderMap);

impl opentelemetry::propagation::Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Check-latency buckets: the hot path lives between 100 µs and the 50 ms deadline.
const CHECK_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
];

/// Every Prometheus series Sluice exports. Cheap to clone (the series are shared handles).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `sluice_checks_total{decision}`, one handle per decision so the hot path never hashes labels.
    pub checks_allowed: IntCounter,
    pub checks_denied: IntCounter,
    pub checks_shadow_denied: IntCounter,
    pub checks_unmatched: IntCounter,
    /// `sluice_checks_total{decision="fail_open",reason}`, one handle per
    /// [`FailureReason`]; see [`Metrics::checks_fail_open`].
    checks_fail_open: [IntCounter; FailureReason::ALL.len()],
    /// `sluice_check_duration_seconds`: one `ShouldRateLimit`, parse to response.
    pub check_duration: Histogram,
    /// `sluice_redis_errors_total`: counter steps Redis failed or did not answer by the deadline
    /// (reasons `redis_error` and `timeout`; never an open breaker or a busy Sluice).
    pub redis_errors: IntCounter,
    /// `sluice_circuit_open`: the breakers open now (one per Redis Cluster primary, else one).
    pub circuit_open: IntGauge,
    /// `sluice_circuit_transitions_total{to}`: the breaker opening, letting a probe through
    /// (`half_open`) and closing again.
    pub circuit_transitions: IntCounterVec,
    /// `sluice_policies`: enabled policies in this instance's snapshot.
    pub policies: IntGauge,
    /// `sluice_policy_snapshot_timestamp_seconds`: Unix time of the last full policy load that
    /// succeeded (every 30 s while the store answers); 0 before the first.
    pub policy_snapshot_timestamp: Gauge,
    /// `sluice_policy_reload_errors_total`: policy loads (full or of one changed policy) that
    /// failed; the last snapshot kept serving.
    pub policy_reload_errors: IntCounter,
    /// `sluice_ready`: 1 while this instance is ready for traffic (`/readyz` 200, health SERVING).
    pub ready: IntGauge,
    /// `sluice_redis_call_duration_seconds` and `sluice_redis_batch_requests`: one observation
    /// per script call. Registered only with Redis ([`Metrics::register_redis_calls`]).
    redis_calls: Arc<OnceLock<RedisCallSeries>>,
    /// `sluice_tenant_checks_total{tenant, decision}` for the top tenants by traffic.
    pub tenants: Arc<TopTenants>,
    /// `sluice_grpc_requests_total{method, code}` and `sluice_grpc_request_duration_seconds{method}`.
    grpc: Arc<GrpcSeries>,
}

/// The series of Redis script calls: how long each took, and how many requests it decided.
#[derive(Clone)]
pub struct RedisCallSeries {
    pub duration: Histogram,
    pub batch_requests: Histogram,
}

/// Buckets of `sluice_redis_batch_requests`: 1 up to the most a call may carry (256).
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// Why the counter step gave no decision: the `reason` label of
/// `sluice_checks_total{decision="fail_open"}` and the `reason` field of the warning log. A fixed
/// set, so the label can never take a value from a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    /// Redis answered with an error, or could not be reached.
    RedisError,
    /// A call was sent and not answered by the deadline (or reached Redis after it).
    Timeout,
    /// The circuit breaker is open: Redis was not asked.
    BreakerOpen,
    /// Sluice was busy: the check waited for a call until its deadline and was never sent (or
    /// the in-process counter tracks as many counters as it may).
    Overloaded,
}

impl FailureReason {
    /// Every reason, in the order of the metric handles.
    pub const ALL: [FailureReason; 4] = [
        FailureReason::RedisError,
        FailureReason::Timeout,
        FailureReason::BreakerOpen,
        FailureReason::Overloaded,
    ];

    /// The label value: `redis_error`, `timeout`, `breaker_open` or `overloaded`.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::RedisError => "redis_error",
            FailureReason::Timeout => "timeout",
            FailureReason::BreakerOpen => "breaker_open",
            FailureReason::Overloaded => "overloaded",
        }
    }
}

/// `sluice_checks_total` as one family: the `{decision}` series, and the fail-open series with
/// their `{decision, reason}`. Two vectors because a vector has one set of label names, one
/// collector because a registry takes one descriptor per metric name.
struct ChecksCollector {
    by_decision: IntCounterVec,
    fail_open: IntCounterVec,
}

impl prometheus::core::Collector for ChecksCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.by_decision.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let mut families = self.by_decision.collect();
        let fail_open = self
            .fail_open
            .collect()
            .into_iter()
            .flat_map(|mut family| family.take_metric());
        if let Some(family) = families.first_mut() {
            family.mut_metric().extend(fail_open);
        }
        families
    }
}

/// The `/package.Service/Method` paths Sluice serves: the only `method` label values besides
/// [`UNKNOWN_METHOD`], so a client cannot create series by calling made-up paths.
pub const GRPC_METHODS: [&str; 11] = [
    "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
    "/sluice.admin.v1.PolicyService/CreatePolicy",
    "/sluice.admin.v1.PolicyService/GetPolicy",
    "/sluice.admin.v1.PolicyService/UpdatePolicy",
    "/sluice.admin.v1.PolicyService/DeletePolicy",
    "/sluice.admin.v1.PolicyService/ListPolicies",
    "/sluice.admin.v1.ExplainService/ExplainRateLimit",
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// The `method` label of every call to a path not in [`GRPC_METHODS`].
pub const UNKNOWN_METHOD: &str = "unknown";

/// Method labels: [`GRPC_METHODS`], then [`UNKNOWN_METHOD`].
const METHOD_LABELS: usize = GRPC_METHODS.len() + 1;
/// gRPC status codes, 0 (OK) ..= 16 (UNAUTHENTICATED).
const GRPC_CODES: usize = 17;

/// The per-RPC series, each resolved from its vector once, on its first use, and kept: after
/// that a call costs an atomic load and the increments, never the vector's lock or label hashing.
/// Resolved lazily so `/metrics` shows only the (method, code) pairs that happened.
struct GrpcSeries {
    requests: IntCounterVec,
    duration: HistogramVec,
    request_handles: [[OnceLock<IntCounter>; GRPC_CODES]; METHOD_LABELS],
    duration_handles: [OnceLock<Histogram>; METHOD_LABELS],
}

impl GrpcSeries {
    fn new(requests: IntCounterVec, duration: HistogramVec) -> Self {
        Self {
            requests,
            duration,
            request_handles: std::array::from_fn(|_| std::array::from_fn(|_| OnceLock::new())),
            duration_handles: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    fn observe(&self, method: MethodLabel, code: tonic::Code, started: Instant) {
        let m = method.0;
        // tonic::Code is a fieldless enum numbered 0 ..= 16.
        let c = (code as usize).min(GRPC_CODES - 1);
        self.request_handles[m][c]
            .get_or_init(|| {
                self.requests
                    .with_label_values(&[method.as_str(), code_name(code)])
            })
            .inc();
        self.duration_handles[m]
            .get_or_init(|| self.duration.with_label_values(&[method.as_str()]))
            .observe(started.elapsed().as_secs_f64());
    }
}

/// A `method` label: an index into [`GRPC_METHODS`], or [`UNKNOWN_METHOD`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MethodLabel(usize);

impl MethodLabel {
    fn of_path(path: &str) -> Self {
        Self(
            GRPC_METHODS
                .iter()
                .position(|known| *known == path)
                .unwrap_or(GRPC_METHODS.len()),
        )
    }

    fn as_str(self) -> &'static str {
        GRPC_METHODS.get(self.0).copied().unwrap_or(UNKNOWN_METHOD)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every series, with [`DEFAULT_TOP_TENANTS`] tenants of their own.
    pub fn new() -> Self {
        Self::with_top_tenants(DEFAULT_TOP_TENANTS)
    }

    /// Every series, with `top_tenants` tenants (by traffic) of their own in
    /// `sluice_tenant_checks_total` (`SLUICE_METRICS_TOP_TENANTS`).
    pub fn with_top_tenants(top_tenants: usize) -> Self {
        let registry = Registry::new();
        let checks_opts = Opts::new(
            "sluice_checks_total",
            "Rate-limit decisions, one per descriptor; fail_open with its reason",
        );
        let checks = IntCounterVec::new(checks_opts.clone(), &["decision"]).expect("valid metric");
        let fail_open =
            IntCounterVec::new(checks_opts, &["decision", "reason"]).expect("valid metric");
        let check_duration = Histogram::with_opts(
            HistogramOpts::new(
                "sluice_check_duration_seconds",
                "Time to answer one ShouldRateLimit call",
            )
            .buckets(CHECK_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        let redis_errors = IntCounter::new(
            "sluice_redis_errors_total",
            "Counter steps that Redis failed or did not answer within RATE_LIMIT_REDIS_TIMEOUT_MS",
        )
        .expect("valid metric");
        let circuit_open = IntGauge::new(
            "sluice_circuit_open",
            "Circuit breakers open (answering without calling Redis): 0 or 1 for one Redis server, up to one per primary on Redis Cluster",
        )
        .expect("valid metric");
        let policies = IntGauge::new(
            "sluice_policies",
            "Enabled policies in the in-memory snapshot",
        )
        .expect("valid metric");
        let circuit_transitions = IntCounterVec::new(
            Opts::new(
                "sluice_circuit_transitions_total",
                "Circuit breaker state changes: to=open, half_open (a probe let through), closed",
            ),
            &["to"],
        )
        .expect("valid metric");
        let policy_snapshot_timestamp = Gauge::new(
            "sluice_policy_snapshot_timestamp_seconds",
            "Unix time of the last successful full policy load (0 before the first)",
        )
        .expect("valid metric");
        let policy_reload_errors = IntCounter::new(
            "sluice_policy_reload_errors_total",
            "Policy loads that failed; the last snapshot kept serving",
        )
        .expect("valid metric");
        let ready = IntGauge::new(
            "sluice_ready",
            "1 while this instance is ready for traffic (/readyz 200, gRPC health SERVING)",
        )
        .expect("valid metric");
        let tenants = TopTenants::new(top_tenants);
        let grpc_requests = IntCounterVec::new(
            Opts::new(
                "sluice_grpc_requests_total",
                "gRPC calls by method and status code",
            ),
            &["method", "code"],
        )
        .expect("valid metric");
        let grpc_duration = HistogramVec::new(
            HistogramOpts::new(
                "sluice_grpc_request_duration_seconds",
                "gRPC call latency by method",
            )
            .buckets(CHECK_BUCKETS.to_vec()),
            &["method"],
        )
        .expect("valid metric");
        for collector in [
            Box::new(ChecksCollector {
                by_decision: checks.clone(),
                fail_open: fail_open.clone(),
            }) as Box<dyn prometheus::core::Collector>,
            Box::new(check_duration.clone()),
            Box::new(redis_errors.clone()),
            Box::new(circuit_open.clone()),
            Box::new(circuit_transitions.clone()),
            Box::new(policies.clone()),
            Box::new(policy_snapshot_timestamp.clone()),
            Box::new(policy_reload_errors.clone()),
            Box::new(ready.clone()),
            Box::new(tenants.counter().clone()),
            Box::new(grpc_requests.clone()),
            Box::new(grpc_duration.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        Self {
            checks_allowed: checks.with_label_values(&["allowed"]),
            checks_denied: checks.with_label_values(&["denied"]),
            checks_shadow_denied: checks.with_label_values(&["shadow_denied"]),
            checks_fail_open: FailureReason::ALL
                .map(|reason| fail_open.with_label_values(&["fail_open", reason.as_str()])),
            checks_unmatched: checks.with_label_values(&["unmatched"]),
            check_duration,
            redis_errors,
            circuit_open,
            circuit_transitions,
            policies,
            policy_snapshot_timestamp,
            policy_reload_errors,
            ready,
            redis_calls: Arc::new(OnceLock::new()),
            tenants: Arc::new(tenants),
            grpc: Arc::new(GrpcSeries::new(grpc_requests, grpc_duration)),
            registry,
        }
    }

    /// Registers `sluice_redis_call_duration_seconds` and `sluice_redis_batch_requests` (only an
    /// instance counting in Redis has them) and returns their handles; a second call returns the
    /// same ones.
    pub fn register_redis_calls(&self) -> RedisCallSeries {
        self.redis_calls
            .get_or_init(|| {
                let duration = Histogram::with_opts(
                    HistogramOpts::new(
                        "sluice_redis_call_duration_seconds",
                        "Time from sending one sliding-window script call to its answer",
                    )
                    .buckets(CHECK_BUCKETS.to_vec()),
                )
                .expect("valid metric");
                let batch_requests = Histogram::with_opts(
                    HistogramOpts::new(
                        "sluice_redis_batch_requests",
                        "Requests decided by one script call (group commit)",
                    )
                    .buckets(BATCH_BUCKETS.to_vec()),
                )
                .expect("valid metric");
                for collector in [duration.clone(), batch_requests.clone()] {
                    if let Err(err) = self.registry.register(Box::new(collector)) {
                        tracing::warn!(error = %err, "Redis call series registered twice");
                    }
                }
                RedisCallSeries {
                    duration,
                    batch_requests,
                }
            })
            .clone()
    }

    /// `sluice_checks_total{decision="fail_open",reason}` for `reason`.
    pub fn checks_fail_open(&self, reason: FailureReason) -> &IntCounter {
        // ALL lists every variant once, in declaration order.
        &self.checks_fail_open[reason as usize]
    }

    /// Registers `sluice_redis_up` (1 while Redis answers, else 0) and returns it. Only an
    /// instance counting in Redis has the series: with in-process counters there is no Redis
    /// to be up or down, and a constant would only mislead alerts. Call it once.
    pub fn register_redis_up(&self) -> IntGauge {
        let gauge = IntGauge::new(
            "sluice_redis_up",
            "1 while the Redis counter store answers, 0 while it does not (or not yet)",
        )
        .expect("valid metric");
        if let Err(err) = self.registry.register(Box::new(gauge.clone())) {
            tracing::warn!(error = %err, "sluice_redis_up registered twice; keeping the first");
        }
        gauge
    }

    /// Every series as it is now: for OTLP export and the status page.
    pub fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.registry.gather()
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|err| format!("# encoding metrics failed: {err}\n"))
    }

    #[cfg(test)]
    fn observe_grpc(&self, path: &str, code: tonic::Code, started: Instant) {
        self.grpc.observe(MethodLabel::of_path(path), code, started);
    }
}

/// Counts and times every gRPC call by its `/package.Service/Method` path (one of
/// [`GRPC_METHODS`], else [`UNKNOWN_METHOD`]).
#[derive(Clone)]
pub struct GrpcMetricsLayer {
    grpc: Arc<GrpcSeries>,
}

impl GrpcMetricsLayer {
    pub fn new(metrics: Metrics) -> Self {
        Self { grpc: metrics.grpc }
    }
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics {
            inner,
            grpc: self.grpc.clone(),
        }
    }
}

/// The service [`GrpcMetricsLayer`] wraps around the gRPC router.
#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    grpc: Arc<GrpcSeries>,
}

impl<S, B, R> tower::Service<http::Request<B>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = MethodLabel::of_path(request.uri().path());
        let grpc = self.grpc.clone();
        let started = Instant::now();
        // Only with OTLP on: a span per RPC, a child of the caller's W3C trace context. Named by
        // the label too, so made-up paths cannot multiply span names either.
        let span = if RPC_SPANS.load(Ordering::Acquire) {
            let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
                propagator.extract(&MetadataExtractor(request.headers()))
            });
            let span = tracing::info_span!(
                "grpc",
                otel.name = method.as_str().trim_start_matches('/'),
                otel.kind = "server",
                rpc.system = "grpc",
                rpc.method = method.as_str(),
                rpc.grpc.status_code = tracing::field::Empty,
                sluice.tenant = tracing::field::Empty,
                sluice.policy = tracing::field::Empty,
                sluice.decision = tracing::field::Empty,
            );
            let _ = span.set_parent(parent);
            span
        } else {
            tracing::Span::none()
        };
        let future = self.inner.call(request);
        let record_in = span.clone();
        Box::pin(
            async move {
                let result = future.await;
                let code = match &result {
                    // A unary error is sent "trailers-only": grpc-status in the headers. Without it the
                    // call succeeded (its OK status follows in the trailers).
                    Ok(response) => response
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<i32>().ok())
                        .map(tonic::Code::from_i32)
                        .unwrap_or(tonic::Code::Ok),
                    Err(_) => tonic::Code::Internal,
                };
                grpc.observe(method, code, started);
                record_in.record("rpc.grpc.status_code", code as i64);
                result
            }
            .instrument(span),
        )
    }
}

/// The canonical upper-case name of a gRPC status code.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// `err` and its sources as one line, joined with ": ", each cause stated once: a source whose
/// text the line already holds (many errors repeat their source in their own message) is left
/// out, and PostgreSQL's `at line N` — the line of *its* C source that raised the error, noise to
/// an operator — is dropped.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = String::new();
    let mut noisy_texts = Vec::new();
    let mut next = Some(err);
    while let Some(error) = next {
        let text = error.to_string();
        noisy_texts.extend(without_source_location(error));
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
        next = error.source();
    }
    for (noisy, clean) in noisy_texts {
        line = line.replace(&noisy, &clean);
    }
    line
}

/// For an error that carries a server-side source location in its text, that text and the
/// text without it. sqlx shows PostgreSQL's as `<message> at line <n>`.
fn without_source_location(error: &(dyn std::error::Error + 'static)) -> Option<(String, String)> {
    let sqlx::Error::Database(database) = error.downcast_ref::<sqlx::Error>()? else {
        return None;
    };
    let (noisy, clean) = (database.to_string(), database.message().to_owned());
    (noisy != clean).then_some((noisy, clean))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer {
        text: String,
        source: Option<Box<Layer>>,
    }

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.text)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.source.as_deref().map(|s| s as _)
        }
    }

    /// An error chain with these texts, outermost first.
    fn chain(texts: &[&str]) -> Layer {
        let mut inner: Option<Box<Layer>> = None;
        for text in texts.iter().rev() {
            inner = Some(Box::new(Layer {
                text: (*text).to_owned(),
                source: inner,
            }));
        }
        *inner.expect("at least one text")
    }

    #[test]
    fn error_chain_states_each_cause_once() {
        let cases: &[(&[&str], &str)] = &[
            (&["a", "b", "c"], "a: b: c"),
            // sqlx: the message embeds its source's, which embeds its own.
            (
                &[
                    "while executing migrations: error returned from database: boom",
                    "error returned from database: boom",
                    "boom",
                ],
                "while executing migrations: error returned from database: boom",
            ),
            (
                &[
                    "pool timed out while waiting for an open connection",
                    "pool timed out while waiting for an open connection",
                ],
                "pool timed out while waiting for an open connection",
            ),
            (
                &["cannot reach the counter store", "IO Error: refused"],
                "cannot reach the counter store: IO Error: refused",
            ),
        ];
        for (texts, expected) in cases {
            assert_eq!(error_chain(&chain(texts)), *expected, "{texts:?}");
        }
    }

    #[test]
    fn exports_every_spec_series() {
        let metrics = Metrics::new();
        metrics.checks_allowed.inc();
        metrics.checks_fail_open(FailureReason::Overloaded).inc();
        metrics.check_duration.observe(0.001);
        metrics.observe_grpc(
            "/sluice.admin.v1.PolicyService/GetPolicy",
            tonic::Code::NotFound,
            Instant::now(),
        );
        let text = metrics.render();
        for needle in [
            "sluice_checks_total{decision=\"allowed\"} 1",
            "sluice_checks_total{decision=\"fail_open\",reason=\"overloaded\"} 1",
            "sluice_checks_total{decision=\"fail_open\",reason=\"timeout\"} 0",
            "sluice_check_duration_seconds_bucket",
            "sluice_redis_errors_total 0",
            "sluice_circuit_open 0",
            "sluice_policies 0",
            "sluice_grpc_requests_total{code=\"NOT_FOUND\",method=\"/sluice.admin.v1.PolicyService/GetPolicy\"} 1",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }

    #[test]
    fn method_labels_are_the_served_paths_or_unknown() {
        let metrics = Metrics::new();
        for path in GRPC_METHODS {
            metrics.observe_grpc(path, tonic::Code::Ok, Instant::now());
        }
        for made_up in [
            "/x.Y/Z",
            "/sluice.admin.v1.PolicyService/GetPolicyX",
            "",
            "/",
        ] {
            metrics.observe_grpc(made_up, tonic::Code::Unimplemented, Instant::now());
        }
        let text = metrics.render();
        for path in GRPC_METHODS {
            assert!(
                text.contains(&format!("code=\"OK\",method=\"{path}\"}} 1")),
                "{path} in\n{text}"
            );
        }
        assert!(
            text.contains(
                "sluice_grpc_requests_total{code=\"UNIMPLEMENTED\",method=\"unknown\"} 4"
            ),
            "{text}"
        );
        assert!(
            !text.contains("/x.Y/Z") && !text.contains("GetPolicyX"),
            "{text}"
        );
        // One duration series per label used: the served methods and `unknown`.
        assert_eq!(
            text.matches("sluice_grpc_request_duration_seconds_count{")
                .count(),
            GRPC_METHODS.len() + 1
        );
    }

    #[test]
    fn every_served_method_is_a_known_label() {
        // Every method of every service the router serves, read from the same descriptor sets
        // that reflection serves: an added or renamed RPC must be added to GRPC_METHODS, or its
        // calls would be counted as `unknown`.
        use prost::Message;
        let mut served = Vec::new();
        for set in [
            crate::proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ] {
            let set = prost_types::FileDescriptorSet::decode(set).expect("a descriptor set");
            for file in set.file {
                for service in &file.service {
                    for method in &service.method {
                        served.push(format!(
                            "/{}.{}/{}",
                            file.package(),
                            service.name(),
                            method.name()
                        ));
                    }
                }
            }
        }
        served.sort();
        let mut known: Vec<String> = GRPC_METHODS.iter().map(|m| (*m).to_owned()).collect();
        known.sort();
        assert_eq!(served, known);
    }
}
