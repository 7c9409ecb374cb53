//! A rate-limit policy and the rules its fields obey (SPEC §2): the limits, the id, the etag, and
//! the partial updates the admin API applies.

use std::num::NonZeroU32;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{EndpointPattern, PolicyTenant};

/// Highest `max_requests`: the exact log keeps one sorted-set member per counted request.
pub const MAX_REQUESTS_LIMIT: u32 = 1_000_000;
/// Longest window: 31 days.
pub const MAX_WINDOW_SECONDS: u32 = 2_678_400;

/// One problem with one field of a request, reported as a `google.rpc.BadRequest` violation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The proto field path, e.g. `policy.max_requests`.
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// A policy's server-assigned id (a UUIDv7, so ids sort in creation order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyId(Uuid);

impl PolicyId {
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Err("must not be empty".into());
        }
        Uuid::parse_str(raw)
            .map(Self)
            .map_err(|_| format!("must be a policy id (a UUID), got {:?}", truncate(raw, 64)))
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl From<Uuid> for PolicyId {
    fn from(id: Uuid) -> Self {
        Self(id)
    }
}

impl std::fmt::Display for PolicyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The numbers of a policy, valid together: `max_requests` 1…1,000,000, `window_seconds`
/// 1…2,678,400, `burst_limit` 0 (none) or 1…`max_requests`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limits {
    max_requests: u32,
    window_seconds: u32,
    burst_limit: u32,
}

impl Limits {
    /// Checks every field, reporting each violation under `policy.<field>`.
    pub fn new(
        max_requests: u32,
        window_seconds: u32,
        burst_limit: u32,
    ) -> Result<Self, Vec<FieldViolation>> {
        let mut violations = Vec::new();
        if !(1..=MAX_REQUESTS_LIMIT).contains(&max_requests) {
            violations.push(FieldViolation::new(
                "policy.max_requests",
                format!("must be between 1 and {MAX_REQUESTS_LIMIT}, got {max_requests}"),
            ));
        }
        if !(1..=MAX_WINDOW_SECONDS).contains(&window_seconds) {
            violations.push(FieldViolation::new(
                "policy.window_seconds",
                format!(
                    "must be between 1 and {MAX_WINDOW_SECONDS} (31 days), got {window_seconds}"
                ),
            ));
        }
        if burst_limit > max_requests && max_requests >= 1 {
            violations.push(FieldViolation::new(
                "policy.burst_limit",
                format!(
                    "must be 0 (no burst limit) or at most max_requests ({max_requests}), got {burst_limit}"
                ),
            ));
        }
        if violations.is_empty() {
            Ok(Self {
                max_requests,
                window_seconds,
                burst_limit,
            })
        } else {
            Err(violations)
        }
    }

    pub fn max_requests(&self) -> u32 {
        self.max_requests
    }

    pub fn window_seconds(&self) -> u32 {
        self.window_seconds
    }

    /// 0 means no burst limit.
    pub fn burst_limit(&self) -> u32 {
        self.burst_limit
    }
}

/// A stored policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub id: PolicyId,
    pub tenant: PolicyTenant,
    pub pattern: EndpointPattern,
    pub limits: Limits,
    /// A disabled policy is kept but never matches.
    pub enabled: bool,
    /// A shadow policy is counted and reported but never denies.
    pub shadow: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Row version, incremented by every update; the etag is derived from it.
    pub version: i64,
}

impl Policy {
    /// Opaque to clients; changes on every update.
    pub fn etag(&self) -> String {
        format!("{}-{}", self.version, self.updated_at.timestamp_micros())
    }
}

/// A policy to create, valid as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPolicy {
    pub tenant: PolicyTenant,
    pub pattern: EndpointPattern,
    pub limits: Limits,
    pub enabled: bool,
    pub shadow: bool,
}

/// The most policies one tenant (or `*`) may hold, enabled or not: `SLUICE_MAX_POLICIES_PER_TENANT`.
/// Bounds what one tenant can add to the snapshot every instance keeps in memory and to the
/// lookups every tenant shares. At least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxPoliciesPerTenant(NonZeroU32);

impl MaxPoliciesPerTenant {
    /// The default cap (SPEC §1).
    pub const DEFAULT: u32 = 1_000;

    pub fn new(limit: u32) -> Result<Self, String> {
        NonZeroU32::new(limit)
            .map(Self)
            .ok_or_else(|| "must be at least 1".to_owned())
    }

    pub fn get(self) -> u32 {
        self.0.get()
    }

    /// Whether a tenant that already holds `existing` policies may create one more.
    pub fn admits_another(self, existing: u64) -> bool {
        existing < u64::from(self.get())
    }
}

impl Default for MaxPoliciesPerTenant {
    fn default() -> Self {
        // Evaluated at compile time: a zero default would not build.
        Self(const { NonZeroU32::new(Self::DEFAULT).unwrap() })
    }
}

impl std::str::FromStr for MaxPoliciesPerTenant {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let limit = raw
            .parse::<u32>()
            .map_err(|_| format!("{raw:?} is not a whole number of policies"))?;
        Self::new(limit)
    }
}

impl std::fmt::Display for MaxPoliciesPerTenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The fields an update changes; `None` keeps the stored value. Limits are given raw because they
/// are only valid together with the stored values they are merged with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyPatch {
    pub pattern: Option<EndpointPattern>,
    pub max_requests: Option<u32>,
    pub window_seconds: Option<u32>,
    pub burst_limit: Option<u32>,
    pub enabled: Option<bool>,
    pub shadow: Option<bool>,
}

/// A policy's changeable fields after a patch was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyUpdate {
    pub pattern: EndpointPattern,
    pub limits: Limits,
    pub enabled: bool,
    pub shadow: bool,
}

impl PolicyPatch {
    /// Merges the patch into `current`, checking the merged limits together.
    pub fn apply(&self, current: &Policy) -> Result<PolicyUpdate, Vec<FieldViolation>> {
        let limits = Limits::new(
            self.max_requests.unwrap_or(current.limits.max_requests()),
            self.window_seconds
                .unwrap_or(current.limits.window_seconds()),
            self.burst_limit.unwrap_or(current.limits.burst_limit()),
        )?;
        Ok(PolicyUpdate {
            pattern: self
                .pattern
                .clone()
                .unwrap_or_else(|| current.pattern.clone()),
            limits,
            enabled: self.enabled.unwrap_or(current.enabled),
            shadow: self.shadow.unwrap_or(current.shadow),
        })
    }
}

/// `raw` cut to at most `max` bytes on a character boundary, for echoing bad input in errors.
pub fn truncate(raw: &str, max: usize) -> &str {
    if raw.len() <= max {
        return raw;
    }
    let mut end = max;
    while !raw.is_char_boundary(end) {
        end -= 1;
    }
    &raw[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_accept_the_documented_ranges() {
        for (max, window, burst) in [
            (1, 1, 0),
            (1_000_000, 2_678_400, 1_000_000),
            (100, 60, 10),
            (5, 1, 5),
        ] {
            let limits = Limits::new(max, window, burst).unwrap();
            assert_eq!(
                (
                    limits.max_requests(),
                    limits.window_seconds(),
                    limits.burst_limit()
                ),
                (max, window, burst)
            );
        }
    }

    #[test]
    fn limits_name_every_bad_field() {
        let cases: &[(u32, u32, u32, &[&str])] = &[
            (0, 60, 0, &["policy.max_requests"]),
            (1_000_001, 60, 0, &["policy.max_requests"]),
            (10, 0, 0, &["policy.window_seconds"]),
            (10, 2_678_401, 0, &["policy.window_seconds"]),
            (10, 60, 11, &["policy.burst_limit"]),
            (0, 0, 0, &["policy.max_requests", "policy.window_seconds"]),
        ];
        for (max, window, burst, fields) in cases {
            let violations = Limits::new(*max, *window, *burst).unwrap_err();
            let got: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
            assert_eq!(&got, fields, "({max}, {window}, {burst})");
        }
    }

    #[test]
    fn policy_ids_are_uuids() {
        let id = PolicyId::generate();
        assert_eq!(PolicyId::parse(&id.to_string()).unwrap(), id);
        assert!(PolicyId::parse("nope").unwrap_err().contains("UUID"));
        assert!(PolicyId::parse("").unwrap_err().contains("empty"));
    }

    #[test]
    fn patch_checks_merged_limits_together() {
        let now = Utc::now();
        let current = Policy {
            id: PolicyId::generate(),
            tenant: PolicyTenant::parse("acme").unwrap(),
            pattern: EndpointPattern::parse("/v1/**").unwrap(),
            limits: Limits::new(100, 60, 50).unwrap(),
            enabled: true,
            shadow: false,
            created_at: now,
            updated_at: now,
            version: 1,
        };
        let lower_max = PolicyPatch {
            max_requests: Some(10),
            ..Default::default()
        };
        let violations = lower_max.apply(&current).unwrap_err();
        assert_eq!(violations[0].field, "policy.burst_limit");

        let both = PolicyPatch {
            max_requests: Some(10),
            burst_limit: Some(0),
            enabled: Some(false),
            ..Default::default()
        };
        let update = both.apply(&current).unwrap();
        assert_eq!(update.limits.max_requests(), 10);
        assert!(!update.enabled);
        assert_eq!(update.pattern, current.pattern);
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 10), "abc");
    }

    #[test]
    fn the_policy_cap_parses_whole_positive_numbers() {
        assert_eq!(MaxPoliciesPerTenant::default().get(), 1_000);
        let three: MaxPoliciesPerTenant = "3".parse().unwrap();
        assert!(three.admits_another(2));
        assert!(!three.admits_another(3));
        assert!(!three.admits_another(4));
        for (raw, problem) in [
            ("0", "at least 1"),
            ("-1", "whole number"),
            ("lots", "whole number"),
        ] {
            let err = raw.parse::<MaxPoliciesPerTenant>().unwrap_err();
            assert!(err.contains(problem), "{raw}: {err}");
        }
    }
}
