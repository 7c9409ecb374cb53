//! The in-memory policy snapshot the hot path reads: every enabled policy, compiled per tenant
//! into a [`PatternSet`] ordered by specificity, swapped atomically as a whole so a lookup never
//! awaits, locks or touches the database.

use std::{collections::HashMap, sync::Arc};

use arc_swap::ArcSwap;

use crate::{
    domain::{EndpointPattern, Limits, PatternSet, Policy, PolicyId, PolicyTenant},
    proto::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit,
};

/// A policy as the hot path needs it, with everything a response or a counter key needs
/// precomputed so a check allocates nothing for it.
#[derive(Debug)]
pub struct ActivePolicy {
    pub id: PolicyId,
    /// The id as text, sent as `current_limit.name`.
    pub name: String,
    /// The counter key suffix, `p:<id>`; the counter adds the prefix and `{tenant}` tag.
    pub key_suffix: String,
    pub limits: Limits,
    /// The RLS unit equal to the window, or `Unknown` when there is none.
    pub unit: Unit,
    pub shadow: bool,
    pub pattern: EndpointPattern,
}

impl ActivePolicy {
    fn new(policy: &Policy) -> Self {
        Self {
            id: policy.id,
            name: policy.id.to_string(),
            key_suffix: format!("p:{}", policy.id),
            limits: policy.limits,
            unit: unit_for_window(policy.limits.window_seconds()),
            shadow: policy.shadow,
            pattern: policy.pattern.clone(),
        }
    }
}

/// The RLS unit whose length is exactly `window_seconds`, if there is one. MONTH is 30 days and
/// YEAR 365 days, as in envoyproxy/ratelimit and as a descriptor's `limit` override reads them.
pub fn unit_for_window(window_seconds: u32) -> Unit {
    match window_seconds {
        1 => Unit::Second,
        60 => Unit::Minute,
        3_600 => Unit::Hour,
        86_400 => Unit::Day,
        604_800 => Unit::Week,
        2_592_000 => Unit::Month,
        31_536_000 => Unit::Year,
        _ => Unit::Unknown,
    }
}

type Matcher = PatternSet<Arc<ActivePolicy>>;

/// Every enabled policy, compiled for lookup.
#[derive(Debug, Default)]
pub struct PolicySnapshot {
    tenants: HashMap<String, Matcher>,
    /// The `*` policies: the default for every tenant with no matching policy of its own.
    defaults: Matcher,
    count: usize,
    /// Set by [`SharedSnapshot::store`]; changes with every swap, so caches learnt under an older
    /// snapshot can tell.
    generation: u64,
}

impl PolicySnapshot {
    /// Compiles `policies`, skipping disabled ones.
    pub fn build(policies: impl IntoIterator<Item = Policy>) -> Self {
        let mut per_tenant: HashMap<String, Vec<(EndpointPattern, Arc<ActivePolicy>)>> =
            HashMap::new();
        let mut defaults = Vec::new();
        let mut count = 0;
        for policy in policies.into_iter().filter(|p| p.enabled) {
            count += 1;
            let entry = (policy.pattern.clone(), Arc::new(ActivePolicy::new(&policy)));
            match &policy.tenant {
                PolicyTenant::AllTenants => defaults.push(entry),
                PolicyTenant::Tenant(id) => {
                    per_tenant.entry(id.to_string()).or_default().push(entry)
                }
            }
        }
        Self {
            tenants: per_tenant
                .into_iter()
                .map(|(tenant, entries)| (tenant, PatternSet::new(entries)))
                .collect(),
            defaults: PatternSet::new(defaults),
            count,
            generation: 0,
        }
    }

    /// Enabled policies in the snapshot.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Which swap of the shared snapshot this is (0 before the first).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The policy for a request: the most specific of the tenant's own matching policies, else
    /// the most specific matching `*` policy. `path` `None` (the descriptor had no path entry)
    /// matches only the `*` pattern.
    pub fn lookup(
        &self,
        tenant: &str,
        method: Option<&str>,
        path: Option<&str>,
    ) -> Option<&Arc<ActivePolicy>> {
        self.tenants
            .get(tenant)
            .and_then(|set| find_in(set, method, path))
            .or_else(|| find_in(&self.defaults, method, path))
    }
}

fn find_in<'s>(
    set: &'s Matcher,
    method: Option<&str>,
    path: Option<&str>,
) -> Option<&'s Arc<ActivePolicy>> {
    match path {
        Some(path) => set.find(method, path),
        None => set
            .iter()
            .find(|(pattern, _)| pattern.as_str() == EndpointPattern::EVERYTHING)
            .map(|(_, policy)| policy),
    }
}

/// The current snapshot, replaced whole on every refresh. Readers never block writers or each
/// other.
#[derive(Debug, Default)]
pub struct SharedSnapshot {
    current: ArcSwap<PolicySnapshot>,
    swaps: std::sync::atomic::AtomicU64,
}

impl SharedSnapshot {
    pub fn new() -> Self {
        Self::default()
    }

    /// The snapshot as of now; hold it for the length of one request.
    pub fn load(&self) -> arc_swap::Guard<Arc<PolicySnapshot>> {
        self.current.load()
    }

    /// Replaces the snapshot, giving it the next generation.
    pub fn store(&self, mut snapshot: PolicySnapshot) {
        snapshot.generation = self
            .swaps
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        self.current.store(Arc::new(snapshot));
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;

    fn policy(tenant: &str, pattern: &str, enabled: bool) -> Policy {
        Policy {
            id: PolicyId::generate(),
            tenant: PolicyTenant::parse(tenant).unwrap(),
            pattern: EndpointPattern::parse(pattern).unwrap(),
            limits: Limits::new(10, 60, 0).unwrap(),
            enabled,
            shadow: false,
            created_at: Utc::now(),
            updated_at: Utc::now(),
            version: 1,
        }
    }

    #[test]
    fn tenant_policies_come_before_defaults() {
        let snapshot = PolicySnapshot::build([
            policy("acme", "/v1/orders/**", true),
            policy("*", "/v1/**", true),
            policy("*", "*", true),
            policy("acme", "/v1/disabled", false),
        ]);
        assert_eq!(snapshot.len(), 3);
        let pattern_of = |tenant, method, path| {
            snapshot
                .lookup(tenant, method, path)
                .map(|p| p.pattern.as_str().to_owned())
        };
        let cases = [
            ("acme", Some("/v1/orders/7"), Some("/v1/orders/**")),
            // The tenant has policies, but none matches: the defaults apply.
            ("acme", Some("/v1/users"), Some("/v1/**")),
            ("globex", Some("/v1/orders/7"), Some("/v1/**")),
            ("globex", Some("/health"), Some("*")),
            // A disabled policy never matches.
            ("acme", Some("/v1/disabled"), Some("/v1/**")),
            // No path entry: only `*` matches.
            ("acme", None, Some("*")),
        ];
        for (tenant, path, expected) in cases {
            assert_eq!(
                pattern_of(tenant, None, path).as_deref(),
                expected,
                "{tenant} {path:?}"
            );
        }
    }

    #[test]
    fn nothing_matches_in_an_empty_snapshot() {
        let snapshot = PolicySnapshot::default();
        assert!(snapshot.lookup("acme", Some("GET"), Some("/")).is_none());
        assert!(snapshot.is_empty());
    }

    #[test]
    fn units_follow_the_window() {
        let cases = [
            (1, Unit::Second),
            (60, Unit::Minute),
            (3_600, Unit::Hour),
            (86_400, Unit::Day),
            (7 * 86_400, Unit::Week),
            (30 * 86_400, Unit::Month),
            (365 * 86_400, Unit::Year),
            (90, Unit::Unknown),
            (31 * 86_400, Unit::Unknown),
        ];
        for (window_seconds, unit) in cases {
            assert_eq!(unit_for_window(window_seconds), unit, "{window_seconds} s");
        }
    }

    #[test]
    fn response_units_have_envoys_numbers() {
        // RateLimitResponse.RateLimit.Unit and envoy.type.v3.RateLimitUnit must agree with
        // Envoy's: an override's unit is echoed by number.
        use crate::proto::envoy::r#type::v3::RateLimitUnit;
        let cases = [
            (Unit::Unknown, RateLimitUnit::Unknown, 0),
            (Unit::Second, RateLimitUnit::Second, 1),
            (Unit::Minute, RateLimitUnit::Minute, 2),
            (Unit::Hour, RateLimitUnit::Hour, 3),
            (Unit::Day, RateLimitUnit::Day, 4),
            (Unit::Month, RateLimitUnit::Month, 5),
            (Unit::Year, RateLimitUnit::Year, 6),
            (Unit::Week, RateLimitUnit::Week, 7),
        ];
        for (response, request, number) in cases {
            assert_eq!((response as i32, request as i32), (number, number));
        }
    }
}
