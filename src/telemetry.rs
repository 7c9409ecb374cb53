//! Telemetry: the tracing subscriber (text or JSON, levels from `RUST_LOG`), the Prometheus
//! registry with every series of SPEC §5, and the tower layer that counts and times each gRPC call.

use std::{
    io::IsTerminal,
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};
use tracing_subscriber::{EnvFilter, fmt, layer::SubscriberExt, util::SubscriberInitExt};

use crate::settings::LogFormat;

/// Installs the global tracing subscriber. `format` `None` picks text on a terminal, else JSON.
pub fn init_tracing(format: Option<LogFormat>) {
    let format = format.unwrap_or(if std::io::stderr().is_terminal() {
        LogFormat::Text
    } else {
        LogFormat::Json
    });
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Text => registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    // A second init (tests that build several apps in one process) keeps the first subscriber.
    let _ = result;
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
    pub checks_fail_open: IntCounter,
    pub checks_unmatched: IntCounter,
    /// `sluice_check_duration_seconds`: one `ShouldRateLimit`, parse to response.
    pub check_duration: Histogram,
    /// `sluice_redis_errors_total`: counter steps that failed or missed the deadline.
    pub redis_errors: IntCounter,
    /// `sluice_circuit_open`: 1 while the breaker answers without Redis.
    pub circuit_open: IntGauge,
    /// `sluice_policies`: enabled policies in this instance's snapshot.
    pub policies: IntGauge,
    /// `sluice_grpc_requests_total{method, code}` and `sluice_grpc_request_duration_seconds{method}`.
    grpc_requests: IntCounterVec,
    grpc_duration: HistogramVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let checks = IntCounterVec::new(
            Opts::new(
                "sluice_checks_total",
                "Rate-limit decisions, one per descriptor",
            ),
            &["decision"],
        )
        .expect("valid metric");
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
            "Counter steps that failed or missed RATE_LIMIT_REDIS_TIMEOUT_MS",
        )
        .expect("valid metric");
        let circuit_open = IntGauge::new(
            "sluice_circuit_open",
            "1 while the circuit breaker answers without calling Redis",
        )
        .expect("valid metric");
        let policies = IntGauge::new(
            "sluice_policies",
            "Enabled policies in the in-memory snapshot",
        )
        .expect("valid metric");
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
            Box::new(checks.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(check_duration.clone()),
            Box::new(redis_errors.clone()),
            Box::new(circuit_open.clone()),
            Box::new(policies.clone()),
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
            checks_fail_open: checks.with_label_values(&["fail_open"]),
            checks_unmatched: checks.with_label_values(&["unmatched"]),
            check_duration,
            redis_errors,
            circuit_open,
            policies,
            grpc_requests,
            grpc_duration,
            registry,
        }
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|err| format!("# encoding metrics failed: {err}\n"))
    }

    fn observe_grpc(&self, method: &str, code: &str, started: Instant) {
        self.grpc_requests.with_label_values(&[method, code]).inc();
        self.grpc_duration
            .with_label_values(&[method])
            .observe(started.elapsed().as_secs_f64());
    }
}

/// Counts and times every gRPC call by its `/package.Service/Method` path.
#[derive(Clone)]
pub struct GrpcMetricsLayer {
    metrics: Metrics,
}

impl GrpcMetricsLayer {
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service [`GrpcMetricsLayer`] wraps around the gRPC router.
#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    metrics: Metrics,
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
        let method = request.uri().path().to_owned();
        let metrics = self.metrics.clone();
        let started = Instant::now();
        let future = self.inner.call(request);
        Box::pin(async move {
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
            metrics.observe_grpc(&method, code_name(code), started);
            result
        })
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

/// `err` and all its sources, joined with ": ".
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_every_spec_series() {
        let metrics = Metrics::new();
        metrics.checks_allowed.inc();
        metrics.checks_fail_open.inc();
        metrics.check_duration.observe(0.001);
        metrics.observe_grpc(
            "/sluice.admin.v1.PolicyService/GetPolicy",
            "NOT_FOUND",
            Instant::now(),
        );
        let text = metrics.render();
        for needle in [
            "sluice_checks_total{decision=\"allowed\"} 1",
            "sluice_checks_total{decision=\"fail_open\"} 1",
            "sluice_check_duration_seconds_bucket",
            "sluice_redis_errors_total 0",
            "sluice_circuit_open 0",
            "sluice_policies 0",
            "sluice_grpc_requests_total{code=\"NOT_FOUND\",method=\"/sluice.admin.v1.PolicyService/GetPolicy\"} 1",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
