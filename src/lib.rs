//! # Sluice
//!
//! A gRPC rate-limit service for Envoy: `ShouldRateLimit` answers from an exact sliding window
//! kept in Redis, and platform engineers manage per-tenant policies over a JWT-scoped admin API.
//!
//! ## The admin path (JWT → tenant scope → policy store)
//! 1. [`admin::auth`] — the interceptor verifies the bearer JWT and puts a
//!    [`domain::TenantScope`] into the request.
//! 2. [`admin::service`] — `sluice.admin.v1.PolicyService` parses each request into
//!    [`domain`] types and checks the scope; [`admin::error`] maps every failure to one status
//!    code with a stable `ErrorInfo` reason; [`admin::page_token`] signs list cursors.
//! 3. [`store`] — the [`store::PolicyStore`] trait and its PostgreSQL implementation; every
//!    scoped query filters by tenant in SQL.
//!
//! ## Where the paths meet
//! [`policy_refresh`] loads enabled policies from the store (at start, on every change via
//! `LISTEN sluice_policies`, and every 30 s) and hands them to the hot path's snapshot.
//!
//! ## Around both
//! [`settings`] (every flag and environment variable), [`startup`] (builds and runs the
//! [`startup::Application`]), [`telemetry`] (logs, Prometheus series, per-RPC metrics),
//! [`http`] (`/metrics`, `/healthz`, `/readyz`), [`proto`] (generated code).

pub mod admin;
pub mod domain;
pub mod http;
pub mod policy_refresh;
pub mod proto;
pub mod ratelimit;
pub mod settings;
pub mod startup;
pub mod store;
pub mod telemetry;
