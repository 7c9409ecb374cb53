//! The policy store: where policies live. One trait, [`PolicyStore`], with a PostgreSQL
//! implementation ([`postgres::PgPolicyStore`]) and an SQLite one
//! ([`sqlite::SqlitePolicyStore`], the embedded default), chosen by the `DATABASE_URL` scheme.
//!
//! Every method that serves an admin caller takes its [`TenantScope`] and filters by the scope's
//! tenant in the SQL itself, so a tenant-scoped caller can never read or change another tenant's
//! row, whatever the layer above does.
//!
//! `create` also enforces [`MaxPoliciesPerTenant`]: the count and the insert happen in one
//! transaction that concurrent creates for the same tenant cannot both pass (PostgreSQL: a
//! transaction-scoped advisory lock per tenant; SQLite: the single `BEGIN IMMEDIATE` writer).

pub mod deadline;
pub mod postgres;
pub mod sqlite;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::domain::{
    EndpointPattern, FieldViolation, Limits, NewPolicy, Policy, PolicyId, PolicyPatch,
    PolicyTenant, TenantScope, policy::MaxPoliciesPerTenant,
};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No policy with that id in the caller's scope.
    #[error("policy not found")]
    NotFound,
    /// The tenant already has a policy with that endpoint pattern.
    #[error("tenant {tenant} already has a policy for endpoint pattern {pattern:?}")]
    Conflict { tenant: String, pattern: String },
    /// The tenant already holds the most policies `SLUICE_MAX_POLICIES_PER_TENANT` allows.
    #[error("tenant {tenant} already has {limit} policies, the most allowed")]
    PolicyLimit { tenant: String, limit: u32 },
    /// The caller's etag is not the policy's current one.
    #[error("etag {given:?} does not match the policy's current etag {current:?}")]
    EtagMismatch { given: String, current: String },
    /// The merged update is not a valid policy.
    #[error("invalid policy")]
    Invalid(Vec<FieldViolation>),
    /// The database could not be reached or failed.
    #[error("policy store unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// The database accepted the call but did not finish it in time.
    #[error("policy store did not answer within {0:?}")]
    TimedOut(std::time::Duration),
    /// A stored row does not parse as a policy (edited by hand?).
    #[error("stored policy {id} is invalid: {reason}")]
    Corrupt { id: String, reason: String },
}

/// Where to continue a listing: after this id (ids sort in creation order).
pub type ListCursor = Option<PolicyId>;

/// Reads and writes policies.
#[async_trait]
pub trait PolicyStore: Send + Sync + 'static {
    /// Inserts a new policy unless `new.tenant` already holds the store's
    /// [`MaxPoliciesPerTenant`] policies ([`StoreError::PolicyLimit`]). The caller has already
    /// checked that its scope allows `new.tenant`.
    async fn create(&self, new: NewPolicy) -> Result<Policy, StoreError>;

    /// Reads one policy within the caller's scope.
    async fn get(&self, scope: &TenantScope, id: PolicyId) -> Result<Policy, StoreError>;

    /// Applies `patch` to the policy in one transaction: reads it within the scope, checks
    /// `expected_etag` when given, validates the merged fields and writes them, bumping the
    /// version.
    async fn update(
        &self,
        scope: &TenantScope,
        id: PolicyId,
        expected_etag: Option<&str>,
        patch: &PolicyPatch,
    ) -> Result<Policy, StoreError>;

    /// Deletes one policy within the scope, checking `expected_etag` when given.
    async fn delete(
        &self,
        scope: &TenantScope,
        id: PolicyId,
        expected_etag: Option<&str>,
    ) -> Result<(), StoreError>;

    /// Up to `limit` policies after `after`, in id order, within the scope and, when given, of
    /// `tenant` only.
    async fn list(
        &self,
        scope: &TenantScope,
        tenant: Option<&PolicyTenant>,
        after: ListCursor,
        limit: u32,
    ) -> Result<Vec<Policy>, StoreError>;

    /// Every enabled policy, for the hot path's in-memory snapshot.
    async fn load_enabled(&self) -> Result<Vec<Policy>, StoreError>;

    /// The secret stored under `name`, shared by every instance on this database: the first
    /// caller's `candidate` (at least 32 random bytes) is kept, and every later caller gets that.
    async fn shared_secret(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>, StoreError>;
}

/// `PolicyLimit` unless a tenant holding `existing` policies may create another under `cap`.
/// Called inside the create transaction, after the store has serialised creates for the tenant.
fn check_policy_cap(
    tenant: &PolicyTenant,
    existing: i64,
    cap: MaxPoliciesPerTenant,
) -> Result<(), StoreError> {
    if cap.admits_another(u64::try_from(existing).unwrap_or(0)) {
        Ok(())
    } else {
        Err(StoreError::PolicyLimit {
            tenant: tenant.to_string(),
            limit: cap.get(),
        })
    }
}

/// `EtagMismatch` unless `expected` is absent or the policy's current etag.
fn check_etag(policy: &Policy, expected: Option<&str>) -> Result<(), StoreError> {
    match expected {
        Some(given) if given != policy.etag() => Err(StoreError::EtagMismatch {
            given: given.to_owned(),
            current: policy.etag(),
        }),
        _ => Ok(()),
    }
}

/// A failed insert or update: a unique violation is the (tenant, pattern) conflict; anything else
/// means the database failed.
fn map_write_error(
    err: sqlx::Error,
    tenant: &PolicyTenant,
    pattern: &EndpointPattern,
) -> StoreError {
    match &err {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict {
            tenant: tenant.to_string(),
            pattern: pattern.to_string(),
        },
        _ => StoreError::Unavailable(err),
    }
}

/// A stored row in the types both databases can produce, parsed into a [`Policy`] in one place.
struct StoredPolicy {
    id: Uuid,
    tenant_id: String,
    endpoint_pattern: String,
    max_requests: i64,
    window_seconds: i64,
    burst_limit: i64,
    enabled: bool,
    shadow: bool,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl StoredPolicy {
    /// The policy, or `Corrupt` naming what a hand-edited row got wrong.
    fn into_policy(self) -> Result<Policy, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            id: self.id.to_string(),
            reason,
        };
        let tenant =
            PolicyTenant::parse(&self.tenant_id).map_err(|e| corrupt(format!("tenant_id {e}")))?;
        let pattern = EndpointPattern::parse(&self.endpoint_pattern)
            .map_err(|e| corrupt(format!("endpoint_pattern {e}")))?;
        let as_u32 = |v: i64| u32::try_from(v).unwrap_or(0);
        let limits = Limits::new(
            as_u32(self.max_requests),
            as_u32(self.window_seconds),
            as_u32(self.burst_limit),
        )
        .map_err(|violations| {
            corrupt(
                violations
                    .iter()
                    .map(|v| format!("{} {}", v.field, v.description))
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?;
        Ok(Policy {
            id: PolicyId::from(self.id),
            tenant,
            pattern,
            limits,
            enabled: self.enabled,
            shadow: self.shadow,
            created_at: self.created_at,
            updated_at: self.updated_at,
            version: self.version,
        })
    }
}
