//! [`PolicyStore`] on SQLite: the embedded default, one file in the working directory. Same
//! semantics as [`super::postgres::PgPolicyStore`]; the contract tests in
//! `tests/store_contract.rs` run the same bodies against both.
//!
//! Writes go through a pool of exactly one connection and every read-modify-write runs in
//! `BEGIN IMMEDIATE`, so this process's writers queue in order instead of spinning on SQLite's
//! busy handler, and a second process on the same file waits up to [`BUSY_TIMEOUT`] for the write
//! lock. Reads use their own pool and, in WAL mode, never wait for a writer.
//!
//! There is no LISTEN/NOTIFY: the admin service wakes the refresh task itself after each change.
//! All SQL is parameterised; scoped queries carry `(?n IS NULL OR tenant_id = ?n)` bound to the
//! caller's tenant (NULL only for a platform admin).

use std::{path::Path, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{
    Sqlite, SqlitePool, Transaction,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions},
};
use uuid::Uuid;

use super::{
    ListCursor, PolicyStore, StoreError, StoredPolicy, check_etag, check_policy_cap,
    map_write_error,
};
use crate::domain::{
    NewPolicy, Policy, PolicyId, PolicyPatch, PolicyTenant, TenantScope,
    policy::MaxPoliciesPerTenant,
};

/// Migrations for SQLite, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// How long a statement waits for another process's write lock before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections for concurrent reads; WAL lets them run beside the writer.
const READ_CONNECTIONS: u32 = 4;

/// The columns every query returns, in [`PolicyRow`]'s order.
macro_rules! columns {
    () => {
        "id, tenant_id, endpoint_pattern, max_requests, window_seconds, burst_limit, \
         enabled, shadow, version, created_at, updated_at"
    };
}

/// Policies in an SQLite file.
#[derive(Clone)]
pub struct SqlitePolicyStore {
    /// One connection: every write queues here.
    writer: SqlitePool,
    readers: SqlitePool,
    /// Checked by every create.
    max_policies_per_tenant: MaxPoliciesPerTenant,
}

impl SqlitePolicyStore {
    /// Opens (creating it if missing) the database file at `path` in WAL mode with foreign keys
    /// on. A request waits at most `acquire_timeout` for a connection before answering
    /// UNAVAILABLE.
    pub async fn open(path: &Path, acquire_timeout: Duration) -> Result<Self, sqlx::Error> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        // The writer connects first: it creates the file and switches it to WAL before any
        // reader opens it.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(acquire_timeout)
            .connect_with(options.clone())
            .await?;
        let readers = SqlitePoolOptions::new()
            .max_connections(READ_CONNECTIONS)
            .acquire_timeout(acquire_timeout)
            .connect_with(options)
            .await?;
        Ok(Self {
            writer,
            readers,
            max_policies_per_tenant: MaxPoliciesPerTenant::default(),
        })
    }

    /// This store with another cap on policies per tenant (`SLUICE_MAX_POLICIES_PER_TENANT`).
    pub fn with_max_policies_per_tenant(self, cap: MaxPoliciesPerTenant) -> Self {
        Self {
            max_policies_per_tenant: cap,
            ..self
        }
    }

    /// Applies pending migrations (idempotent).
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        MIGRATOR.run(&self.writer).await
    }

    /// Closes both pools, waiting for their connections to finish (and WAL to be checkpointed).
    pub async fn close(&self) {
        self.readers.close().await;
        self.writer.close().await;
    }

    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        // sqlx's plain begin() is DEFERRED: two transactions could both read and then fail
        // to upgrade to a write lock. IMMEDIATE takes the write lock up front.
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(StoreError::Unavailable)
    }

    async fn read_scoped(
        tx: &mut Transaction<'_, Sqlite>,
        scope: &TenantScope,
        id: PolicyId,
    ) -> Result<Policy, StoreError> {
        let row: Option<PolicyRow> = sqlx::query_as(concat!(
            "SELECT ",
            columns!(),
            " FROM rate_policies WHERE id = ?1 AND (?2 IS NULL OR tenant_id = ?2)"
        ))
        .bind(id.as_uuid())
        .bind(scope.tenant_filter().map(|t| t.as_str()))
        .fetch_optional(&mut **tx)
        .await
        .map_err(StoreError::Unavailable)?;
        row.ok_or(StoreError::NotFound)?.into_policy()
    }
}

/// Now, in the stored form: microseconds since the Unix epoch.
fn now_micros() -> i64 {
    Utc::now().timestamp_micros()
}

#[async_trait]
impl PolicyStore for SqlitePolicyStore {
    #[tracing::instrument(skip_all, fields(tenant = %new.tenant, pattern = %new.pattern))]
    async fn create(&self, new: NewPolicy) -> Result<Policy, StoreError> {
        let now = now_micros();
        // A transaction, not autocommit: if the caller gives up (the store deadline) while the
        // INSERT still waits for the write lock, the dropped transaction rolls back.
        let mut tx = self.begin_write().await?;
        // Counted inside the IMMEDIATE transaction on the one writer connection: no other
        // create can insert between this count and our insert.
        let existing: i64 =
            sqlx::query_scalar("SELECT count(*) FROM rate_policies WHERE tenant_id = ?1")
                .bind(new.tenant.as_str())
                .fetch_one(&mut *tx)
                .await
                .map_err(StoreError::Unavailable)?;
        check_policy_cap(&new.tenant, existing, self.max_policies_per_tenant)?;
        let row: PolicyRow = sqlx::query_as(concat!(
            "INSERT INTO rate_policies \
             (id, tenant_id, endpoint_pattern, max_requests, window_seconds, burst_limit, \
              enabled, shadow, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9) \
             RETURNING ",
            columns!()
        ))
        .bind(PolicyId::generate().as_uuid())
        .bind(new.tenant.as_str())
        .bind(new.pattern.as_str())
        .bind(i64::from(new.limits.max_requests()))
        .bind(i64::from(new.limits.window_seconds()))
        .bind(i64::from(new.limits.burst_limit()))
        .bind(new.enabled)
        .bind(new.shadow)
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(|err| map_write_error(err, &new.tenant, &new.pattern))?;
        tx.commit().await.map_err(StoreError::Unavailable)?;
        row.into_policy()
    }

    #[tracing::instrument(skip_all, fields(policy = %id))]
    async fn get(&self, scope: &TenantScope, id: PolicyId) -> Result<Policy, StoreError> {
        let row: Option<PolicyRow> = sqlx::query_as(concat!(
            "SELECT ",
            columns!(),
            " FROM rate_policies WHERE id = ?1 AND (?2 IS NULL OR tenant_id = ?2)"
        ))
        .bind(id.as_uuid())
        .bind(scope.tenant_filter().map(|t| t.as_str()))
        .fetch_optional(&self.readers)
        .await
        .map_err(StoreError::Unavailable)?;
        row.ok_or(StoreError::NotFound)?.into_policy()
    }

    #[tracing::instrument(skip_all, fields(policy = %id))]
    async fn update(
        &self,
        scope: &TenantScope,
        id: PolicyId,
        expected_etag: Option<&str>,
        patch: &PolicyPatch,
    ) -> Result<Policy, StoreError> {
        let mut tx = self.begin_write().await?;
        let current = Self::read_scoped(&mut tx, scope, id).await?;
        check_etag(&current, expected_etag)?;
        let update = patch.apply(&current).map_err(StoreError::Invalid)?;
        // MAX(now, updated_at + 1): the etag changes even when two updates land in the same
        // microsecond or the clock steps back.
        let row: Option<PolicyRow> = sqlx::query_as(concat!(
            "UPDATE rate_policies SET endpoint_pattern = ?2, max_requests = ?3, \
             window_seconds = ?4, burst_limit = ?5, enabled = ?6, shadow = ?7, \
             version = version + 1, updated_at = MAX(?8, updated_at + 1) \
             WHERE id = ?1 AND (?9 IS NULL OR tenant_id = ?9) \
             RETURNING ",
            columns!()
        ))
        .bind(id.as_uuid())
        .bind(update.pattern.as_str())
        .bind(i64::from(update.limits.max_requests()))
        .bind(i64::from(update.limits.window_seconds()))
        .bind(i64::from(update.limits.burst_limit()))
        .bind(update.enabled)
        .bind(update.shadow)
        .bind(now_micros())
        .bind(scope.tenant_filter().map(|t| t.as_str()))
        .fetch_optional(&mut *tx)
        .await
        .map_err(|err| map_write_error(err, &current.tenant, &update.pattern))?;
        let row = row.ok_or(StoreError::NotFound)?;
        tx.commit().await.map_err(StoreError::Unavailable)?;
        row.into_policy()
    }

    #[tracing::instrument(skip_all, fields(policy = %id))]
    async fn delete(
        &self,
        scope: &TenantScope,
        id: PolicyId,
        expected_etag: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let current = Self::read_scoped(&mut tx, scope, id).await?;
        check_etag(&current, expected_etag)?;
        sqlx::query("DELETE FROM rate_policies WHERE id = ?1 AND (?2 IS NULL OR tenant_id = ?2)")
            .bind(id.as_uuid())
            .bind(scope.tenant_filter().map(|t| t.as_str()))
            .execute(&mut *tx)
            .await
            .map_err(StoreError::Unavailable)?;
        tx.commit().await.map_err(StoreError::Unavailable)
    }

    #[tracing::instrument(skip_all, fields(limit))]
    async fn list(
        &self,
        scope: &TenantScope,
        tenant: Option<&PolicyTenant>,
        after: ListCursor,
        limit: u32,
    ) -> Result<Vec<Policy>, StoreError> {
        let rows: Vec<PolicyRow> = sqlx::query_as(concat!(
            "SELECT ",
            columns!(),
            " FROM rate_policies \
             WHERE (?1 IS NULL OR tenant_id = ?1) \
               AND (?2 IS NULL OR tenant_id = ?2) \
               AND (?3 IS NULL OR id > ?3) \
             ORDER BY id LIMIT ?4"
        ))
        .bind(scope.tenant_filter().map(|t| t.as_str()))
        .bind(tenant.map(|t| t.as_str()))
        .bind(after.map(|id| id.as_uuid()))
        .bind(i64::from(limit))
        .fetch_all(&self.readers)
        .await
        .map_err(StoreError::Unavailable)?;
        rows.into_iter().map(PolicyRow::into_policy).collect()
    }

    #[tracing::instrument(skip_all)]
    async fn load_enabled(&self) -> Result<Vec<Policy>, StoreError> {
        let rows: Vec<PolicyRow> = sqlx::query_as(concat!(
            "SELECT ",
            columns!(),
            " FROM rate_policies WHERE enabled ORDER BY id"
        ))
        .fetch_all(&self.readers)
        .await
        .map_err(StoreError::Unavailable)?;
        rows.into_iter().map(PolicyRow::into_policy).collect()
    }

    async fn shared_secret(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>, StoreError> {
        sqlx::query("INSERT OR IGNORE INTO sluice_secrets (name, value) VALUES (?1, ?2)")
            .bind(name)
            .bind(candidate)
            .execute(&self.writer)
            .await
            .map_err(StoreError::Unavailable)?;
        sqlx::query_scalar("SELECT value FROM sluice_secrets WHERE name = ?1")
            .bind(name)
            .fetch_one(&self.writer)
            .await
            .map_err(StoreError::Unavailable)
    }
}

/// A `rate_policies` row as SQLite returns it.
#[derive(sqlx::FromRow)]
struct PolicyRow {
    id: Uuid,
    tenant_id: String,
    endpoint_pattern: String,
    max_requests: i64,
    window_seconds: i64,
    burst_limit: i64,
    enabled: bool,
    shadow: bool,
    version: i64,
    /// Microseconds since the Unix epoch, UTC.
    created_at: i64,
    updated_at: i64,
}

impl PolicyRow {
    fn into_policy(self) -> Result<Policy, StoreError> {
        let timestamp = |name: &str, micros: i64| {
            DateTime::from_timestamp_micros(micros).ok_or_else(|| StoreError::Corrupt {
                id: self.id.to_string(),
                reason: format!("{name} {micros} is out of range"),
            })
        };
        StoredPolicy {
            created_at: timestamp("created_at", self.created_at)?,
            updated_at: timestamp("updated_at", self.updated_at)?,
            id: self.id,
            tenant_id: self.tenant_id,
            endpoint_pattern: self.endpoint_pattern,
            max_requests: self.max_requests,
            window_seconds: self.window_seconds,
            burst_limit: self.burst_limit,
            enabled: self.enabled,
            shadow: self.shadow,
            version: self.version,
        }
        .into_policy()
    }
}
