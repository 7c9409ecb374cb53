//! Parses a `RateLimitRequest` into what the hot path decides on (SPEC §3, "No bypass").
//!
//! Only what Envoy's *configuration* controls can make a request invalid: an empty domain, no
//! descriptors, a descriptor without entries, an empty entry key, more than [`MAX_DESCRIPTORS`]
//! descriptors or [`MAX_ENTRIES`] entries in one. Everything a *client* controls gets a decision:
//! - a value of any length and any bytes (entry values are decoded as bytes, see `build.rs`);
//! - the path entry is cut at the first `?` or `#` before anything else looks at it;
//! - the path and method are matched as text, with any invalid UTF-8 sequence read as U+FFFD
//!   (patterns never contain it), while the tenant and every value that reaches a counter key are
//!   used as the exact bytes sent, so two different byte strings never share a counter;
//! - a `hits_addend` of any size (the service decides one that no limit can allow as OVER_LIMIT);
//! - a limit override of any size; one whose unit is UNKNOWN is ignored.
//!
//! Parsed descriptors borrow from the request, so parsing allocates only the list (and a
//! replacement string for a path or method that is not valid UTF-8).

use std::{borrow::Cow, time::Duration};

use crate::{
    domain::TenantId,
    proto::{
        envoy::service::ratelimit::v3::RateLimitRequest,
        envoy::{
            extensions::common::ratelimit::v3::RateLimitDescriptor, r#type::v3::RateLimitUnit,
        },
    },
};

/// Most descriptors in one request, and most entries in one descriptor.
pub const MAX_DESCRIPTORS: usize = 64;
pub const MAX_ENTRIES: usize = 64;

/// The largest encoded `RateLimitRequest` the service takes (tonic's default is 4 MiB). Envoy
/// builds descriptors from request headers, which it caps at 8 MiB in all even at its highest
/// `max_request_headers_kb`; 16 MiB leaves room for a descriptor list that repeats a large
/// header, and for the 64 × 64 entries of a request at [`MAX_DESCRIPTORS`] and [`MAX_ENTRIES`]
/// with kilobyte-long values (about 8.5 MiB). A larger message is refused by tonic with
/// OUT_OF_RANGE before it is decoded.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;

/// The descriptor entry keys that carry the tenant, the path and the method.
#[derive(Debug, Clone)]
pub struct DescriptorKeys {
    pub tenant: String,
    pub path: String,
    pub method: String,
}

impl Default for DescriptorKeys {
    fn default() -> Self {
        Self {
            tenant: "tenant_id".into(),
            path: "path".into(),
            method: "method".into(),
        }
    }
}

/// A descriptor's own limit, replacing the matched policy's numbers for this call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitOverride {
    pub requests_per_unit: u32,
    pub unit: RateLimitUnit,
    pub window: Duration,
}

/// One request descriptor, ready to be matched and counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedDescriptor<'a> {
    /// The tenant entry's value exactly as sent, or `anonymous` when the descriptor has none (or
    /// an empty one).
    pub tenant: &'a [u8],
    /// The tenant as text, when it is valid UTF-8 (only then can it name a tenant's policies);
    /// checked once here, since the lookup and the counter key both need it.
    pub tenant_text: Option<&'a str>,
    /// The path entry up to its first `?` or `#`, as text for matching.
    pub path: Option<Cow<'a, str>>,
    /// The method entry as text for matching; `None` when absent or empty.
    pub method: Option<Cow<'a, str>>,
    /// Hits this descriptor adds; 0 checks without counting. Not bounded here: a number no limit
    /// can allow is the service's to decide.
    pub hits: u64,
    pub limit_override: Option<LimitOverride>,
    /// Index of the descriptor in the request.
    pub index: usize,
}

/// What is wrong with a request; becomes INVALID_ARGUMENT.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidRequest(pub String);

fn invalid(message: impl Into<String>) -> InvalidRequest {
    InvalidRequest(message.into())
}

/// Checks the request's shape (what Envoy's configuration controls) and extracts every
/// descriptor.
pub fn parse_request<'a>(
    request: &'a RateLimitRequest,
    keys: &DescriptorKeys,
) -> Result<Vec<ParsedDescriptor<'a>>, InvalidRequest> {
    if request.domain.is_empty() {
        return Err(invalid("domain must not be empty"));
    }
    if request.descriptors.is_empty() {
        return Err(invalid("descriptors must not be empty"));
    }
    if request.descriptors.len() > MAX_DESCRIPTORS {
        return Err(invalid(format!(
            "at most {MAX_DESCRIPTORS} descriptors are allowed, got {}",
            request.descriptors.len()
        )));
    }
    let request_hits = match request.hits_addend {
        0 => 1,
        n => u64::from(n),
    };
    request
        .descriptors
        .iter()
        .enumerate()
        .map(|(index, descriptor)| parse_descriptor(index, descriptor, request_hits, keys))
        .collect()
}

fn parse_descriptor<'a>(
    index: usize,
    descriptor: &'a RateLimitDescriptor,
    request_hits: u64,
    keys: &DescriptorKeys,
) -> Result<ParsedDescriptor<'a>, InvalidRequest> {
    if descriptor.entries.is_empty() {
        return Err(invalid(format!("descriptors[{index}] has no entries")));
    }
    if descriptor.entries.len() > MAX_ENTRIES {
        return Err(invalid(format!(
            "descriptors[{index}] has {} entries; at most {MAX_ENTRIES} are allowed",
            descriptor.entries.len()
        )));
    }
    let mut parsed = ParsedDescriptor {
        tenant: TenantId::ANONYMOUS.as_bytes(),
        tenant_text: Some(TenantId::ANONYMOUS),
        path: None,
        method: None,
        hits: descriptor.hits_addend.unwrap_or(request_hits),
        limit_override: descriptor
            .limit
            .as_ref()
            .and_then(|limit| parse_override(limit.requests_per_unit, limit.unit)),
        index,
    };
    for (e, entry) in descriptor.entries.iter().enumerate() {
        let key = entry.key.as_slice();
        if key.is_empty() {
            return Err(invalid(format!(
                "descriptors[{index}].entries[{e}].key must not be empty"
            )));
        }
        let value = entry.value.as_slice();
        if key == keys.tenant.as_bytes() {
            if !value.is_empty() {
                parsed.tenant = value;
                parsed.tenant_text = std::str::from_utf8(value).ok();
            }
        } else if key == keys.path.as_bytes() {
            parsed.path = Some(String::from_utf8_lossy(before_query(value)));
        } else if key == keys.method.as_bytes() {
            parsed.method = Some(String::from_utf8_lossy(value)).filter(|m| !m.is_empty());
        }
    }
    Ok(parsed)
}

/// The path up to its first `?` or `#`: matching never looks at a query string or fragment, so
/// neither can make a path too long or different.
fn before_query(path: &[u8]) -> &[u8] {
    match path.iter().position(|b| matches!(b, b'?' | b'#')) {
        Some(end) => &path[..end],
        None => path,
    }
}

/// The override, or `None` when its unit is not one Envoy defines a length for (UNKNOWN or a
/// number from a newer Envoy): such an override is ignored and the descriptor is decided as if
/// it had none.
fn parse_override(requests: u32, unit: i32) -> Option<LimitOverride> {
    let unit = RateLimitUnit::try_from(unit).ok()?;
    let seconds: u64 = match unit {
        RateLimitUnit::Second => 1,
        RateLimitUnit::Minute => 60,
        RateLimitUnit::Hour => 3_600,
        RateLimitUnit::Day => 86_400,
        RateLimitUnit::Week => 7 * 86_400,
        RateLimitUnit::Month => 30 * 86_400,
        RateLimitUnit::Year => 365 * 86_400,
        RateLimitUnit::Unknown => return None,
    };
    Some(LimitOverride {
        requests_per_unit: requests,
        unit,
        window: Duration::from_secs(seconds),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
        Entry, RateLimitOverride,
    };

    fn entry(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Entry {
        Entry {
            key: key.into(),
            value: value.into(),
        }
    }

    fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
        RateLimitDescriptor {
            entries: entries.iter().map(|(k, v)| entry(*k, *v)).collect(),
            ..Default::default()
        }
    }

    fn request(descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
        RateLimitRequest {
            domain: "edge".into(),
            descriptors,
            hits_addend: 0,
        }
    }

    #[test]
    fn extracts_tenant_path_and_method() {
        let req = request(vec![
            descriptor(&[
                ("tenant_id", "acme"),
                ("path", "/v1/x?y=1"),
                ("method", "GET"),
            ]),
            descriptor(&[("path", "/v1/x#top")]),
        ]);
        let parsed = parse_request(&req, &DescriptorKeys::default()).unwrap();
        assert_eq!(parsed[0].tenant_text, Some("acme"));
        assert_eq!(parsed[0].path.as_deref(), Some("/v1/x"), "cut at `?`");
        assert_eq!(parsed[0].method.as_deref(), Some("GET"));
        assert_eq!(parsed[0].hits, 1);
        // No tenant entry: the anonymous tenant, so leaving the header out escapes nothing.
        assert_eq!(parsed[1].tenant, b"anonymous");
        assert_eq!(parsed[1].path.as_deref(), Some("/v1/x"), "cut at `#`");
        assert_eq!(parsed[1].method, None);
    }

    #[test]
    fn entry_keys_are_configurable() {
        let keys = DescriptorKeys {
            tenant: "org".into(),
            path: ":path".into(),
            method: ":method".into(),
        };
        let req = request(vec![descriptor(&[
            ("org", "acme"),
            (":path", "/a"),
            (":method", "PUT"),
        ])]);
        let parsed = parse_request(&req, &keys).unwrap();
        assert_eq!(
            (
                parsed[0].tenant_text,
                parsed[0].path.as_deref(),
                parsed[0].method.as_deref()
            ),
            (Some("acme"), Some("/a"), Some("PUT"))
        );
    }

    #[test]
    fn hits_addend_precedence() {
        let mut with_own = descriptor(&[("tenant_id", "a")]);
        with_own.hits_addend = Some(7);
        let mut check_only = descriptor(&[("tenant_id", "a")]);
        check_only.hits_addend = Some(0);
        let mut huge = descriptor(&[("tenant_id", "a")]);
        huge.hits_addend = Some(u64::MAX);
        let plain = descriptor(&[("tenant_id", "a")]);
        let mut req = request(vec![with_own, check_only, huge, plain]);
        req.hits_addend = 3;
        let hits: Vec<u64> = parse_request(&req, &DescriptorKeys::default())
            .unwrap()
            .iter()
            .map(|d| d.hits)
            .collect();
        assert_eq!(hits, [7, 0, u64::MAX, 3]);
    }

    #[test]
    fn limit_override_takes_envoy_units_and_ignores_unknown_ones() {
        let with_unit = |unit: i32| {
            let mut d = descriptor(&[("tenant_id", "a")]);
            d.limit = Some(RateLimitOverride {
                requests_per_unit: 10,
                unit,
            });
            request(vec![d])
        };
        let hour = with_unit(RateLimitUnit::Hour as i32);
        let parsed = parse_request(&hour, &DescriptorKeys::default()).unwrap();
        let limit = parsed[0].limit_override.unwrap();
        assert_eq!(
            (limit.requests_per_unit, limit.window),
            (10, Duration::from_secs(3600))
        );
        for unit in [RateLimitUnit::Unknown as i32, 99] {
            let req = with_unit(unit);
            let parsed = parse_request(&req, &DescriptorKeys::default()).unwrap();
            assert_eq!(parsed[0].limit_override, None, "unit {unit}");
        }
    }

    #[test]
    fn what_a_client_sends_is_never_invalid() {
        let long = "x".repeat(64 * 1024);
        let long_path = format!("/v1/orders?pad={long}");
        let mut huge_override = descriptor(&[("tenant_id", "a")]);
        huge_override.limit = Some(RateLimitOverride {
            requests_per_unit: u32::MAX,
            unit: RateLimitUnit::Second as i32,
        });
        let mut odd_bytes = descriptor(&[]);
        odd_bytes.entries = vec![
            entry("tenant_id", b"ac\xffme".to_vec()),
            entry("path", b"/v1/\xc3(/x".to_vec()),
            entry("method", b"G\x80T".to_vec()),
        ];
        let mut big_addend = request(vec![descriptor(&[("tenant_id", "a")])]);
        big_addend.hits_addend = u32::MAX;
        let cases = [
            request(vec![descriptor(&[("tenant_id", &long)])]),
            request(vec![descriptor(&[("path", &long_path)])]),
            request(vec![huge_override]),
            request(vec![odd_bytes]),
            big_addend,
        ];
        for req in &cases {
            let parsed = parse_request(req, &DescriptorKeys::default());
            assert!(parsed.is_ok(), "{parsed:?}");
        }
        let parsed = parse_request(&cases[1], &DescriptorKeys::default()).unwrap();
        assert_eq!(parsed[0].path.as_deref(), Some("/v1/orders"));
        let parsed = parse_request(&cases[3], &DescriptorKeys::default()).unwrap();
        assert_eq!(parsed[0].tenant, b"ac\xffme", "the tenant's exact bytes");
        assert_eq!(parsed[0].tenant_text, None);
        assert_eq!(parsed[0].path.as_deref(), Some("/v1/\u{fffd}(/x"));
        assert_eq!(parsed[0].method.as_deref(), Some("G\u{fffd}T"));
    }

    #[test]
    fn what_envoys_configuration_controls_is_named() {
        let mut no_domain = request(vec![descriptor(&[("a", "b")])]);
        no_domain.domain.clear();
        let cases = [
            (no_domain, "domain must not be empty"),
            (request(vec![]), "descriptors must not be empty"),
            (
                request(vec![descriptor(&[]); 1]),
                "descriptors[0] has no entries",
            ),
            (
                request(vec![descriptor(&[("a", "b")]); 65]),
                "at most 64 descriptors",
            ),
            (
                request(vec![descriptor(&[("a", "b"); 65])]),
                "at most 64 are allowed",
            ),
            (
                request(vec![descriptor(&[("a", "b")]), descriptor(&[("", "b")])]),
                "descriptors[1].entries[0].key must not be empty",
            ),
        ];
        for (req, needle) in cases {
            let err = parse_request(&req, &DescriptorKeys::default()).unwrap_err();
            assert!(err.0.contains(needle), "{needle}: {err}");
        }
    }
}
