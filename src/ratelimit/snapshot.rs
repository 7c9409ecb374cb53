//! The in-memory policy snapshot the hot path reads: every enabled policy, compiled per tenant
//! into a [`PatternSet`], swapped atomically as a whole so a lookup never awaits, locks or
//! touches the database.
//!
//! A change to one policy derives the next snapshot from the current one, recompiling only the
//! matcher of that policy's tenant (or of the `*` defaults) and sharing every other one; a full
//! load (at start and as the periodic safety net) reuses the matchers of tenants whose policies
//! did not change. Every swap gets a new generation, which caches learnt under an older snapshot
//! compare against. Writers are serialised by [`SharedSnapshot`]'s own lock; the ordering rules
//! (an older version never replaces a newer one; a single change made while a full load was
//! reading is applied again on top of it) live here, next to the state they protect.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use arc_swap::ArcSwap;

use crate::{
    domain::{EndpointPattern, Limits, PatternSet, Policy, PolicyId},
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
    /// The row version this was compiled from, so an older copy never replaces a newer one.
    pub version: i64,
}

impl ActivePolicy {
    fn new(policy: &Policy) -> Self {
        Self {
            id: policy.id,
            name: policy.id.to_string(),
            key_suffix: super::keys::policy_suffix(policy.id),
            limits: policy.limits,
            unit: unit_for_window(policy.limits.window_seconds()),
            shadow: policy.shadow,
            pattern: policy.pattern.clone(),
            version: policy.version,
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

/// [`PolicySnapshot::explain`]'s answer.
#[derive(Debug)]
pub struct ExplainedLookup<'s> {
    pub policy: Option<&'s Arc<ActivePolicy>>,
    /// The policy is a `*` default (the tenant had no matching policy of its own).
    pub is_default: bool,
    /// `(owner, policy)`: the tenant's policies, then the `*` defaults.
    pub considered: Vec<(&'s str, &'s Arc<ActivePolicy>)>,
}

type Matcher = PatternSet<Arc<ActivePolicy>>;

/// Whose policies a matcher holds: a tenant's name, or [`ALL_TENANTS`]. Shared between the
/// snapshot's map and the writer's bookkeeping, so a tenant's name is stored once.
type Owner = Arc<str>;

/// The owner of the `*` policies (a tenant id can never be `*`).
const ALL_TENANTS: &str = "*";

/// Every enabled policy, compiled for lookup. Each tenant's matcher (and the `*` one) is behind
/// its own `Arc`, so a snapshot derived for one policy's change shares every other matcher.
#[derive(Debug, Default, Clone)]
pub struct PolicySnapshot {
    tenants: HashMap<Owner, Arc<Matcher>>,
    /// The `*` policies: the default for every tenant with no matching policy of its own.
    defaults: Arc<Matcher>,
    count: usize,
    /// Set by [`SharedSnapshot::store`]; changes with every swap, so caches learnt under an older
    /// snapshot can tell.
    generation: u64,
}

impl PolicySnapshot {
    /// Compiles `policies`, skipping disabled ones.
    pub fn build(policies: impl IntoIterator<Item = Policy>) -> Self {
        Self::default().rebuilt(policies)
    }

    /// A snapshot of exactly `policies` (enabled ones), reusing this one's matcher for every
    /// owner whose policies are unchanged (same ids and versions): a full reload that finds
    /// nothing new compiles nothing and allocates little.
    fn rebuilt(&self, policies: impl IntoIterator<Item = Policy>) -> Self {
        let policies: Vec<Policy> = policies.into_iter().filter(|p| p.enabled).collect();
        let count = policies.len();
        let mut grouped: HashMap<&str, Vec<&Policy>> = HashMap::new();
        for policy in &policies {
            grouped
                .entry(policy.tenant.as_str())
                .or_default()
                .push(policy);
        }
        // An empty matcher is kept too, so that "nothing changed" stays pointer-equal.
        let mut defaults = match self.defaults.is_empty() {
            true => self.defaults.clone(),
            false => Arc::default(),
        };
        let mut tenants = HashMap::with_capacity(grouped.len());
        for (owner, group) in grouped {
            let (key, current) = match self.owned(owner) {
                Some((key, matcher)) => (key.clone(), Some(matcher)),
                None => (Owner::from(owner), None),
            };
            let matcher = match current {
                Some(matcher) if holds_exactly(matcher, &group) => matcher.clone(),
                _ => Arc::new(compile(group.iter().copied())),
            };
            if &*key == ALL_TENANTS {
                defaults = matcher;
            } else {
                tenants.insert(key, matcher);
            }
        }
        Self {
            tenants,
            defaults,
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

    /// What [`PolicySnapshot::lookup`] finds and whether it is a `*` default, with every enabled
    /// policy it considered (the tenant's, then the defaults, as `(owner, policy)`). For
    /// `ExplainRateLimit`, never the hot path.
    pub fn explain<'s>(
        &'s self,
        tenant: &'s str,
        method: Option<&str>,
        path: Option<&str>,
    ) -> ExplainedLookup<'s> {
        let own = self.tenants.get(tenant);
        let found_own = own.and_then(|set| find_in(set, method, path));
        let found = found_own.or_else(|| find_in(&self.defaults, method, path));
        let mut considered: Vec<(&str, &Arc<ActivePolicy>)> = Vec::new();
        if let Some(set) = own {
            considered.extend(set.iter().map(|(_, policy)| (tenant, policy)));
        }
        considered.extend(
            self.defaults
                .iter()
                .map(|(_, policy)| (ALL_TENANTS, policy)),
        );
        ExplainedLookup {
            policy: found,
            is_default: found.is_some() && found_own.is_none(),
            considered,
        }
    }

    /// The matcher of `owner` (a tenant, or `*`) and the key it is held under.
    fn owned(&self, owner: &str) -> Option<(&Owner, &Arc<Matcher>)> {
        if owner == ALL_TENANTS {
            static ALL: std::sync::LazyLock<Owner> =
                std::sync::LazyLock::new(|| Owner::from(ALL_TENANTS));
            return Some((&ALL, &self.defaults));
        }
        self.tenants.get_key_value(owner)
    }

    /// This snapshot with `policy` in place of its older version, or `None` when that changes
    /// nothing: the snapshot already holds this version or a newer one, or the policy is disabled
    /// and not held. Only the owner's matcher is recompiled.
    fn upserted(&self, policy: &Policy) -> Option<Self> {
        let (owner, current) = match self.owned(policy.tenant.as_str()) {
            Some((owner, matcher)) => (owner.clone(), Some(matcher)),
            None => (Owner::from(policy.tenant.as_str()), None),
        };
        let held = current.and_then(|m| m.iter().find(|(_, held)| held.id == policy.id));
        match held {
            Some((_, held)) if held.version >= policy.version => return None,
            None if !policy.enabled => return None,
            _ => {}
        }
        let mut entries = entries_except(current, policy.id);
        if policy.enabled {
            entries.push((policy.pattern.clone(), Arc::new(ActivePolicy::new(policy))));
        }
        Some(self.with_owner(owner, entries))
    }

    /// This snapshot without policy `id` of `owner`, or `None` when it does not hold it.
    fn removed(&self, owner: &str, id: PolicyId) -> Option<Self> {
        let (owner, current) = self.owned(owner)?;
        current.iter().find(|(_, held)| held.id == id)?;
        Some(self.with_owner(owner.clone(), entries_except(Some(current), id)))
    }

    /// A copy with `owner`'s policies replaced by `entries`, sharing every other matcher.
    fn with_owner(&self, owner: Owner, entries: Vec<(EndpointPattern, Arc<ActivePolicy>)>) -> Self {
        let before = self.owned(&owner).map_or(0, |(_, m)| m.len());
        let mut next = self.clone();
        next.count = self.count - before + entries.len();
        let matcher = Arc::new(PatternSet::new(entries));
        if &*owner == ALL_TENANTS {
            next.defaults = matcher;
        } else if matcher.is_empty() {
            next.tenants.remove(&owner);
        } else {
            next.tenants.insert(owner, matcher);
        }
        next
    }

    /// Every owner with its matcher, the `*` one included.
    fn matchers(&self) -> impl Iterator<Item = (&Owner, &Arc<Matcher>)> {
        self.tenants.iter().chain(self.owned(ALL_TENANTS))
    }

    /// Every policy id with its owner, for the writer's bookkeeping.
    fn placement(&self) -> HashMap<PolicyId, Owner> {
        self.matchers()
            .flat_map(|(owner, matcher)| matcher.iter().map(|(_, p)| (p.id, owner.clone())))
            .collect()
    }

    /// The owner of policy `id`, by looking at every policy: only for the rare replay of a
    /// removal after a full load.
    fn owner_of(&self, id: PolicyId) -> Option<Owner> {
        self.matchers()
            .find(|(_, matcher)| matcher.iter().any(|(_, p)| p.id == id))
            .map(|(owner, _)| owner.clone())
    }
}

fn compile<'p>(policies: impl Iterator<Item = &'p Policy>) -> Matcher {
    PatternSet::new(
        policies
            .map(|policy| (policy.pattern.clone(), Arc::new(ActivePolicy::new(policy))))
            .collect(),
    )
}

/// Whether `matcher` holds exactly these policies, each at the same version.
fn holds_exactly(matcher: &Matcher, policies: &[&Policy]) -> bool {
    if matcher.len() != policies.len() {
        return false;
    }
    let mut held: Vec<(PolicyId, i64)> = matcher.iter().map(|(_, p)| (p.id, p.version)).collect();
    let mut given: Vec<(PolicyId, i64)> = policies.iter().map(|p| (p.id, p.version)).collect();
    held.sort_unstable();
    given.sort_unstable();
    held == given
}

/// A matcher's entries, shared, without policy `id`.
fn entries_except(
    matcher: Option<&Arc<Matcher>>,
    id: PolicyId,
) -> Vec<(EndpointPattern, Arc<ActivePolicy>)> {
    matcher
        .into_iter()
        .flat_map(|m| m.iter())
        .filter(|(_, held)| held.id != id)
        .map(|(pattern, held)| (pattern.clone(), held.clone()))
        .collect()
}

fn find_in<'s>(
    set: &'s Matcher,
    method: Option<&str>,
    path: Option<&str>,
) -> Option<&'s Arc<ActivePolicy>> {
    match path {
        Some(path) => set.find(method, path),
        None => set.find_everything(),
    }
}

/// The current snapshot, replaced on every change: whole after a full load, or derived from the
/// current one for a single policy's change. Readers never block writers or each other.
#[derive(Debug, Default)]
pub struct SharedSnapshot {
    current: ArcSwap<PolicySnapshot>,
    swaps: AtomicU64,
    /// Taken by writers only (the refresher, the admin service's own changes), never by a
    /// lookup: it makes each read-derive-swap atomic, so two writers never lose a change.
    writer: Mutex<Writer>,
}

#[derive(Debug, Default)]
struct Writer {
    /// Which owner holds each policy of the current snapshot, so removing an id (all that a
    /// deletion tells) recompiles only that owner's matcher.
    placement: HashMap<PolicyId, Owner>,
    /// Single changes applied while a full load was reading the store: its result may predate
    /// them, so they are applied again on top of it.
    during_full_load: Option<Vec<SingleChange>>,
}

#[derive(Debug)]
enum SingleChange {
    Upsert(Policy),
    Remove(PolicyId),
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
    pub fn store(&self, snapshot: PolicySnapshot) {
        let mut writer = self.writer();
        writer.placement = snapshot.placement();
        self.swap(snapshot);
    }

    /// Says that a full load is about to read the store; see [`Self::finish_full_load`].
    pub fn begin_full_load(&self) {
        self.writer().during_full_load = Some(Vec::new());
    }

    /// Replaces the snapshot with exactly `policies` (read after [`Self::begin_full_load`]),
    /// then applies again every single change made since that call, which the read may not have
    /// seen (each is skipped when the read already has that version or a newer one). Owners
    /// whose policies did not change keep their compiled matcher. Returns the number of enabled
    /// policies.
    pub fn finish_full_load(&self, policies: Vec<Policy>) -> usize {
        // Compiled outside the writer lock: single changes meanwhile are replayed below.
        let loaded = self.load().rebuilt(policies);
        let mut writer = self.writer();
        let mut next = loaded;
        for change in writer.during_full_load.take().unwrap_or_default() {
            let changed = match &change {
                SingleChange::Upsert(policy) => next.upserted(policy),
                SingleChange::Remove(id) => next
                    .owner_of(*id)
                    .and_then(|owner| next.removed(&owner, *id)),
            };
            if let Some(changed) = changed {
                next = changed;
            }
        }
        let count = next.len();
        let current = self.load();
        if !same_matchers(&current, &next) {
            writer.placement = next.placement();
            self.swap(next);
        }
        count
    }

    /// Puts one policy in place of its older version (or removes it when disabled), recompiling
    /// only its owner's matcher. An older version than the one held changes nothing. Returns the
    /// number of enabled policies.
    pub fn upsert(&self, policy: Policy) -> usize {
        let mut writer = self.writer();
        let current = self.load();
        if let Some(next) = current.upserted(&policy) {
            let owner = next
                .owned(policy.tenant.as_str())
                .map(|(owner, _)| owner.clone());
            match owner {
                Some(owner) if policy.enabled => writer.placement.insert(policy.id, owner),
                _ => writer.placement.remove(&policy.id),
            };
            self.swap(next);
        }
        if let Some(log) = &mut writer.during_full_load {
            log.push(SingleChange::Upsert(policy));
        }
        self.load().len()
    }

    /// Removes one policy, recompiling only its owner's matcher. Returns the number of enabled
    /// policies.
    pub fn remove(&self, id: PolicyId) -> usize {
        let mut writer = self.writer();
        let current = self.load();
        if let Some(owner) = writer.placement.get(&id)
            && let Some(next) = current.removed(owner, id)
        {
            writer.placement.remove(&id);
            self.swap(next);
        }
        if let Some(log) = &mut writer.during_full_load {
            log.push(SingleChange::Remove(id));
        }
        self.load().len()
    }

    fn writer(&self) -> std::sync::MutexGuard<'_, Writer> {
        // A panic while holding it leaves no half-made change: the swap is the last step.
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes `snapshot` with the next generation. Callers hold the writer lock.
    fn swap(&self, mut snapshot: PolicySnapshot) {
        snapshot.generation = self.swaps.fetch_add(1, Ordering::Relaxed) + 1;
        self.current.store(Arc::new(snapshot));
    }
}

/// Whether two snapshots hold the very same compiled matchers (nothing changed between them).
fn same_matchers(a: &PolicySnapshot, b: &PolicySnapshot) -> bool {
    Arc::ptr_eq(&a.defaults, &b.defaults)
        && a.tenants.len() == b.tenants.len()
        && a.tenants
            .iter()
            .all(|(owner, m)| b.tenants.get(owner).is_some_and(|n| Arc::ptr_eq(m, n)))
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::domain::PolicyTenant;

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

    fn shared(policies: &[Policy]) -> SharedSnapshot {
        let shared = SharedSnapshot::new();
        shared.store(PolicySnapshot::build(policies.iter().cloned()));
        shared
    }

    fn matcher(shared: &SharedSnapshot, owner: &str) -> Option<Arc<Matcher>> {
        shared.load().owned(owner).map(|(_, m)| m.clone())
    }

    /// The limit of the policy that `tenant`'s request for `path` gets, if any.
    fn limit(shared: &SharedSnapshot, tenant: &str, path: &str) -> Option<u32> {
        shared
            .load()
            .lookup(tenant, None, Some(path))
            .map(|p| p.limits.max_requests())
    }

    fn with_limit(mut policy: Policy, max_requests: u32) -> Policy {
        policy.limits = Limits::new(max_requests, 60, 0).unwrap();
        policy.version += 1;
        policy
    }

    #[test]
    fn a_change_recompiles_only_its_tenants_matcher() {
        let acme = policy("acme", "/a", true);
        let shared = shared(&[
            acme.clone(),
            policy("globex", "/g", true),
            policy("*", "/**", true),
        ]);
        let (globex, defaults) = (matcher(&shared, "globex"), matcher(&shared, "*"));
        let generation = shared.load().generation();

        // A new policy for acme, then a changed limit on its first one.
        assert_eq!(shared.upsert(policy("acme", "/b", true)), 4);
        assert_eq!(shared.upsert(with_limit(acme.clone(), 42)), 4);

        assert_eq!(limit(&shared, "acme", "/a"), Some(42));
        assert_eq!(limit(&shared, "acme", "/b"), Some(10));
        assert_eq!(shared.load().generation(), generation + 2);
        let untouched = |owner: &str, before: &Option<Arc<Matcher>>| {
            let (now, before) = (matcher(&shared, owner).unwrap(), before.clone().unwrap());
            assert!(Arc::ptr_eq(&now, &before), "{owner} was recompiled");
        };
        untouched("globex", &globex);
        untouched("*", &defaults);

        // A `*` policy's change leaves every tenant's matcher alone.
        let acme_matcher = matcher(&shared, "acme");
        shared.upsert(policy("*", "/other", true));
        untouched("acme", &acme_matcher);
        untouched("globex", &globex);
        assert_eq!(limit(&shared, "initech", "/other"), Some(10));
    }

    #[test]
    fn removing_an_id_takes_out_that_policy_only() {
        let (a, b, star) = (
            policy("acme", "/a", true),
            policy("acme", "/b", true),
            policy("*", "/a", true),
        );
        let shared = shared(&[a.clone(), b.clone(), star.clone()]);
        let defaults = matcher(&shared, "*").unwrap();

        assert_eq!(shared.remove(a.id), 2);
        // acme's own `/a` is gone, so the `*` default governs it now.
        assert_eq!(
            shared.load().lookup("acme", None, Some("/a")).map(|p| p.id),
            Some(star.id)
        );
        assert_eq!(limit(&shared, "acme", "/b"), Some(10));
        assert!(Arc::ptr_eq(&matcher(&shared, "*").unwrap(), &defaults));

        // A tenant's last policy takes its matcher with it; an unknown id changes nothing.
        assert_eq!(shared.remove(b.id), 1);
        assert!(matcher(&shared, "acme").is_none());
        let generation = shared.load().generation();
        assert_eq!(shared.remove(PolicyId::generate()), 1);
        assert_eq!(shared.remove(b.id), 1);
        assert_eq!(shared.load().generation(), generation, "nothing to swap");

        assert_eq!(shared.remove(star.id), 0);
        assert!(shared.load().lookup("acme", None, Some("/a")).is_none());
    }

    #[test]
    fn disabling_removes_and_re_enabling_restores() {
        let acme = policy("acme", "/a", true);
        let shared = shared(std::slice::from_ref(&acme));
        let mut disabled = with_limit(acme.clone(), 10);
        disabled.enabled = false;
        assert_eq!(shared.upsert(disabled.clone()), 0);
        assert_eq!(limit(&shared, "acme", "/a"), None);
        // A disabled policy that is not held changes nothing.
        let generation = shared.load().generation();
        assert_eq!(shared.upsert(policy("acme", "/off", false)), 0);
        assert_eq!(shared.load().generation(), generation);

        let mut enabled = with_limit(disabled, 11);
        enabled.enabled = true;
        assert_eq!(shared.upsert(enabled), 1);
        assert_eq!(limit(&shared, "acme", "/a"), Some(11));
    }

    #[test]
    fn an_older_version_never_replaces_a_newer_one() {
        let v1 = policy("acme", "/a", true);
        let v2 = with_limit(v1.clone(), 20);
        let shared = shared(std::slice::from_ref(&v1));
        shared.upsert(v2.clone());
        let generation = shared.load().generation();

        // v1 arriving late (an RPC's own change overtaken by another instance's), or v2 again.
        shared.upsert(v1);
        shared.upsert(v2);
        assert_eq!(limit(&shared, "acme", "/a"), Some(20));
        assert_eq!(shared.load().generation(), generation, "nothing to swap");
    }

    #[test]
    fn a_full_load_keeps_the_single_changes_made_while_it_read() {
        let (kept, deleted, updated) = (
            policy("acme", "/kept", true),
            policy("acme", "/deleted", true),
            policy("globex", "/updated", true),
        );
        let shared = shared(&[kept.clone(), deleted.clone(), updated.clone()]);

        shared.begin_full_load();
        let newer = with_limit(with_limit(updated.clone(), 20), 30);
        let read = vec![kept.clone(), deleted.clone(), newer];
        // While the store was read: a create and a delete the read did not see, and an update
        // older than the one the read saw.
        let created = policy("initech", "/new", true);
        shared.upsert(created.clone());
        shared.remove(deleted.id);
        shared.upsert(with_limit(updated.clone(), 20));
        assert_eq!(shared.finish_full_load(read), 3);

        assert_eq!(limit(&shared, "initech", "/new"), Some(10));
        assert_eq!(limit(&shared, "acme", "/deleted"), None);
        assert_eq!(limit(&shared, "acme", "/kept"), Some(10));
        assert_eq!(limit(&shared, "globex", "/updated"), Some(30));
        // The bookkeeping followed: the created policy can be removed by id alone.
        assert_eq!(shared.remove(created.id), 2);
    }

    #[test]
    fn a_full_load_recompiles_only_the_tenants_that_changed() {
        let (a, g) = (policy("acme", "/a", true), policy("globex", "/g", true));
        let shared = shared(&[a.clone(), g.clone()]);
        let (acme, globex) = (matcher(&shared, "acme"), matcher(&shared, "globex"));
        let generation = shared.load().generation();

        shared.begin_full_load();
        assert_eq!(shared.finish_full_load(vec![a.clone(), g.clone()]), 2);
        assert_eq!(
            shared.load().generation(),
            generation,
            "nothing changed: no swap, caches keep their generation"
        );

        shared.begin_full_load();
        shared.finish_full_load(vec![a, with_limit(g, 5)]);
        assert_eq!(shared.load().generation(), generation + 1);
        assert!(Arc::ptr_eq(
            &matcher(&shared, "acme").unwrap(),
            &acme.unwrap()
        ));
        assert!(!Arc::ptr_eq(
            &matcher(&shared, "globex").unwrap(),
            &globex.unwrap()
        ));
        assert_eq!(limit(&shared, "globex", "/g"), Some(5));
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
