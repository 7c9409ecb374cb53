//! [`PolicyStore`] on PostgreSQL. All SQL is parameterised; scoped queries carry
//! `($n::text IS NULL OR tenant_id = $n)` bound to the caller's tenant (NULL only for a platform
//! admin).

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{
    PgPool, Postgres, Transaction,
    postgres::{PgConnectOptions, PgPoolOptions},
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

/// Migrations for PostgreSQL, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The longest any one statement may run (or wait for a lock) inside PostgreSQL. Shorter than the
/// admin path's per-call deadline, so a stalled statement normally fails in the database first.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(4);

/// First key of the advisory lock that serialises creates for one tenant (the second is a hash of
/// the tenant id). The two-key form lives apart from sqlx's one-key migration lock; the value
/// is "SLPC" in ASCII, so a DBA reading `pg_locks` can tell it is Sluice's.
const POLICY_CAP_LOCK_CLASS: i32 = 0x534C_5043;

/// The NOTIFY channel every policy change is announced on.
pub const POLICY_CHANNEL: &str = "sluice_policies";

/// The columns every query returns, in [`PolicyRow`]'s order.
macro_rules! columns {
    () => {
        "id, tenant_id, endpoint_pattern, max_requests, window_seconds, burst_limit, \
         enabled, shadow, version, created_at, updated_at"
    };
}

/// Policies in PostgreSQL.
#[derive(Clone)]
pub struct PgPolicyStore {
    pool: PgPool,
    /// Checked by every create.
    max_policies_per_tenant: MaxPoliciesPerTenant,
}

impl PgPolicyStore {
    /// A lazily connecting pool: start-up does not fail when the database is briefly away, and a
    /// request waits at most `acquire_timeout` for a connection before answering UNAVAILABLE.
    /// Every session gets [`STATEMENT_TIMEOUT`], so the database itself abandons a statement stuck
    /// behind a lock instead of running it after the caller has given up.
    pub fn connect_lazy(options: PgConnectOptions, acquire_timeout: Duration) -> Self {
        let timeout = format!("{}ms", STATEMENT_TIMEOUT.as_millis());
        let options = options.options([
            ("statement_timeout", timeout.as_str()),
            ("lock_timeout", timeout.as_str()),
        ]);
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(acquire_timeout)
            .connect_lazy_with(options);
        Self::from_pool(pool)
    }

    pub fn from_pool(pool: PgPool) -> Self {
        Self {
            pool,
            max_policies_per_tenant: MaxPoliciesPerTenant::default(),
        }
    }

    /// This store with another cap on policies per tenant (`SLUICE_MAX_POLICIES_PER_TENANT`).
    pub fn with_max_policies_per_tenant(self, cap: MaxPoliciesPerTenant) -> Self {
        Self {
            max_policies_per_tenant: cap,
            ..self
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies pending migrations (idempotent; sqlx serialises concurrent runs with an advisory
    /// lock, so several instances may start at once).
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        MIGRATOR.run(&self.pool).await
    }

    /// Refuses a create that would take `tenant` past the cap. The advisory lock, held until the
    /// transaction ends, makes concurrent creates for one tenant take turns, so two of them can
    /// never both count `cap - 1` and insert; creates for other tenants do not wait (a hash
    /// collision only makes two tenants take turns). `lock_timeout` bounds the wait.
    async fn check_policy_cap(
        tx: &mut Transaction<'_, Postgres>,
        tenant: &PolicyTenant,
        cap: MaxPoliciesPerTenant,
    ) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(POLICY_CAP_LOCK_CLASS)
            .bind(tenant.as_str())
            .execute(&mut **tx)
            .await
            .map_err(StoreError::Unavailable)?;
        let existing: i64 =
            sqlx::query_scalar("SELECT count(*) FROM rate_policies WHERE tenant_id = $1")
                .bind(tenant.as_str())
                .fetch_one(&mut **tx)
                .await
                .map_err(StoreError::Unavailable)?;
        check_policy_cap(tenant, existing, cap)
    }

    async fn lock_scoped(
        tx: &mut Transaction<'_, Postgres>,
        scope: &TenantScope,
        id: PolicyId,
    ) -> Result<Policy, StoreError> {
        let row: Option<PolicyRow> = sqlx::query_as(concat!(
            "SELECT ",
            columns!(),
            " \
             FROM rate_policies WHERE id = $1 AND ($2::text IS NULL OR tenant_id = $2) FOR UPDATE"
        ))
        .bind(id.as_uuid())
        .bind(scope.tenant_filter().map(|t| t.as_str()))
        .fetch_optional(&mut **tx)
        .await
        .map_err(StoreError::Unavailable)?;
        row.ok_or(StoreError::NotFound)?.into_policy()
    }
}

#[async_trait]
impl PolicyStore for PgPolicyStore {
    #[tracing::instrument(skip_all, fields(tenant = %new.tenant, pattern = %new.pattern))]
    async fn create(&self, new: NewPolicy) -> Result<Policy, StoreError> {
        // A transaction, not autocommit: if the caller gives up (the store deadline) while the
        // INSERT still waits inside the database, the dropped transaction rolls back instead of
        // the row landing after the client was told UNAVAILABLE.
        let mut tx = self.pool.begin().await.map_err(StoreError::Unavailable)?;
        Self::check_policy_cap(&mut tx, &new.tenant, self.max_policies_per_tenant).await?;
        let row: PolicyRow = sqlx::query_as(concat!(
            "INSERT INTO rate_policies \
             (id, tenant_id, endpoint_pattern, max_requests, window_seconds, burst_limit, enabled, shadow) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             RETURNING ", columns!()))
        .bind(PolicyId::generate().as_uuid())
        .bind(new.tenant.as_str())
        .bind(new.pattern.as_str())
        .bind(new.limits.max_requests() as i32)
        .bind(new.limits.window_seconds() as i32)
        .bind(new.limits.burst_limit() as i32)
        .bind(new.enabled)
        .bind(new.shadow)
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
            " \
             FROM rate_policies WHERE id = $1 AND ($2::text IS NULL OR tenant_id = $2)"
        ))
        .bind(id.as_uuid())
        .bind(scope.tenant_filter().map(|t| t.as_str()))
        .fetch_optional(&self.pool)
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
        let mut tx = self.pool.begin().await.map_err(StoreError::Unavailable)?;
        let current = Self::lock_scoped(&mut tx, scope, id).await?;
        check_etag(&current, expected_etag)?;
        let update = patch.apply(&current).map_err(StoreError::Invalid)?;
        // The tenant filter repeats the locked read's: every statement of a scoped caller
        // carries it (SPEC §4), so no later edit of this function can widen an update.
        let row: Option<PolicyRow> = sqlx::query_as(concat!(
            "UPDATE rate_policies SET endpoint_pattern = $2, max_requests = $3, \
             window_seconds = $4, burst_limit = $5, enabled = $6, shadow = $7, \
             version = version + 1, updated_at = GREATEST(clock_timestamp(), updated_at + interval '1 microsecond') \
             WHERE id = $1 AND ($8::text IS NULL OR tenant_id = $8) \
             RETURNING ", columns!()))
        .bind(id.as_uuid())
        .bind(update.pattern.as_str())
        .bind(update.limits.max_requests() as i32)
        .bind(update.limits.window_seconds() as i32)
        .bind(update.limits.burst_limit() as i32)
        .bind(update.enabled)
        .bind(update.shadow)
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
        let mut tx = self.pool.begin().await.map_err(StoreError::Unavailable)?;
        let current = Self::lock_scoped(&mut tx, scope, id).await?;
        check_etag(&current, expected_etag)?;
        sqlx::query(
            "DELETE FROM rate_policies WHERE id = $1 AND ($2::text IS NULL OR tenant_id = $2)",
        )
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
            " \
             FROM rate_policies \
             WHERE ($1::text IS NULL OR tenant_id = $1) \
               AND ($2::text IS NULL OR tenant_id = $2) \
               AND ($3::uuid IS NULL OR id > $3) \
             ORDER BY id LIMIT $4"
        ))
        .bind(scope.tenant_filter().map(|t| t.as_str()))
        .bind(tenant.map(|t| t.as_str()))
        .bind(after.map(|id| id.as_uuid()))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::Unavailable)?;
        rows.into_iter().map(PolicyRow::into_policy).collect()
    }

    #[tracing::instrument(skip_all)]
    async fn load_enabled(&self) -> Result<Vec<Policy>, StoreError> {
        let rows: Vec<PolicyRow> = sqlx::query_as(concat!(
            "SELECT ",
            columns!(),
            " \
             FROM rate_policies WHERE enabled ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::Unavailable)?;
        rows.into_iter().map(PolicyRow::into_policy).collect()
    }

    async fn shared_secret(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>, StoreError> {
        sqlx::query(
            "INSERT INTO sluice_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(candidate)
        .execute(&self.pool)
        .await
        .map_err(StoreError::Unavailable)?;
        sqlx::query_scalar("SELECT value FROM sluice_secrets WHERE name = $1")
            .bind(name)
            .fetch_one(&self.pool)
            .await
            .map_err(StoreError::Unavailable)
    }
}

/// A `rate_policies` row as the database returns it.
#[derive(sqlx::FromRow)]
struct PolicyRow {
    id: Uuid,
    tenant_id: String,
    endpoint_pattern: String,
    max_requests: i32,
    window_seconds: i32,
    burst_limit: i32,
    enabled: bool,
    shadow: bool,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl PolicyRow {
    fn into_policy(self) -> Result<Policy, StoreError> {
        StoredPolicy {
            id: self.id,
            tenant_id: self.tenant_id,
            endpoint_pattern: self.endpoint_pattern,
            max_requests: self.max_requests.into(),
            window_seconds: self.window_seconds.into(),
            burst_limit: self.burst_limit.into(),
            enabled: self.enabled,
            shadow: self.shadow,
            version: self.version,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
        .into_policy()
    }
}
