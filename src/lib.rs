//! # Sluice
//!
//! A gRPC rate-limit service for Envoy: `ShouldRateLimit` answers from an exact sliding window
//! kept in Redis, and platform engineers manage per-tenant policies over a JWT-scoped admin API.
//!
//! ## The hot path (`ShouldRateLimit` → snapshot → one counter call per tenant → response)
//! 1. [`ratelimit::service`] — `envoy.service.ratelimit.v3.RateLimitService` parses the request
//!    with [`ratelimit::request`]: only what Envoy's configuration controls can be INVALID_ARGUMENT;
//!    whatever a client sends (long or non-UTF-8 values, huge costs) gets a decision.
//! 2. [`ratelimit::snapshot`] — each descriptor's policy from the in-memory
//!    [`ratelimit::snapshot::PolicySnapshot`] (per-tenant [`domain::PatternSet`]s, then `*`
//!    defaults): no await, no lock, no database.
//! 3. [`ratelimit::over_limit_cache`] — certain denials answered from memory.
//! 4. [`ratelimit::counter`] — the [`ratelimit::counter::SlidingWindowCounter`]: one atomic Lua
//!    call per tenant in Redis (or the in-process twin), all under one deadline that the script
//!    itself enforces on Redis's clock, behind the [`ratelimit::breaker`] of the shard that holds
//!    the tenant (one per Redis Cluster primary); failures answer per `SLUICE_FAILURE_MODE`.
//! 5. Back in the service: one status per descriptor, `overall_code` never UNKNOWN.
//!
//! Nothing on this path imports the admin path or sqlx.
//!
//! ## The admin path (JWT → tenant scope → policy store)
//! 1. [`admin::auth`] — the interceptor verifies the bearer JWT and puts a
//!    [`domain::TenantScope`] into the request.
//! 2. [`admin::service`] — `sluice.admin.v1.PolicyService` parses each request into
//!    [`domain`] types and checks the scope; [`admin::error`] maps every failure to one status
//!    code with a stable `ErrorInfo` reason; [`admin::page_token`] signs list cursors.
//! 3. [`store`] — the [`store::PolicyStore`] trait with PostgreSQL and SQLite implementations
//!    (chosen by `DATABASE_URL`); every scoped query filters by tenant in SQL, and
//!    [`store::deadline::DeadlineStore`] bounds every call so a stalled database answers
//!    UNAVAILABLE.
//!
//! ## Where the paths meet
//! [`policy_refresh`] keeps the hot path's snapshot current with plain [`domain::Policy`]
//! values, one policy at a time where it can: the admin service hands over each change it made
//! (applied before the RPC answers), `LISTEN sluice_policies` names other instances' changes
//! (each read back alone), and a full load runs at start and every 30 s as a safety net.
//! [`startup`] wires it to [`ratelimit::snapshot::SharedSnapshot`], which recompiles only the
//! changed tenant's matcher. [`explain`] (`sluice.admin.v1.ExplainService/ExplainRateLimit`) is
//! the one module that uses both: the admin path's JWT scope, and [`ratelimit::explain`], which
//! explains what the hot path would decide for a descriptor without counting.
//!
//! ## Around both
//! [`settings`] (every flag and environment variable), [`startup`] (builds and runs the
//! [`startup::Application`]), [`telemetry`] (logs, Prometheus series, per-RPC metrics),
//! [`top_tenants`] (the bounded per-tenant decision series), [`otlp_metrics`] (the same series
//! over OTLP),
//! [`http`] (`/metrics`, `/healthz`, `/readyz`), [`status_page`] (`GET /`, the human status page
//! read from the Prometheus registry), [`proto`] (generated code), [`grpc_codec`] (the
//! codec of both gRPC services: a message that does not decode is INVALID_ARGUMENT).
//!
//! ## Beside the service
//! The workspace's other member, `crates/sluice-tower`, is the client side: a tower layer that
//! asks this service's `ShouldRateLimit` from inside axum, hyper and tonic services. It compiles
//! the same `proto/` files (client only) and depends on nothing here (docs/tower-layer.md).

/// mimalloc for every binary that links Sluice: malloc/free was about a fifth of the hot path's
/// CPU with the system allocator (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod admin;
pub mod domain;
pub mod explain;
pub mod grpc_codec;
pub mod http;
pub mod otlp_metrics;
pub mod policy_refresh;
pub mod proto;
pub mod ratelimit;
pub mod settings;
pub mod startup;
pub mod status_page;
pub mod store;
pub mod telemetry;
pub mod top_tenants;
