//! [`DeadlineStore`]: a bound on how long any one store call may take, whichever database is
//! behind it. The pool's acquire timeout covers a database that refuses connections; this covers
//! one that accepts them and then stalls (a lock held elsewhere, a network that drops packets), so
//! an admin call answers UNAVAILABLE instead of hanging.
//!
//! A call cut off by the deadline is dropped. Every write runs in a transaction, which then rolls
//! back (PostgreSQL also abandons any statement after `postgres::STATEMENT_TIMEOUT` by itself), so
//! a write commits in full or not at all. One case stays ambiguous, as with any database client:
//! a deadline that falls while the COMMIT itself is in flight — the write may have landed although
//! the caller was told UNAVAILABLE, and a retry then sees ALREADY_EXISTS or a new etag.

use std::{future::Future, sync::Arc, time::Duration};

use async_trait::async_trait;

use super::{ListCursor, PolicyStore, StoreError};
use crate::domain::{NewPolicy, Policy, PolicyId, PolicyPatch, PolicyTenant, TenantScope};

/// Wraps a store so that every call fails with [`StoreError::TimedOut`] after `limit`.
pub struct DeadlineStore {
    inner: Arc<dyn PolicyStore>,
    limit: Duration,
}

impl DeadlineStore {
    pub fn new(inner: Arc<dyn PolicyStore>, limit: Duration) -> Self {
        Self { inner, limit }
    }

    async fn within<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.limit, call)
            .await
            .unwrap_or(Err(StoreError::TimedOut(self.limit)))
    }
}

#[async_trait]
impl PolicyStore for DeadlineStore {
    async fn create(&self, new: NewPolicy) -> Result<Policy, StoreError> {
        self.within(self.inner.create(new)).await
    }

    async fn get(&self, scope: &TenantScope, id: PolicyId) -> Result<Policy, StoreError> {
        self.within(self.inner.get(scope, id)).await
    }

    async fn update(
        &self,
        scope: &TenantScope,
        id: PolicyId,
        expected_etag: Option<&str>,
        patch: &PolicyPatch,
    ) -> Result<Policy, StoreError> {
        self.within(self.inner.update(scope, id, expected_etag, patch))
            .await
    }

    async fn delete(
        &self,
        scope: &TenantScope,
        id: PolicyId,
        expected_etag: Option<&str>,
    ) -> Result<(), StoreError> {
        self.within(self.inner.delete(scope, id, expected_etag))
            .await
    }

    async fn list(
        &self,
        scope: &TenantScope,
        tenant: Option<&PolicyTenant>,
        after: ListCursor,
        limit: u32,
    ) -> Result<Vec<Policy>, StoreError> {
        self.within(self.inner.list(scope, tenant, after, limit))
            .await
    }

    async fn load_enabled(&self) -> Result<Vec<Policy>, StoreError> {
        self.within(self.inner.load_enabled()).await
    }

    async fn shared_secret(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>, StoreError> {
        self.within(self.inner.shared_secret(name, candidate)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store whose every call never finishes: pure logic of the deadline, no database.
    struct Stalled;

    #[async_trait]
    impl PolicyStore for Stalled {
        async fn create(&self, _: NewPolicy) -> Result<Policy, StoreError> {
            std::future::pending().await
        }
        async fn get(&self, _: &TenantScope, _: PolicyId) -> Result<Policy, StoreError> {
            std::future::pending().await
        }
        async fn update(
            &self,
            _: &TenantScope,
            _: PolicyId,
            _: Option<&str>,
            _: &PolicyPatch,
        ) -> Result<Policy, StoreError> {
            std::future::pending().await
        }
        async fn delete(
            &self,
            _: &TenantScope,
            _: PolicyId,
            _: Option<&str>,
        ) -> Result<(), StoreError> {
            std::future::pending().await
        }
        async fn list(
            &self,
            _: &TenantScope,
            _: Option<&PolicyTenant>,
            _: ListCursor,
            _: u32,
        ) -> Result<Vec<Policy>, StoreError> {
            std::future::pending().await
        }
        async fn load_enabled(&self) -> Result<Vec<Policy>, StoreError> {
            std::future::pending().await
        }
        async fn shared_secret(&self, _: &str, _: &[u8]) -> Result<Vec<u8>, StoreError> {
            std::future::pending().await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_call_fails_as_timed_out_after_the_limit() {
        let store = DeadlineStore::new(Arc::new(Stalled), Duration::from_secs(5));
        let started = tokio::time::Instant::now();

        let result = store.load_enabled().await;

        assert!(
            matches!(result, Err(StoreError::TimedOut(limit)) if limit == Duration::from_secs(5)),
            "{result:?}"
        );
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }
}
