//! [`RateLimitLayer`] and the service it wraps around yours ([`RateLimit`]): build the request's
//! descriptors, ask Sluice within the deadline, then call the inner service (allowed), answer the
//! denial (HTTP 429 or gRPC RESOURCE_EXHAUSTED), or apply the failure mode (no verdict).

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{Either, Full};
use tonic::{Code, transport::Channel};
use tonic_types::{ErrorDetails, QuotaViolation, StatusExt};
use tower_layer::Layer;
use tower_service::Service;
use tracing::{Instrument, field};

use crate::{
    check::{CheckFailure, Checker, Failed},
    descriptor::{Cost, DescriptorBuilder},
    headers::{ResponseHeaders, insert_limit_headers, retry_after_value},
    verdict::{Limits, Verdict},
};

/// The layer's deadline for one check unless set: Sluice's own default counter deadline.
pub const DEFAULT_DEADLINE: Duration = Duration::from_millis(50);

/// The body of a response through the layer: the inner service's, or the layer's own (a denial).
pub type RateLimitBody<B> = Either<B, Full<Bytes>>;

/// What the layer does when a check gives no verdict (timeout, Sluice down, an error).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FailureMode {
    /// Let the request through (the default, as Envoy's ratelimit filter does): a slow or absent
    /// Sluice never takes the service down with it.
    #[default]
    Open,
    /// Refuse it: HTTP 503, or gRPC UNAVAILABLE (Envoy's `failure_mode_deny`).
    Deny,
}

/// What the layer decided about one request, for a [`RateLimitObserver`].
#[derive(Clone, Copy, Debug)]
pub enum Decision<'a> {
    /// Sluice allowed it; the inner service was called.
    Allowed(&'a Limits),
    /// Sluice denied it; the layer answered 429 / RESOURCE_EXHAUSTED.
    Denied(&'a Limits),
    /// No verdict; let through ([`FailureMode::Open`]).
    FailedOpen(CheckFailure),
    /// No verdict; refused ([`FailureMode::Deny`]).
    FailedClosed(CheckFailure),
    /// The request had no descriptors, so Sluice was not asked.
    NotChecked,
}

impl Decision<'_> {
    /// A short stable name for a metric label: `allowed`, `denied`, `failed_open`,
    /// `failed_closed`, `not_checked`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Decision::Allowed(_) => "allowed",
            Decision::Denied(_) => "denied",
            Decision::FailedOpen(_) => "failed_open",
            Decision::FailedClosed(_) => "failed_closed",
            Decision::NotChecked => "not_checked",
        }
    }
}

/// A hook for the service's own metrics: called once per request with the decision and how long
/// the check took (zero when Sluice was not asked). Any `Fn(Decision, Duration)` is one.
pub trait RateLimitObserver: Send + Sync + 'static {
    /// Records one decision.
    fn observe(&self, decision: Decision<'_>, check_took: Duration);
}

impl<F> RateLimitObserver for F
where
    F: Fn(Decision<'_>, Duration) + Send + Sync + 'static,
{
    fn observe(&self, decision: Decision<'_>, check_took: Duration) {
        self(decision, check_took)
    }
}

/// A `tower::Layer` that enforces Sluice's decisions in front of an HTTP (axum, hyper) or tonic
/// gRPC service. Cheap to clone: every service it makes shares one channel to Sluice.
pub struct RateLimitLayer<D> {
    shared: Arc<Shared<D>>,
}

impl<D> Clone for RateLimitLayer<D> {
    fn clone(&self) -> Self {
        RateLimitLayer {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<D: DescriptorBuilder> RateLimitLayer<D> {
    /// A layer with the defaults: 50 ms deadline, fail-open, headers on every response. See
    /// [`RateLimitLayer::builder`].
    pub fn new(channel: Channel, domain: impl Into<String>, descriptors: D) -> Self {
        Self::builder(channel, domain, descriptors).build()
    }

    /// Starts a layer that asks Sluice over `channel` (one multiplexed HTTP/2 connection; see
    /// [`lazy_channel`](crate::lazy_channel)) in `domain`, with the descriptors `descriptors`
    /// builds from each request.
    pub fn builder(
        channel: Channel,
        domain: impl Into<String>,
        descriptors: D,
    ) -> RateLimitLayerBuilder<D> {
        RateLimitLayerBuilder {
            channel,
            domain: domain.into(),
            descriptors,
            cost: None,
            deadline: DEFAULT_DEADLINE,
            failure_mode: FailureMode::Open,
            response_headers: ResponseHeaders::Always,
            observer: None,
        }
    }
}

/// Settings of a [`RateLimitLayer`]; from [`RateLimitLayer::builder`].
pub struct RateLimitLayerBuilder<D> {
    channel: Channel,
    domain: String,
    descriptors: D,
    cost: Option<Cost>,
    deadline: Duration,
    failure_mode: FailureMode,
    response_headers: ResponseHeaders,
    observer: Option<Arc<dyn RateLimitObserver>>,
}

impl<D: DescriptorBuilder> RateLimitLayerBuilder<D> {
    /// The request's cost (`hits_addend`); one hit when unset or when `cost` finds none. A
    /// descriptor's own cost overrides it.
    pub fn cost(mut self, cost: Cost) -> Self {
        self.cost = Some(cost);
        self
    }

    /// How long one check may take, connection included (default 50 ms). Past it the request is
    /// let through or refused as the [`FailureMode`] says.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// What a check without a verdict gives (default [`FailureMode::Open`]).
    pub fn failure_mode(mut self, mode: FailureMode) -> Self {
        self.failure_mode = mode;
        self
    }

    /// Which responses carry the rate-limit headers (default [`ResponseHeaders::Always`]).
    pub fn response_headers(mut self, headers: ResponseHeaders) -> Self {
        self.response_headers = headers;
        self
    }

    /// A hook called with every decision (for the service's metrics).
    pub fn observer(mut self, observer: impl RateLimitObserver) -> Self {
        self.observer = Some(Arc::new(observer));
        self
    }

    /// The layer.
    pub fn build(self) -> RateLimitLayer<D> {
        RateLimitLayer {
            shared: Arc::new(Shared {
                checker: Checker::new(self.channel, self.domain, self.deadline),
                descriptors: self.descriptors,
                cost: self.cost,
                failure_mode: self.failure_mode,
                response_headers: self.response_headers,
                observer: self.observer,
                warnings: WarningGate::new(),
            }),
        }
    }
}

impl<S, D> Layer<S> for RateLimitLayer<D> {
    type Service = RateLimit<S, D>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The service [`RateLimitLayer`] wraps around yours.
pub struct RateLimit<S, D> {
    inner: S,
    shared: Arc<Shared<D>>,
}

impl<S: Clone, D> Clone for RateLimit<S, D> {
    fn clone(&self) -> Self {
        RateLimit {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, D, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S, D>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    D: DescriptorBuilder,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<RateLimitBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The instance that was polled ready serves this request; a clone takes its place.
        let fresh = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, fresh);
        Box::pin(Arc::clone(&self.shared).handle(ready, request))
    }
}

/// What every service of one layer shares.
struct Shared<D> {
    checker: Checker,
    descriptors: D,
    cost: Option<Cost>,
    failure_mode: FailureMode,
    response_headers: ResponseHeaders,
    observer: Option<Arc<dyn RateLimitObserver>>,
    warnings: WarningGate,
}

impl<D: DescriptorBuilder> Shared<D> {
    async fn handle<S, ReqBody, ResBody>(
        self: Arc<Self>,
        mut inner: S,
        request: Request<ReqBody>,
    ) -> Result<Response<RateLimitBody<ResBody>>, S::Error>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    {
        let (parts, body) = request.into_parts();
        let mut descriptors = Vec::new();
        self.descriptors.build(&parts, &mut descriptors);
        descriptors.retain(|descriptor| !descriptor.is_empty());
        let cost = self.cost.as_ref().and_then(|cost| cost.of(&parts));
        let grpc = is_grpc(&parts.headers);
        let request = Request::from_parts(parts, body);
        if descriptors.is_empty() {
            self.observe(Decision::NotChecked, Duration::ZERO);
            return pass_through(&mut inner, request).await;
        }

        let span = tracing::debug_span!(
            "sluice.ratelimit",
            otel.kind = "client",
            descriptors = descriptors.len(),
            decision = field::Empty,
            failure = field::Empty,
        );
        let started = Instant::now();
        let outcome = self
            .checker
            .check(descriptors, cost)
            .instrument(span.clone())
            .await;
        let took = started.elapsed();

        match outcome {
            Ok(Verdict::Allowed(limits)) => {
                span.record("decision", "allowed");
                self.observe(Decision::Allowed(&limits), took);
                let mut response = inner.call(request).await?;
                if self.response_headers == ResponseHeaders::Always {
                    insert_limit_headers(response.headers_mut(), &limits);
                }
                Ok(response.map(Either::Left))
            }
            Ok(Verdict::Denied(limits)) => {
                span.record("decision", "denied");
                self.observe(Decision::Denied(&limits), took);
                let with_headers = self.response_headers != ResponseHeaders::Never;
                Ok(denial(grpc, &limits, with_headers))
            }
            Err(Failed { failure, detail }) => {
                span.record("failure", failure.as_str());
                self.warn(failure, &detail);
                match self.failure_mode {
                    FailureMode::Open => {
                        span.record("decision", "failed_open");
                        self.observe(Decision::FailedOpen(failure), took);
                        pass_through(&mut inner, request).await
                    }
                    FailureMode::Deny => {
                        span.record("decision", "failed_closed");
                        self.observe(Decision::FailedClosed(failure), took);
                        Ok(unavailable(grpc))
                    }
                }
            }
        }
    }

    fn observe(&self, decision: Decision<'_>, took: Duration) {
        if let Some(observer) = &self.observer {
            observer.observe(decision, took);
        }
    }

    /// One warning per second at most: a Sluice that is down fails every request, and the
    /// service's log must not drown in the same line.
    fn warn(&self, failure: CheckFailure, detail: &str) {
        if self.warnings.open() {
            tracing::warn!(
                failure = failure.as_str(),
                detail,
                mode = ?self.failure_mode,
                "rate-limit check without a verdict"
            );
        } else {
            tracing::debug!(
                failure = failure.as_str(),
                detail,
                "rate-limit check without a verdict"
            );
        }
    }
}

async fn pass_through<S, ReqBody, ResBody>(
    inner: &mut S,
    request: Request<ReqBody>,
) -> Result<Response<RateLimitBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    Ok(inner.call(request).await?.map(Either::Left))
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"))
}

/// The answer to a denied request: HTTP 429 with `Retry-After`, or gRPC RESOURCE_EXHAUSTED with
/// `RetryInfo` and one `QuotaFailure` violation per limit it was over.
fn denial<B>(grpc: bool, limits: &Limits, with_headers: bool) -> Response<RateLimitBody<B>> {
    let retry_after = limits.retry_after().unwrap_or_default();
    let mut response = if grpc {
        let violations: Vec<QuotaViolation> = limits
            .all()
            .iter()
            .filter(|limit| limit.over_limit)
            .map(|limit| {
                let subject = if limit.name.is_empty() {
                    "descriptor limit".to_owned()
                } else {
                    format!("policy {}", limit.name)
                };
                let description = match limit.window_seconds {
                    Some(window) => format!("{} requests per {window} s", limit.max_requests),
                    None => format!("{} requests per window", limit.max_requests),
                };
                QuotaViolation::new(subject, description)
            })
            .collect();
        let mut details = ErrorDetails::with_retry_info(Some(retry_after));
        details.set_quota_failure(violations);
        tonic::Status::with_error_details(Code::ResourceExhausted, "rate limited", details)
            .into_http::<Full<Bytes>>()
    } else {
        let seconds = retry_after_value(retry_after);
        let body = format!(
            "Too Many Requests: retry after {} s\n",
            seconds.to_str().unwrap_or("1")
        );
        let mut response = Response::new(Full::from(body));
        *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response.headers_mut().insert(header::RETRY_AFTER, seconds);
        response
    };
    if with_headers {
        insert_limit_headers(response.headers_mut(), limits);
    }
    response.map(Either::Right)
}

/// The answer when the check failed and the layer fails closed.
fn unavailable<B>(grpc: bool) -> Response<RateLimitBody<B>> {
    const MESSAGE: &str = "rate limit service unavailable";
    let response = if grpc {
        tonic::Status::unavailable(MESSAGE).into_http::<Full<Bytes>>()
    } else {
        let mut response = Response::new(Full::from(format!("{MESSAGE}\n")));
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    };
    response.map(Either::Right)
}

/// Opens at most once per second.
struct WarningGate {
    epoch: Instant,
    /// Milliseconds since `epoch` when the gate last opened, plus one (0: never).
    last: AtomicU64,
}

impl WarningGate {
    const EVERY_MS: u64 = 1_000;

    fn new() -> Self {
        WarningGate {
            epoch: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    fn open(&self) -> bool {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX) + 1;
        let last = self.last.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < Self::EVERY_MS {
            return false;
        }
        self.last
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_warning_gate_opens_once_per_second() {
        let gate = WarningGate::new();
        assert!(gate.open());
        assert!(!gate.open());
        // A gate that last opened two seconds ago.
        let gate = WarningGate {
            epoch: Instant::now() - Duration::from_secs(2),
            last: AtomicU64::new(1),
        };
        assert!(gate.open());
    }

    #[test]
    fn grpc_is_told_by_content_type() {
        let mut headers = HeaderMap::new();
        assert!(!is_grpc(&headers));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        assert!(is_grpc(&headers));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        assert!(!is_grpc(&headers));
    }
}
