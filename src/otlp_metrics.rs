//! OTLP metrics: the very series `/metrics` serves, pushed to an OTLP/gRPC collector.
//!
//! On when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`) is set, unless
//! `OTEL_METRICS_EXPORTER=none` or `OTEL_SDK_DISABLED=true`. Every `OTEL_METRIC_EXPORT_INTERVAL`
//! milliseconds (default 60,000) the Prometheus registry is gathered and sent as one
//! `ExportMetricsServiceRequest`, each family with its Prometheus name, help and labels: counters
//! as cumulative monotonic sums, gauges as gauges, histograms as cumulative explicit-bucket
//! histograms. One set of instruments therefore feeds both, and a series can never exist on one
//! side only. The resource carries `service.name` (`OTEL_SERVICE_NAME`, default `sluice`) and
//! `OTEL_RESOURCE_ATTRIBUTES`. A failed export is logged (rate-limited by the interval) and the
//! next one carries the cumulative values again, so nothing is lost but resolution.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::{
    collector::metrics::v1::{
        ExportMetricsServiceRequest, metrics_service_client::MetricsServiceClient,
    },
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    metrics::v1::{
        AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
        ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
    },
    resource::v1::Resource,
};
use prometheus::proto::{MetricFamily, MetricType};
use tokio::sync::watch;

use crate::telemetry::Metrics;

const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Where and how often to export, from the standard `OTEL_*` variables; `None` when off.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpMetricsConfig {
    pub endpoint: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub resource: Vec<(String, String)>,
}

impl OtlpMetricsConfig {
    /// Reads the configuration from `var` (the process environment in production).
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Option<Self> {
        let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        if set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || set("OTEL_METRICS_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
        {
            return None;
        }
        let endpoint = set("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
            .or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT"))?;
        let millis = |name: &str, default: Duration| {
            set(name)
                .and_then(|v| v.trim().parse::<u64>().ok())
                .filter(|ms| *ms > 0)
                .map_or(default, Duration::from_millis)
        };
        let mut resource: Vec<(String, String)> = set("OTEL_RESOURCE_ATTRIBUTES")
            .map(|attributes| {
                attributes
                    .split(',')
                    .filter_map(|pair| {
                        let (key, value) = pair.split_once('=')?;
                        Some((key.trim().to_owned(), value.trim().to_owned()))
                    })
                    .filter(|(key, _)| !key.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let service = set("OTEL_SERVICE_NAME").unwrap_or_else(|| {
            resource
                .iter()
                .find(|(key, _)| key == "service.name")
                .map_or_else(|| "sluice".to_owned(), |(_, value)| value.clone())
        });
        resource.retain(|(key, _)| key != "service.name");
        resource.insert(0, ("service.name".to_owned(), service));
        Some(Self {
            endpoint,
            interval: millis("OTEL_METRIC_EXPORT_INTERVAL", DEFAULT_INTERVAL),
            timeout: millis("OTEL_METRIC_EXPORT_TIMEOUT", DEFAULT_TIMEOUT),
            resource,
        })
    }
}

/// Exports `metrics` every interval until `stop` turns true, then once more (so the last
/// values before a shutdown reach the collector).
pub async fn run(config: OtlpMetricsConfig, metrics: Metrics, mut stop: watch::Receiver<bool>) {
    let channel = match tonic::transport::Endpoint::from_shared(config.endpoint.clone()) {
        Ok(endpoint) => endpoint.timeout(config.timeout).connect_lazy(),
        Err(err) => {
            tracing::warn!(error = %err, endpoint = %config.endpoint, "OTEL_EXPORTER_OTLP_ENDPOINT is not a URL: metrics are not exported over OTLP");
            return;
        }
    };
    let mut client = MetricsServiceClient::new(channel);
    let started = unix_nanos();
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.changed() => true,
        };
        let request = export_request(&config.resource, &metrics.gather(), started, unix_nanos());
        if let Err(status) = client.export(request).await {
            tracing::warn!(error = %status.message(), code = ?status.code(), "exporting metrics over OTLP failed; the next export carries them");
        }
        if last || *stop.borrow() {
            return;
        }
    }
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
        })
}

fn string_value(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..Default::default()
    }
}

/// One export of every family, stamped `now` (cumulative since `started`).
pub fn export_request(
    resource: &[(String, String)],
    families: &[MetricFamily],
    started: u64,
    now: u64,
) -> ExportMetricsServiceRequest {
    let metrics = families
        .iter()
        .filter_map(|family| metric(family, started, now))
        .collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: resource
                    .iter()
                    .map(|(key, value)| string_value(key, value))
                    .collect(),
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "sluice".to_owned(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    ..Default::default()
                }),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// One Prometheus family as an OTLP metric; `None` for types Sluice does not use.
fn metric(family: &MetricFamily, started: u64, now: u64) -> Option<Metric> {
    let attributes = |m: &prometheus::proto::Metric| -> Vec<KeyValue> {
        m.get_label()
            .iter()
            .map(|label| string_value(label.name(), label.value()))
            .collect()
    };
    let number = |m: &prometheus::proto::Metric, value: f64| NumberDataPoint {
        attributes: attributes(m),
        start_time_unix_nano: started,
        time_unix_nano: now,
        value: Some(number_data_point::Value::AsDouble(value)),
        ..Default::default()
    };
    let data = match family.get_field_type() {
        MetricType::COUNTER => metric::Data::Sum(Sum {
            data_points: family
                .get_metric()
                .iter()
                .map(|m| number(m, m.get_counter().get_value()))
                .collect(),
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: true,
        }),
        MetricType::GAUGE => metric::Data::Gauge(Gauge {
            data_points: family
                .get_metric()
                .iter()
                .map(|m| number(m, m.get_gauge().get_value()))
                .collect(),
        }),
        MetricType::HISTOGRAM => metric::Data::Histogram(Histogram {
            data_points: family
                .get_metric()
                .iter()
                .map(|m| {
                    let histogram = m.get_histogram();
                    // Prometheus buckets count everything up to their bound; OTLP counts per
                    // bucket, with one more bucket above the last bound.
                    let mut bucket_counts = Vec::with_capacity(histogram.get_bucket().len() + 1);
                    let mut explicit_bounds = Vec::with_capacity(histogram.get_bucket().len());
                    let mut below = 0;
                    for bucket in histogram.get_bucket() {
                        if bucket.upper_bound().is_infinite() {
                            continue;
                        }
                        let cumulative = bucket.cumulative_count();
                        bucket_counts.push(cumulative.saturating_sub(below));
                        explicit_bounds.push(bucket.upper_bound());
                        below = cumulative;
                    }
                    bucket_counts.push(histogram.get_sample_count().saturating_sub(below));
                    HistogramDataPoint {
                        attributes: attributes(m),
                        start_time_unix_nano: started,
                        time_unix_nano: now,
                        count: histogram.get_sample_count(),
                        sum: Some(histogram.get_sample_sum()),
                        bucket_counts,
                        explicit_bounds,
                        ..Default::default()
                    }
                })
                .collect(),
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
        }),
        _ => return None,
    };
    Some(Metric {
        name: family.name().to_owned(),
        description: family.help().to_owned(),
        data: Some(data),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn config(vars: &[(&str, &str)]) -> Option<OtlpMetricsConfig> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        OtlpMetricsConfig::from_env(|name| vars.get(name).cloned())
    }

    #[test]
    fn the_standard_variables_turn_it_on_and_off() {
        assert_eq!(config(&[]), None);
        let on = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "250"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=prod, service.name=x",
            ),
            ("OTEL_SERVICE_NAME", "sluice-eu"),
        ])
        .expect("on");
        assert_eq!(on.endpoint, "http://127.0.0.1:4317");
        assert_eq!(on.interval, Duration::from_millis(250));
        assert_eq!(on.timeout, DEFAULT_TIMEOUT);
        assert_eq!(
            on.resource,
            [
                ("service.name".to_owned(), "sluice-eu".to_owned()),
                ("deployment.environment".to_owned(), "prod".to_owned()),
            ]
        );
        let own = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://b:4317"),
        ])
        .expect("on");
        assert_eq!(
            own.endpoint, "http://b:4317",
            "the signal's own endpoint wins"
        );
        assert_eq!(own.resource[0].1, "sluice");
        for off in [
            ("OTEL_METRICS_EXPORTER", "none"),
            ("OTEL_SDK_DISABLED", "true"),
        ] {
            assert_eq!(
                config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317"), off]),
                None,
                "{off:?}"
            );
        }
    }

    #[test]
    fn counters_gauges_and_histograms_keep_their_names_labels_and_values() {
        let metrics = Metrics::new();
        metrics.checks_allowed.inc_by(3);
        metrics.policies.set(7);
        metrics.check_duration.observe(0.0002);
        metrics.check_duration.observe(0.003);
        metrics.check_duration.observe(9.0);
        let request = export_request(&[], &metrics.gather(), 1, 2);
        let exported = &request.resource_metrics[0].scope_metrics[0].metrics;
        let find = |name: &str| {
            exported
                .iter()
                .find(|m| m.name == name)
                .unwrap_or_else(|| panic!("{name} not exported"))
        };
        let Some(metric::Data::Sum(checks)) = &find("sluice_checks_total").data else {
            panic!("a counter is a sum");
        };
        assert!(checks.is_monotonic);
        let allowed = checks
            .data_points
            .iter()
            .find(|p| {
                p.attributes.iter().any(|kv| {
                    kv.key == "decision"
                        && kv.value
                            == Some(AnyValue {
                                value: Some(any_value::Value::StringValue("allowed".into())),
                            })
                })
            })
            .expect("the allowed series");
        assert_eq!(allowed.value, Some(number_data_point::Value::AsDouble(3.0)));
        let Some(metric::Data::Gauge(policies)) = &find("sluice_policies").data else {
            panic!("a gauge is a gauge");
        };
        assert_eq!(
            policies.data_points[0].value,
            Some(number_data_point::Value::AsDouble(7.0))
        );
        let Some(metric::Data::Histogram(duration)) = &find("sluice_check_duration_seconds").data
        else {
            panic!("a histogram is a histogram");
        };
        let point = &duration.data_points[0];
        assert_eq!(point.count, 3);
        assert_eq!(point.bucket_counts.len(), point.explicit_bounds.len() + 1);
        assert_eq!(point.bucket_counts.iter().sum::<u64>(), 3);
        assert_eq!(
            point.bucket_counts.last(),
            Some(&1),
            "9 s is above every bound"
        );
        assert_eq!(point.bucket_counts[1], 1, "0.2 ms falls in (0.1, 0.25] ms");
    }
}
