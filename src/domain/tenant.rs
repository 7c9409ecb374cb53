//! Tenant identifiers: who a policy belongs to, and who an admin caller may act for.

use std::fmt;

/// The longest tenant id Sluice accepts.
pub const MAX_TENANT_ID_LEN: usize = 64;

/// A tenant's id: 1–64 characters of `[A-Za-z0-9._-]`. Built only by [`TenantId::parse`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

impl TenantId {
    /// The tenant a descriptor without a tenant entry counts against, so leaving the header out
    /// never escapes a limit.
    pub const ANONYMOUS: &'static str = "anonymous";

    /// Parses a tenant id, naming the problem when it is not one.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Err("must not be empty".into());
        }
        if raw.len() > MAX_TENANT_ID_LEN {
            return Err(format!(
                "must be at most {MAX_TENANT_ID_LEN} characters, got {}",
                raw.len()
            ));
        }
        if let Some(bad) = raw.chars().find(|c| !is_tenant_char(*c)) {
            return Err(format!(
                "may contain only letters, digits, '.', '_' and '-'; found {bad:?}"
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The `anonymous` tenant.
    pub fn anonymous() -> Self {
        Self(Self::ANONYMOUS.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether `c` may appear in a tenant id.
pub fn is_tenant_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whom a policy applies to: one tenant, or (`*`) every tenant that has no matching policy of its
/// own, counted per tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PolicyTenant {
    /// `*`: the default for every tenant.
    AllTenants,
    Tenant(TenantId),
}

impl PolicyTenant {
    /// The wire form of [`PolicyTenant::AllTenants`].
    pub const ALL: &'static str = "*";

    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw == Self::ALL {
            Ok(Self::AllTenants)
        } else {
            TenantId::parse(raw).map(Self::Tenant)
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::AllTenants => Self::ALL,
            Self::Tenant(id) => id.as_str(),
        }
    }
}

impl fmt::Display for PolicyTenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an authenticated admin caller may act on, taken from its JWT. Built only by
/// [`TenantScope::from_claims`], [`TenantScope::tenant`] or [`TenantScope::platform_admin`], so a
/// scope that breaks the reserved-tenant rule cannot exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantScope(Scope);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Scope {
    /// `platform-admin` role: every tenant, including `*` defaults and `anonymous`. `home` is the
    /// token's own `tenant_id` claim when it has one (the tenant a create with no tenant goes to).
    PlatformAdmin { home: Option<TenantId> },
    /// One tenant only, never `anonymous`.
    Tenant(TenantId),
}

/// Why a token's claims give no scope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("a token needs a tenant_id unless it has the platform-admin role")]
    NoTenant,
    /// `anonymous` is what every descriptor without a tenant entry counts as: a policy of its
    /// own would replace the platform's `*` default for all tokenless traffic, so only a
    /// platform admin may manage it.
    #[error(
        "tenant_id \"anonymous\" is reserved: it stands for every request that names no tenant, \
         so only a platform-admin token may manage its policies"
    )]
    ReservedTenant,
}

impl TenantScope {
    /// The scope of a token's claims: its `tenant_id` (if any) and whether its roles include
    /// `platform-admin`. This is the one place the reserved-tenant rule is enforced; both
    /// token verification and `sluice token` come through here.
    pub fn from_claims(tenant: Option<TenantId>, platform_admin: bool) -> Result<Self, ScopeError> {
        match (tenant, platform_admin) {
            (home, true) => Ok(Self::platform_admin(home)),
            (Some(own), false) => Self::tenant(own),
            (None, false) => Err(ScopeError::NoTenant),
        }
    }

    /// A platform admin, optionally with a home tenant.
    pub fn platform_admin(home: Option<TenantId>) -> Self {
        Self(Scope::PlatformAdmin { home })
    }

    /// A caller scoped to `own` alone; refused for the reserved `anonymous` tenant.
    pub fn tenant(own: TenantId) -> Result<Self, ScopeError> {
        if own.as_str() == TenantId::ANONYMOUS {
            return Err(ScopeError::ReservedTenant);
        }
        Ok(Self(Scope::Tenant(own)))
    }

    /// Whether this caller may see and change policies of `tenant`.
    pub fn allows(&self, tenant: &PolicyTenant) -> bool {
        match (&self.0, tenant) {
            (Scope::PlatformAdmin { .. }, _) => true,
            (Scope::Tenant(own), PolicyTenant::Tenant(other)) => own == other,
            (Scope::Tenant(_), PolicyTenant::AllTenants) => false,
        }
    }

    /// The tenant the SQL of a scoped query must filter by; `None` for a platform admin.
    pub fn tenant_filter(&self) -> Option<&TenantId> {
        match &self.0 {
            Scope::PlatformAdmin { .. } => None,
            Scope::Tenant(own) => Some(own),
        }
    }

    /// The caller's own tenant, if it has one.
    pub fn home_tenant(&self) -> Option<&TenantId> {
        match &self.0 {
            Scope::PlatformAdmin { home } => home.as_ref(),
            Scope::Tenant(own) => Some(own),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_tenant_ids() {
        for ok in ["a", "acme", "Acme.Corp_2-x", &"x".repeat(64)] {
            assert_eq!(TenantId::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_invalid_tenant_ids_naming_the_problem() {
        let cases = [
            ("", "empty"),
            (&*"x".repeat(65), "at most 64"),
            ("acme corp", "' '"),
            ("*", "'*'"),
            ("a{b}", "'{'"),
            ("é", "'é'"),
        ];
        for (raw, expected) in cases {
            let err = TenantId::parse(raw).unwrap_err();
            assert!(err.contains(expected), "{raw:?}: {err}");
        }
    }

    #[test]
    fn star_is_the_all_tenants_default() {
        assert_eq!(PolicyTenant::parse("*").unwrap(), PolicyTenant::AllTenants);
        assert_eq!(PolicyTenant::parse("acme").unwrap().as_str(), "acme");
        assert!(PolicyTenant::parse("ac*me").is_err());
    }

    #[test]
    fn tenant_scope_allows_only_its_own_tenant() {
        let acme = TenantId::parse("acme").unwrap();
        let scope = TenantScope::tenant(acme.clone()).unwrap();
        assert!(scope.allows(&PolicyTenant::Tenant(acme)));
        assert!(!scope.allows(&PolicyTenant::parse("globex").unwrap()));
        assert!(!scope.allows(&PolicyTenant::AllTenants));
        let admin = TenantScope::platform_admin(None);
        assert!(admin.allows(&PolicyTenant::AllTenants));
        assert!(admin.tenant_filter().is_none());
    }

    #[test]
    fn anonymous_is_reserved_for_platform_admins() {
        let anonymous = TenantId::anonymous();
        assert_eq!(
            TenantScope::from_claims(Some(anonymous.clone()), false),
            Err(ScopeError::ReservedTenant)
        );
        assert!(
            ScopeError::ReservedTenant
                .to_string()
                .contains("\"anonymous\" is reserved")
        );
        let admin = TenantScope::from_claims(Some(anonymous.clone()), true).unwrap();
        assert!(admin.allows(&PolicyTenant::Tenant(anonymous)));
        assert_eq!(
            TenantScope::from_claims(None, false),
            Err(ScopeError::NoTenant)
        );
        // Only the exact id is reserved.
        let lookalike = TenantId::parse("Anonymous").unwrap();
        assert!(TenantScope::from_claims(Some(lookalike), false).is_ok());
    }
}
