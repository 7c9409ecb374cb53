//! Rate limiting inside Rust services: a [`tower`](https://docs.rs/tower) layer that asks
//! [Sluice](https://github.com/) — the same service, policies and counters an Envoy fleet uses —
//! whether each request may pass, and answers HTTP 429 or gRPC RESOURCE_EXHAUSTED when it may not.
//!
//! ```no_run
//! use std::time::Duration;
//! use http::HeaderName;
//! use sluice_tower::{DescriptorTemplate, FailureMode, RateLimitLayer, lazy_channel};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let channel = lazy_channel("http://127.0.0.1:8081")?;
//! let layer = RateLimitLayer::builder(
//!     channel,
//!     "my-service",
//!     DescriptorTemplate::sluice(HeaderName::from_static("x-tenant-id")),
//! )
//! .deadline(Duration::from_millis(50))
//! .failure_mode(FailureMode::Open)
//! .build();
//! // axum: Router::new().route(…).layer(layer)
//! // tonic: Server::builder().layer(layer).add_service(…)
//! # Ok(()) }
//! ```
//!
//! # Layout
//! One request through the layer, hop by hop:
//! - [`descriptor`]: a [`DescriptorBuilder`] reads the request head into [`Descriptor`]s —
//!   [`DescriptorTemplate`] for Sluice's `tenant_id` / `path` / `method` convention (tenant from a
//!   header or from an auth layer's extension), tuples and `Vec`s for several descriptors, and a
//!   [`Cost`] (`hits_addend`) from the request.
//! - `check`: one `ShouldRateLimit` over a shared HTTP/2 channel, bounded by the layer's own
//!   deadline; a [`Verdict`] or a [`CheckFailure`].
//! - `verdict`: Sluice's answer read into [`Limits`] (the tightest limit, when to retry).
//! - `layer`: [`RateLimitLayer`] and its service [`RateLimit`] — call the inner service, answer
//!   the denial, or apply the [`FailureMode`]; a tracing span per check and a
//!   [`RateLimitObserver`] hook for metrics.
//! - `headers`: `x-ratelimit-*` as Envoy writes them, the IETF draft's `RateLimit-*`, and
//!   `Retry-After`.
//! - [`proto`]: the RLS v3 client, generated from the workspace's own `proto/`.
//!
//! The crate depends on tonic's client only: no database, no Redis client, no server.

mod check;
pub mod descriptor;
mod headers;
mod layer;
pub mod proto;
mod verdict;

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

pub use check::CheckFailure;
pub use descriptor::{Cost, Descriptor, DescriptorBuilder, DescriptorTemplate, EntrySource};
pub use headers::ResponseHeaders;
pub use layer::{
    DEFAULT_DEADLINE, Decision, FailureMode, RateLimit, RateLimitBody, RateLimitLayer,
    RateLimitLayerBuilder, RateLimitObserver,
};
pub use verdict::{Limit, Limits, Verdict};

/// A channel to Sluice at `uri` (`http://host:port`) that connects on first use and reconnects by
/// itself: one HTTP/2 connection that every request multiplexes over, with TCP_NODELAY,
/// a 1 s connect timeout and keep-alive pings so a dead peer is noticed between requests.
///
/// Must be called inside a tokio runtime. For several connections, build a balanced channel
/// (`Channel::balance_list`) and pass it to [`RateLimitLayer::builder`].
pub fn lazy_channel(uri: &str) -> Result<Channel, tonic::transport::Error> {
    Ok(Endpoint::from_shared(uri.to_owned())?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(1))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
        .connect_lazy())
}
