//! The HTTP listener: `GET /` (the human status page, [`crate::status_page`]), `/metrics`
//! (Prometheus text), `/healthz` (the process is alive) and `/readyz` (policies are loaded and the
//! service is not shutting down; the body also says whether the counter store answers).
//!
//! Readiness deliberately ignores Redis: while Redis is down Sluice still answers every check
//! (per `SLUICE_FAILURE_MODE`), and taking every instance out of the load balancer would turn a
//! Redis outage into connection errors for Envoy (docs/operations.md).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};

use prometheus::IntGauge;

use crate::{
    ratelimit::counter::RedisHealth,
    status_page::{CONTENT_SECURITY_POLICY, Instance, StatusPage},
    telemetry::Metrics,
};

/// Whether this instance should receive traffic: set once the first policy load succeeded,
/// cleared when shutdown begins; mirrored into `sluice_ready` when given one.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>, Option<IntGauge>);

impl Readiness {
    /// Not ready yet, with `gauge` (`sluice_ready`) following every change.
    pub fn reporting_to(gauge: IntGauge) -> Self {
        gauge.set(0);
        Self(Arc::default(), Some(gauge))
    }

    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
        if let Some(gauge) = &self.1 {
            gauge.set(i64::from(ready));
        }
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// The counter store, as `/readyz` reports it.
#[derive(Clone)]
pub enum CounterStore {
    /// In-process counters: nothing to be up or down.
    InProcess,
    /// Redis, with its health as the counter's background ping last saw it.
    Redis(Arc<RedisHealth>),
}

impl CounterStore {
    /// The `/readyz` line about the counters: `redis: up|down|connecting` or
    /// `counters: in-process`.
    fn status_line(&self) -> String {
        match self {
            CounterStore::InProcess => "counters: in-process\n".to_owned(),
            CounterStore::Redis(health) => format!("redis: {}\n", health.state().as_str()),
        }
    }
}

#[derive(Clone)]
struct HttpState {
    metrics: Metrics,
    readiness: Readiness,
    counters: CounterStore,
    /// The status page and its previous reading of the counters, shared by every viewer.
    status_page: Arc<StatusPage>,
}

/// The HTTP routes.
pub fn router(metrics: Metrics, readiness: Readiness, counters: CounterStore) -> Router {
    Router::new()
        .route("/", get(status))
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(HttpState {
            metrics,
            readiness,
            counters,
            status_page: Arc::default(),
        })
}

/// The status page: HTML that allows no script, never cached.
async fn status(State(state): State<HttpState>) -> impl IntoResponse {
    let instance = Instance {
        ready: state.readiness.is_ready(),
        redis: match &state.counters {
            CounterStore::InProcess => None,
            CounterStore::Redis(health) => Some(health.state()),
        },
    };
    let unix_now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |elapsed| elapsed.as_secs_f64());
    let page =
        state
            .status_page
            .render(&state.metrics.gather(), instance, Instant::now(), unix_now);
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        page,
    )
}

async fn metrics_text(State(state): State<HttpState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

/// 200 `ready` or 503 `not ready: …`, then the counter line, e.g. `ready\nredis: down\n`.
async fn ready(State(state): State<HttpState>) -> impl IntoResponse {
    let counters = state.counters.status_line();
    if state.readiness.is_ready() {
        (StatusCode::OK, format!("ready\n{counters}"))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: policies not loaded yet, or shutting down\n{counters}"),
        )
    }
}
