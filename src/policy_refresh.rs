//! Keeps the hot path's policy snapshot current, one policy at a time where it can:
//! - at start, a full load of every enabled policy;
//! - after each of this instance's own changes, the admin service hands the changed policy over
//!   ([`PolicyRefresher::apply_own_change`]) and it is applied before the RPC answers, with no
//!   store read; the policy is then read back from the store once, in the background, so a
//!   concurrent change elsewhere (say, a delete racing this update) cannot be left overwritten;
//! - on other instances' changes, PostgreSQL's `LISTEN sluice_policies` names the policy
//!   (`"<TG_OP> <id>"`) and that one policy is read and applied;
//! - a full load again after a reconnect of the listener, when more than
//!   [`SINGLE_READS_UP_TO`] changes are waiting, and every [`FULL_RELOAD_EVERY`] as a safety net.
//!
//! When the store is unreachable the last snapshot keeps serving and the task retries.
//!
//! Ordering: every read of the store is applied under one lock, in the order of the reads, so a
//! store read never overwrites a newer one. The admin service's own changes are applied without
//! that lock (an RPC must not wait for a full load); the snapshot skips any version older than
//! the one it holds and applies them again after a full load whose read may predate them
//! ([`crate::ratelimit::snapshot::SharedSnapshot`]), and the read-back above settles the rest.
//!
//! This is the one place where the admin side (the store) meets the hot path (the snapshot), and
//! it only passes plain domain `Policy` values across.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use prometheus::IntCounter;
use sqlx::{PgPool, postgres::PgListener};
use tokio::sync::{Mutex, Notify, watch};

use crate::{
    domain::{Policy, PolicyId, TenantScope},
    store::{PolicyStore, StoreError, postgres::POLICY_CHANNEL},
    telemetry::error_chain,
};

/// The safety-net full reload period.
pub const FULL_RELOAD_EVERY: Duration = Duration::from_secs(30);
/// Wait between retries while the store is unreachable.
const RETRY_EVERY: Duration = Duration::from_millis(500);
/// More changes than this waiting at once (a bulk import, say) are read with one full load
/// rather than one read each.
pub const SINGLE_READS_UP_TO: usize = 64;

/// One policy's change.
#[derive(Debug, Clone)]
pub enum PolicyChange {
    /// Created or updated, as stored now; a disabled policy leaves the snapshot.
    Upserted(Policy),
    /// Deleted.
    Removed(PolicyId),
}

impl PolicyChange {
    fn id(&self) -> PolicyId {
        match self {
            Self::Upserted(policy) => policy.id,
            Self::Removed(id) => *id,
        }
    }
}

/// What the refresher asks of the snapshot.
#[derive(Debug)]
pub enum SnapshotUpdate {
    /// A full load is about to read the store.
    LoadingAll,
    /// Every enabled policy, as read since the last `LoadingAll`.
    LoadedAll(Vec<Policy>),
    /// One policy changed.
    Changed(PolicyChange),
}

/// Applies each update to the snapshot.
pub type ApplyPolicies = Arc<dyn Fn(SnapshotUpdate) + Send + Sync>;

/// The refresh task's inputs.
pub struct PolicyRefresher {
    store: Arc<dyn PolicyStore>,
    /// For PostgreSQL: the pool to LISTEN on.
    listen: Option<PgPool>,
    apply: ApplyPolicies,
    /// Serialises read-and-apply, so an older read can never overwrite a newer one.
    reload: Mutex<()>,
    /// Policies to read back after this instance's own changes.
    read_back: std::sync::Mutex<BTreeSet<PolicyId>>,
    /// Wakes the task when `read_back` gets an id.
    read_back_added: Notify,
    /// `sluice_policy_reload_errors_total`, once given.
    errors: Option<IntCounter>,
}

impl PolicyRefresher {
    pub fn new(store: Arc<dyn PolicyStore>, listen: Option<PgPool>, apply: ApplyPolicies) -> Self {
        Self {
            store,
            listen,
            apply,
            reload: Mutex::new(()),
            read_back: Default::default(),
            read_back_added: Notify::new(),
            errors: None,
        }
    }

    /// Counts every failed load (full, or of one changed policy) in `errors`.
    pub fn count_errors_in(mut self, errors: IntCounter) -> Self {
        self.errors = Some(errors);
        self
    }

    fn count_error<T, E>(&self, result: Result<T, E>) -> Result<T, E> {
        if result.is_err()
            && let Some(errors) = &self.errors
        {
            errors.inc();
        }
        result
    }

    /// Loads every enabled policy once; `Ok` means the snapshot is current.
    pub async fn load_once(&self) -> Result<usize, StoreError> {
        let _serial = self.reload.lock().await;
        (self.apply)(SnapshotUpdate::LoadingAll);
        let policies = self.count_error(self.store.load_enabled().await)?;
        let count = policies.len();
        (self.apply)(SnapshotUpdate::LoadedAll(policies));
        release_freed_memory();
        Ok(count)
    }

    /// Applies a change this instance just made, at once, and schedules reading the policy back.
    pub fn apply_own_change(&self, change: PolicyChange) {
        let id = change.id();
        (self.apply)(SnapshotUpdate::Changed(change));
        self.read_back
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id);
        self.read_back_added.notify_one();
    }

    /// Reads one policy and applies what the store holds now: the policy, or its removal.
    async fn load_one(&self, id: PolicyId) -> Result<(), StoreError> {
        let _serial = self.reload.lock().await;
        let everything = TenantScope::platform_admin(None);
        let change = match self.store.get(&everything, id).await {
            Ok(policy) => PolicyChange::Upserted(policy),
            Err(StoreError::NotFound) => PolicyChange::Removed(id),
            Err(err) => return self.count_error(Err(err)),
        };
        (self.apply)(SnapshotUpdate::Changed(change));
        Ok(())
    }

    /// Runs until `stop` turns true. Call [`PolicyRefresher::load_once`] first for readiness.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut listener: Option<PgListener> = None;
        let mut reload = tokio::time::interval(FULL_RELOAD_EVERY);
        reload.tick().await;
        let mut stale = false;
        // Policies named by notifications, not yet read.
        let mut changed: BTreeSet<PolicyId> = BTreeSet::new();
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
            changed.append(&mut self.take_read_backs());
            if changed.len() > SINGLE_READS_UP_TO {
                stale = true;
            }
            if stale {
                match self.load_once().await {
                    Ok(count) => {
                        stale = false;
                        // The full read covers every change announced before it.
                        changed.clear();
                        tracing::debug!(policies = count, "policy snapshot reloaded");
                    }
                    Err(err) => {
                        tracing::warn!(error = %error_chain(&err), "reloading policies failed; the last snapshot keeps serving")
                    }
                }
            }
            while !stale && let Some(id) = changed.pop_first() {
                if let Err(err) = self.load_one(id).await {
                    tracing::warn!(error = %error_chain(&err), policy = %id, "reading a changed policy failed; the last snapshot keeps serving");
                    stale = true;
                }
            }
            let retry = stale || (self.listen.is_some() && listener.is_none());
            tokio::select! {
                _ = stop.changed() => return,
                _ = reload.tick() => stale = true,
                _ = tokio::time::sleep(RETRY_EVERY), if retry => {}
                _ = self.read_back_added.notified() => {}
                notification = async {
                    match listener.as_mut() {
                        Some(l) => l.try_recv().await,
                        None => std::future::pending().await,
                    }
                } => match notification {
                    Ok(Some(first)) => {
                        // Take every notification already received, so a burst is one batch.
                        let l = listener.as_mut().expect("a notification came from it");
                        for notification in std::iter::once(first).chain(std::iter::from_fn(|| l.next_buffered())) {
                            match changed_policy(notification.payload()) {
                                Some(id) => {
                                    changed.insert(id);
                                }
                                None => stale = true,
                            }
                        }
                    }
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

    fn take_read_backs(&self) -> BTreeSet<PolicyId> {
        std::mem::take(
            &mut *self
                .read_back
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

/// Hands the memory a full load freed (the rows it read, and a replaced snapshot) back to the
/// operating system now. mimalloc returns freed pages only lazily, from later allocator calls,
/// which an idle instance does not make: with 100,000 policies that kept about 35 MB resident
/// for good (docs/benchmarks.md, "Policy memory").
fn release_freed_memory() {
    // SAFETY: `mi_collect` has no preconditions; it only frees what is already free.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// The policy a notification names: the trigger sends `"<TG_OP> <policy id>"`. `None` for
/// anything else, which the caller answers with a full load.
fn changed_policy(payload: &str) -> Option<PolicyId> {
    let (_operation, id) = payload.split_once(' ')?;
    PolicyId::parse(id).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_name_the_changed_policy() {
        let id = PolicyId::generate();
        for operation in ["INSERT", "UPDATE", "DELETE"] {
            assert_eq!(changed_policy(&format!("{operation} {id}")), Some(id));
        }
        for payload in ["", "UPDATE", "UPDATE not-a-uuid", &id.to_string()] {
            assert_eq!(changed_policy(payload), None, "{payload:?}");
        }
    }
}
