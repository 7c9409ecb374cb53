//! Parses a `RateLimitRequest` into what the hot path decides on, enforcing the input bounds of
//! SPEC §3. Parsed descriptors borrow from the request, so parsing allocates only the list.

use std::time::Duration;

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
/// Longest descriptor key or value, in bytes.
pub const MAX_ENTRY_BYTES: usize = 1024;
/// Largest `hits_addend`, and largest `requests_per_unit` of a limit override.
pub const MAX_HITS: u64 = 1_000_000;

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
    /// The tenant entry's value, or `anonymous` when the descriptor has none.
    pub tenant: &'a str,
    pub path: Option<&'a str>,
    pub method: Option<&'a str>,
    /// Hits this descriptor adds; 0 checks without counting.
    pub hits: u32,
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

/// Checks the request's bounds and extracts every descriptor.
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
    if u64::from(request.hits_addend) > MAX_HITS {
        return Err(invalid(format!(
            "hits_addend must be at most {MAX_HITS}, got {}",
            request.hits_addend
        )));
    }
    let request_hits = match request.hits_addend {
        0 => 1,
        n => n,
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
    request_hits: u32,
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
        tenant: TenantId::ANONYMOUS,
        path: None,
        method: None,
        hits: request_hits,
        limit_override: None,
        index,
    };
    for (e, entry) in descriptor.entries.iter().enumerate() {
        if entry.key.len() > MAX_ENTRY_BYTES || entry.value.len() > MAX_ENTRY_BYTES {
            return Err(invalid(format!(
                "descriptors[{index}].entries[{e}]: keys and values must be at most {MAX_ENTRY_BYTES} bytes"
            )));
        }
        if entry.key == keys.tenant {
            if !entry.value.is_empty() {
                parsed.tenant = &entry.value;
            }
        } else if entry.key == keys.path {
            parsed.path = Some(&entry.value);
        } else if entry.key == keys.method {
            parsed.method = Some(entry.value.as_str()).filter(|m| !m.is_empty());
        }
    }
    if let Some(hits) = descriptor.hits_addend {
        if hits > MAX_HITS {
            return Err(invalid(format!(
                "descriptors[{index}].hits_addend must be at most {MAX_HITS}, got {hits}"
            )));
        }
        parsed.hits = hits as u32;
    }
    if let Some(limit) = &descriptor.limit {
        parsed.limit_override = Some(parse_override(index, limit.requests_per_unit, limit.unit)?);
    }
    Ok(parsed)
}

fn parse_override(index: usize, requests: u32, unit: i32) -> Result<LimitOverride, InvalidRequest> {
    if u64::from(requests) > MAX_HITS {
        return Err(invalid(format!(
            "descriptors[{index}].limit.requests_per_unit must be at most {MAX_HITS}, got {requests}"
        )));
    }
    let unit = RateLimitUnit::try_from(unit).unwrap_or(RateLimitUnit::Unknown);
    let seconds: u64 = match unit {
        RateLimitUnit::Second => 1,
        RateLimitUnit::Minute => 60,
        RateLimitUnit::Hour => 3_600,
        RateLimitUnit::Day => 86_400,
        RateLimitUnit::Week => 7 * 86_400,
        RateLimitUnit::Month => 30 * 86_400,
        RateLimitUnit::Year => 365 * 86_400,
        RateLimitUnit::Unknown => {
            return Err(invalid(format!(
                "descriptors[{index}].limit.unit must be SECOND, MINUTE, HOUR, DAY, WEEK, MONTH or YEAR"
            )));
        }
    };
    Ok(LimitOverride {
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

    fn entry(key: &str, value: &str) -> Entry {
        Entry {
            key: key.into(),
            value: value.into(),
        }
    }

    fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
        RateLimitDescriptor {
            entries: entries.iter().map(|(k, v)| entry(k, v)).collect(),
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
            descriptor(&[("path", "/v1/x")]),
        ]);
        let parsed = parse_request(&req, &DescriptorKeys::default()).unwrap();
        assert_eq!(parsed[0].tenant, "acme");
        assert_eq!(parsed[0].path, Some("/v1/x?y=1"));
        assert_eq!(parsed[0].method, Some("GET"));
        assert_eq!(parsed[0].hits, 1);
        // No tenant entry: the anonymous tenant, so leaving the header out escapes nothing.
        assert_eq!(parsed[1].tenant, "anonymous");
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
            (parsed[0].tenant, parsed[0].path, parsed[0].method),
            ("acme", Some("/a"), Some("PUT"))
        );
    }

    #[test]
    fn hits_addend_precedence() {
        let mut with_own = descriptor(&[("tenant_id", "a")]);
        with_own.hits_addend = Some(7);
        let mut check_only = descriptor(&[("tenant_id", "a")]);
        check_only.hits_addend = Some(0);
        let plain = descriptor(&[("tenant_id", "a")]);
        let mut req = request(vec![with_own, check_only, plain]);
        req.hits_addend = 3;
        let hits: Vec<u32> = parse_request(&req, &DescriptorKeys::default())
            .unwrap()
            .iter()
            .map(|d| d.hits)
            .collect();
        assert_eq!(hits, [7, 0, 3]);
    }

    #[test]
    fn limit_override_takes_envoy_units() {
        let mut d = descriptor(&[("tenant_id", "a")]);
        d.limit = Some(RateLimitOverride {
            requests_per_unit: 10,
            unit: RateLimitUnit::Hour as i32,
        });
        let req = request(vec![d]);
        let parsed = parse_request(&req, &DescriptorKeys::default()).unwrap();
        let limit = parsed[0].limit_override.unwrap();
        assert_eq!(
            (limit.requests_per_unit, limit.window),
            (10, Duration::from_secs(3600))
        );
    }

    #[test]
    fn bad_input_is_named() {
        let long = "x".repeat(MAX_ENTRY_BYTES + 1);
        let mut too_many_hits = descriptor(&[("tenant_id", "a")]);
        too_many_hits.hits_addend = Some(MAX_HITS + 1);
        let mut unknown_unit = descriptor(&[("tenant_id", "a")]);
        unknown_unit.limit = Some(RateLimitOverride {
            requests_per_unit: 1,
            unit: 0,
        });
        let mut no_domain = request(vec![descriptor(&[("a", "b")])]);
        no_domain.domain.clear();
        let mut big_addend = request(vec![descriptor(&[("a", "b")])]);
        big_addend.hits_addend = 1_000_001;
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
                request(vec![descriptor(&[("a", &long)])]),
                "at most 1024 bytes",
            ),
            (
                request(vec![descriptor(&[(&long, "b")])]),
                "at most 1024 bytes",
            ),
            (
                request(vec![too_many_hits]),
                "descriptors[0].hits_addend must be at most 1000000",
            ),
            (big_addend, "hits_addend must be at most 1000000"),
            (request(vec![unknown_unit]), "limit.unit must be"),
        ];
        for (req, needle) in cases {
            let err = parse_request(&req, &DescriptorKeys::default()).unwrap_err();
            assert!(err.0.contains(needle), "{needle}: {err}");
        }
    }
}
