//! Shared fixtures for every integration-test binary: the PostgreSQL and Redis servers the suite talks
//! to, a fresh database or key prefix per test, a Redis server a test may freeze or kill, and the real
//! tools (grpcurl, Envoy, promtool, a Prometheus server) it drives.
//!
//! Each binary includes this with `mod support;`. Servers a binary starts itself are shared by all of
//! its tests and die with the test process. Environment:
//!
//! | variable | meaning |
//! |---|---|
//! | `SLUICE_TEST_DATABASE_URL` | admin URL of a PostgreSQL server to use instead of starting one |
//! | `SLUICE_TEST_REDIS_URL` | URL of a Redis server to use instead of starting one |
//! | `SLUICE_TEST_GRPCURL`, `SLUICE_TEST_ENVOY` | paths of the grpcurl and envoy binaries |
//! | `SLUICE_TEST_PROMTOOL` | path of promtool (else `PATH`) |
//! | `SLUICE_TEST_PROMETHEUS` | path of the Prometheus server (else `PATH`) |
//! | `SLUICE_TEST_CHROMIUM` | path of chromium (else `PATH`) |
//! | `SLUICE_TEST_CONTAINERS` | `0`: never start servers in containers |
//! | `SLUICE_TEST_REDIS_IMAGE`, `SLUICE_TEST_POSTGRES_IMAGE` | images of those containers (default: the official `redis:7`, `postgres:16`) |
//!
//! Where the shared servers come from, in this order: the `*_URL` variables; containers, when a
//! Docker engine answers (`containers`); the installed `redis-server` and PostgreSQL binaries.
//! With none of these a test fails, saying what to install: no test passes by skipping.
//!
//! Layout: `containers` (testcontainers: the engine check, images, a server that stops with this
//! process), `postgres` (admin URL, [`TestDatabase`]), `redis` (shared URL, prefixes, [`OwnedRedis`]),
//! `tools` (grpcurl, envoy, promtool, prometheus, chromium), `prometheus_server`
//! ([`PrometheusServer`], a real server scraping one target), `process` (ports, signals, servers
//! tied to the test process).
#![allow(dead_code, unused_imports)]

mod containers;
mod postgres;
mod process;
mod prometheus_server;
mod redis;
mod tools;

pub use containers::use_containers;
pub use postgres::{
    PrivatePostgres, TestDatabase, fresh_database, postgres_admin_url, start_private_postgres,
};
pub use process::{free_port, readyz_is_ok, sluice_command};
pub use prometheus_server::{PrometheusServer, Sample};
pub use redis::{OwnedRedis, OwnedRedisCluster, redis_ping, redis_url, unique_redis_prefix};
pub use tools::{chromium_path, envoy_path, grpcurl_path, prometheus_path, promtool_path};
