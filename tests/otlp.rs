//! Traces and metrics over OTLP: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, the real `sluice` binary
//! exports a span per RPC to a collector (a real OTLP/gRPC `TraceService` and `MetricsService`
//! this test serves), as a child of the W3C trace context the caller sent in its gRPC metadata,
//! even with `RUST_LOG=warn` (the log level governs logs only), and the same series as
//! `/metrics`.

#[path = "support/mod.rs"]
mod support;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::{
    collector::{
        metrics::v1::{
            ExportMetricsServiceRequest, ExportMetricsServiceResponse,
            metrics_service_server::{MetricsService, MetricsServiceServer},
        },
        trace::v1::{
            ExportTraceServiceRequest, ExportTraceServiceResponse,
            trace_service_server::{TraceService, TraceServiceServer},
        },
    },
    metrics::v1::{metric, number_data_point},
};
use sluice::proto::envoy::{
    extensions::common::ratelimit::v3::{RateLimitDescriptor, rate_limit_descriptor::Entry},
    service::ratelimit::v3::{RateLimitRequest, rate_limit_service_client::RateLimitServiceClient},
};
use tokio::sync::mpsc;

/// Collects every export request it receives.
struct Collector(mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let _ = self.0.send(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Collects every metrics export it receives.
struct MetricsCollector(mpsc::UnboundedSender<ExportMetricsServiceRequest>);

#[tonic::async_trait]
impl MetricsService for MetricsCollector {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let _ = self.0.send(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn rpc_spans_reach_the_collector_under_the_callers_trace() {
    // A collector on a free port.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr = listener.local_addr().unwrap();
    let (spans_tx, mut spans_rx) = mpsc::unbounded_channel();
    let (metrics_tx, mut metrics_rx) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(spans_tx)))
            .add_service(MetricsServiceServer::new(MetricsCollector(metrics_tx)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    // Sluice on its embedded default, exporting to it.
    let dir = tempfile::tempdir().unwrap();
    let (grpc_port, http_port) = (support::free_port(), support::free_port());
    let child = support::sluice_command()
        .current_dir(dir.path())
        .env("SLUICE_GRPC_ADDR", format!("127.0.0.1:{grpc_port}"))
        .env("SLUICE_HTTP_ADDR", format!("127.0.0.1:{http_port}"))
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://{collector_addr}"),
        )
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "200")
        // A usual production level: it must silence logs, not the exported spans.
        .env("RUST_LOG", "warn")
        .env("OTEL_SERVICE_NAME", "sluice-under-test")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Stopped (SIGTERM, then SIGKILL) however the test ends, failing assertions included.
    let _child = StopOnDrop(child);
    let started = Instant::now();
    let channel = loop {
        if let Ok(channel) =
            tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{grpc_port}"))
                .unwrap()
                .connect()
                .await
        {
            break channel;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "sluice never listened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // A call that carries a W3C traceparent.
    let mut request = tonic::Request::new(RateLimitRequest {
        domain: "edge".into(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![Entry {
                key: "path".into(),
                value: "/x".into(),
            }],
            ..Default::default()
        }],
        hits_addend: 0,
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01")
            .parse()
            .unwrap(),
    );
    RateLimitServiceClient::new(channel)
        .should_rate_limit(request)
        .await
        .expect("ShouldRateLimit answers");

    // Its span arrives, in the caller's trace, as a child of the caller's span.
    let deadline = Instant::now() + Duration::from_secs(10);
    let span = loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let export = tokio::time::timeout(remaining, spans_rx.recv())
            .await
            .expect("no span reached the collector within 10 s")
            .expect("collector running");
        let found = export.resource_spans.iter().find_map(|resource| {
            let service = resource.resource.as_ref().and_then(|r| {
                r.attributes
                    .iter()
                    .find(|kv| kv.key == "service.name")
                    .map(|kv| format!("{:?}", kv.value))
            });
            resource
                .scope_spans
                .iter()
                .flat_map(|scope| &scope.spans)
                .find(|span| span.name.ends_with("RateLimitService/ShouldRateLimit"))
                .map(|span| (span.clone(), service))
        });
        if let Some(found) = found {
            break found;
        }
    };
    let (span, service) = span;
    assert_eq!(hex(&span.trace_id), TRACE_ID);
    assert_eq!(hex(&span.parent_span_id), PARENT_SPAN_ID);
    assert!(service.unwrap_or_default().contains("sluice-under-test"));
    let status = span
        .attributes
        .iter()
        .find(|kv| kv.key == "rpc.grpc.status_code")
        .map(|kv| format!("{:?}", kv.value));
    assert!(
        status.unwrap_or_default().contains("IntValue(0)"),
        "{:?}",
        span.attributes
    );

    let attribute = |key: &str| {
        span.attributes
            .iter()
            .find(|kv| kv.key == key)
            .map(|kv| format!("{:?}", kv.value))
            .unwrap_or_default()
    };
    assert!(
        attribute("sluice.decision").contains("unmatched"),
        "{:?}",
        span.attributes
    );
    assert!(
        attribute("sluice.tenant").contains("anonymous"),
        "{:?}",
        span.attributes
    );

    // The metrics arrive too: the same series as /metrics, counting that one unmatched check.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let export = tokio::time::timeout(remaining, metrics_rx.recv())
            .await
            .expect("no metrics export counted the check within 10 s")
            .expect("collector running");
        let resource = &export.resource_metrics[0];
        let service = format!("{:?}", resource.resource);
        assert!(service.contains("sluice-under-test"), "{service}");
        let metrics: Vec<_> = resource
            .scope_metrics
            .iter()
            .flat_map(|scope| &scope.metrics)
            .collect();
        let unmatched = metrics
            .iter()
            .filter(|m| m.name == "sluice_checks_total")
            .filter_map(|m| match &m.data {
                Some(metric::Data::Sum(sum)) => Some(sum),
                _ => None,
            })
            .flat_map(|sum| &sum.data_points)
            .filter(|p| format!("{:?}", p.attributes).contains("unmatched"))
            .find_map(|p| match p.value {
                Some(number_data_point::Value::AsDouble(v)) => Some(v),
                _ => None,
            });
        if unmatched == Some(1.0) {
            let histogram = metrics
                .iter()
                .find(|m| m.name == "sluice_check_duration_seconds")
                .expect("the check latency histogram is exported");
            let Some(metric::Data::Histogram(histogram)) = &histogram.data else {
                panic!("sluice_check_duration_seconds is a histogram: {histogram:?}");
            };
            assert_eq!(histogram.data_points[0].count, 1);
            assert!(metrics.iter().any(|m| m.name == "sluice_ready"));
            break;
        }
    }
}

/// Owns the sluice process: a test that fails must not leave it running.
struct StopOnDrop(std::process::Child);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
