//! Integration tests of the admin API (`sluice.admin.v1.PolicyService`) through the real server:
//! each test spawns Sluice on port 0 against its own fresh, migrated PostgreSQL database.
//!
//! Layout: [`helpers`] (`spawn_app`, `TestApp`, token minting, error-detail assertions, plain
//! HTTP), [`policies`] (every RPC, tenant scoping, validation, conflicts, etags), [`pagination`]
//! (`ListPolicies` pages and cursors), [`auth`] (JWT failures and public-key configuration),
//! [`lifecycle`] (health, readiness, graceful shutdown, database outage), [`grpcurl`] (the real
//! grpcurl binary through reflection, and the `sluice token` command), [`metrics`] (bounded
//! per-RPC labels on `/metrics`), [`rate_limit`]
//! (`ShouldRateLimit` against real Redis: every rule of SPEC §3, two instances, propagation,
//! failure modes), [`explain`] (`ExplainRateLimit`: the deciding policy, the counter, scoping),
//! [`status_page`] (`GET /` on Redis-backed traffic, over plain HTTP and in
//! headless Chromium), [`failover`] (a Redis Cluster primary killed or frozen under load: only its
//! own tenants fail open, until its replica takes over).

#[path = "../support/mod.rs"]
mod support;

mod auth;
mod explain;
mod failover;
mod grpcurl;
mod helpers;
mod lifecycle;
mod metrics;
mod pagination;
mod policies;
mod rate_limit;
mod status_page;
