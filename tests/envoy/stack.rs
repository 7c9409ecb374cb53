//! One test's whole path: Sluice (its own PostgreSQL database, its own Redis key prefix), a
//! backend, and Envoy running a shipped configuration between the client and both.

use sluice::proto::sluice::admin::v1 as pb;

use crate::{
    backend::Backend,
    helpers::{TestApp, new_policy, secret, spawn_app_with},
    proxy::{EnvoyProxy, ShippedConfig},
    support,
    tokens::TokenIssuer,
};

/// Sluice's counter deadline in tests that are not about it: debug builds of several apps on
/// two cores sometimes miss the production 50 ms, which would fail open and drop the headers the
/// tests look for. Envoy's 100 ms timeout still bounds every call.
const RELAXED_DEADLINE_MS: u64 = 2_000;

/// Sluice, a backend and Envoy for one test.
pub struct Stack {
    /// Declared first so it stops first.
    pub envoy: EnvoyProxy,
    pub backend: Backend,
    /// Signs the tokens Envoy trusts.
    pub issuer: TokenIssuer,
    /// `None` once a test stopped it.
    pub sluice: Option<TestApp>,
}

impl Stack {
    /// `config` in front of a fresh Sluice counting in the shared test Redis.
    pub async fn start(config: ShippedConfig) -> Stack {
        let url = support::redis_url().await;
        let sluice = spawn_app_with(move |s| {
            s.redis_url = Some(secret(&url));
            s.redis_key_prefix = support::unique_redis_prefix();
            s.redis_timeout_ms = RELAXED_DEADLINE_MS;
        })
        .await;
        Stack::start_with(config, sluice).await
    }

    /// `config` in front of the given Sluice.
    pub async fn start_with(config: ShippedConfig, sluice: TestApp) -> Stack {
        let backend = match config {
            ShippedConfig::Grpc => Backend::grpc_health().await,
            ShippedConfig::Http | ShippedConfig::Strict => Backend::http().await,
        };
        let issuer = TokenIssuer::generate();
        let envoy = EnvoyProxy::start(config, backend.addr, sluice.grpc_addr, &issuer).await;
        Stack {
            envoy,
            backend,
            issuer,
            sluice: Some(sluice),
        }
    }

    /// The running Sluice.
    pub fn sluice(&self) -> &TestApp {
        self.sluice
            .as_ref()
            .unwrap_or_else(|| panic!("Sluice was stopped by this test"))
    }

    /// Creates a policy (as platform admin): `max_requests` per 60 s for `tenant` on `pattern`.
    pub async fn policy(&self, tenant: &str, pattern: &str, max_requests: u32) -> pb::Policy {
        let sluice = self.sluice();
        sluice
            .create_ok(
                &sluice.admin_token(),
                new_policy(tenant, pattern, max_requests),
            )
            .await
    }

    /// Stops Sluice and waits until it has exited.
    pub async fn stop_sluice(&mut self) {
        let sluice = self
            .sluice
            .take()
            .unwrap_or_else(|| panic!("Sluice was already stopped"));
        sluice
            .shutdown()
            .await
            .unwrap_or_else(|err| panic!("Sluice did not stop cleanly: {err}"));
    }
}
