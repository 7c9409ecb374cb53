//! Keeps the hot path's policy snapshot current: loads every enabled policy from the store and
//! hands it to `apply` — at start, at once after every change (the admin service awaits
//! [`PolicyRefresher::load_once`] after its own changes; PostgreSQL's `LISTEN sluice_policies`
//! brings other instances' changes), after a reconnect, and every [`FULL_RELOAD_EVERY`] as a
//! safety net. When the store is unreachable the
//! last snapshot keeps serving and the task retries.
//!
//! This is the one place where the admin side (the store) meets the hot path (the snapshot), and
//! it only passes plain domain `Policy` values across.

use std::{sync::Arc, time::Duration};

use sqlx::{PgPool, postgres::PgListener};
use tokio::sync::{Mutex, watch};

use crate::{
    domain::Policy,
    store::{PolicyStore, postgres::POLICY_CHANNEL},
    telemetry::error_chain,
};

/// The safety-net full reload period.
pub const FULL_RELOAD_EVERY: Duration = Duration::from_secs(30);
/// Wait between retries while the store is unreachable.
const RETRY_EVERY: Duration = Duration::from_millis(500);

/// Receives each freshly loaded policy list.
pub type ApplyPolicies = Arc<dyn Fn(Vec<Policy>) + Send + Sync>;

/// The refresh task's inputs.
pub struct PolicyRefresher {
    store: Arc<dyn PolicyStore>,
    /// For PostgreSQL: the pool to LISTEN on.
    listen: Option<PgPool>,
    apply: ApplyPolicies,
    /// Serialises load-and-apply, so an older load can never overwrite a newer one.
    reload: Mutex<()>,
}

impl PolicyRefresher {
    pub fn new(store: Arc<dyn PolicyStore>, listen: Option<PgPool>, apply: ApplyPolicies) -> Self {
        Self {
            store,
            listen,
            apply,
            reload: Mutex::new(()),
        }
    }

    /// Loads once; `Ok` means the snapshot is current.
    pub async fn load_once(&self) -> Result<usize, crate::store::StoreError> {
        let _serial = self.reload.lock().await;
        let policies = self.store.load_enabled().await?;
        let count = policies.len();
        (self.apply)(policies);
        Ok(count)
    }

    /// Runs until `stop` turns true. Call [`PolicyRefresher::load_once`] first for readiness.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut listener: Option<PgListener> = None;
        let mut reload = tokio::time::interval(FULL_RELOAD_EVERY);
        reload.tick().await;
        let mut stale = false;
        loop {
            if let Some(pool) = &self.listen
                && listener.is_none()
            {
                match PgListener::connect_with(pool).await {
                    Ok(mut l) => match l.listen(POLICY_CHANNEL).await {
                        Ok(()) => {
                            listener = Some(l);
                            // Changes may have happened while we were not listening.
                            stale = true;
                        }
                        Err(err) => {
                            tracing::warn!(error = %error_chain(&err), "LISTEN failed; retrying")
                        }
                    },
                    Err(err) => {
                        tracing::warn!(error = %error_chain(&err), "cannot connect to LISTEN for policy changes; retrying")
                    }
                }
            }
            if stale {
                match self.load_once().await {
                    Ok(count) => {
                        stale = false;
                        tracing::debug!(policies = count, "policy snapshot reloaded");
                    }
                    Err(err) => {
                        tracing::warn!(error = %error_chain(&err), "reloading policies failed; the last snapshot keeps serving")
                    }
                }
            }
            let retry = stale || (self.listen.is_some() && listener.is_none());
            tokio::select! {
                _ = stop.changed() => return,
                _ = reload.tick() => stale = true,
                _ = tokio::time::sleep(RETRY_EVERY), if retry => {}
                notification = async {
                    match listener.as_mut() {
                        Some(l) => l.try_recv().await,
                        None => std::future::pending().await,
                    }
                } => match notification {
                    Ok(Some(_)) => stale = true,
                    // None: the connection dropped and notifications sent meanwhile are lost.
                    // Drop the listener so the next turn LISTENs again *before* the full reload:
                    // a change made between the reload and a later reconnect would otherwise
                    // wait for the 30 s safety net.
                    Ok(None) => {
                        listener = None;
                        stale = true;
                    }
                    Err(err) => {
                        tracing::warn!(error = %error_chain(&err), "policy change listener failed; reconnecting");
                        listener = None;
                        stale = true;
                    }
                },
            }
        }
    }
}
