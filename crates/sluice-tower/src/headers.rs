//! The rate-limit response headers: Envoy's `x-ratelimit-*` (its `DRAFT_VERSION_03` format, so a
//! client sees the same headers behind the layer as behind Envoy), the IETF draft's
//! `RateLimit-Limit` / `RateLimit-Remaining` / `RateLimit-Reset`, and `Retry-After` on a denial.
//!
//! Both families carry the same values, from the limit with the fewest requests remaining:
//! the limit, followed by one quota policy per matched limit whose window has a unit
//! (`10, 10;w=60;name="<policy id>"`); the requests remaining; and the seconds until the oldest
//! counted hit leaves the window. Seconds are rounded **up** (Envoy truncates): a client that waits
//! the advertised time is never early.

use std::{fmt::Write, time::Duration};

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::verdict::Limits;

pub(crate) const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
pub(crate) const X_RATELIMIT_REMAINING: HeaderName =
    HeaderName::from_static("x-ratelimit-remaining");
pub(crate) const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
pub(crate) const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
pub(crate) const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
pub(crate) const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// Which responses carry the rate-limit headers. `Retry-After` is always on a denial.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ResponseHeaders {
    /// Allowed and denied responses (the default), as Envoy's `enable_x_ratelimit_headers` does.
    #[default]
    Always,
    /// Denied responses only.
    DeniedOnly,
    /// None.
    Never,
}

/// Writes both header families for `limits` into `headers`, replacing any already there; nothing
/// when no descriptor matched a limit.
pub(crate) fn insert_limit_headers(headers: &mut HeaderMap, limits: &Limits) {
    let Some(tightest) = limits.tightest() else {
        return;
    };
    let mut limit = tightest.max_requests.to_string();
    for policy in limits.all() {
        let Some(window) = policy.window_seconds else {
            continue;
        };
        let _ = write!(limit, ", {};w={window}", policy.max_requests);
        if !policy.name.is_empty() {
            let _ = write!(limit, ";name=\"{}\"", policy.name);
        }
    }
    let Ok(limit) = HeaderValue::try_from(limit) else {
        // A policy name with bytes a header cannot carry: send none rather than half.
        return;
    };
    let remaining = HeaderValue::from(tightest.remaining);
    let reset = HeaderValue::from(whole_seconds_up(tightest.reset));
    headers.insert(X_RATELIMIT_LIMIT, limit.clone());
    headers.insert(X_RATELIMIT_REMAINING, remaining.clone());
    headers.insert(X_RATELIMIT_RESET, reset.clone());
    headers.insert(RATELIMIT_LIMIT, limit);
    headers.insert(RATELIMIT_REMAINING, remaining);
    headers.insert(RATELIMIT_RESET, reset);
}

/// `Retry-After` in whole seconds, at least 1 (a denied client retrying at once would only be
/// denied again).
pub(crate) fn retry_after_value(wait: Duration) -> HeaderValue {
    HeaderValue::from(whole_seconds_up(wait).max(1))
}

/// `wait` in seconds, rounded up.
pub(crate) fn whole_seconds_up(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::envoy::service::ratelimit::v3::{
        RateLimitResponse,
        rate_limit_response::{Code, rate_limit::Unit},
    };
    use crate::verdict::{Verdict, tests::status};

    fn limits(
        statuses: Vec<
            crate::proto::envoy::service::ratelimit::v3::rate_limit_response::DescriptorStatus,
        >,
    ) -> Limits {
        let response = RateLimitResponse {
            overall_code: Code::Ok as i32,
            statuses,
            ..Default::default()
        };
        Verdict::from_response(&response).unwrap().limits().clone()
    }

    fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
        headers[name].to_str().unwrap()
    }

    #[test]
    fn headers_follow_envoys_format_from_the_tightest_limit() {
        let limits = limits(vec![
            status(Code::Ok, Some((1, Unit::Minute, "first")), 2, 3_000),
            status(Code::Ok, Some((4, Unit::Hour, "second")), 5, 6_000),
        ]);
        let mut headers = HeaderMap::new();
        insert_limit_headers(&mut headers, &limits);
        // The case Envoy's own tests use, with the same expected values.
        assert_eq!(
            header(&headers, "x-ratelimit-limit"),
            "1, 1;w=60;name=\"first\", 4;w=3600;name=\"second\""
        );
        assert_eq!(header(&headers, "x-ratelimit-remaining"), "2");
        assert_eq!(header(&headers, "x-ratelimit-reset"), "3");
        for (draft, envoy) in [
            ("ratelimit-limit", "x-ratelimit-limit"),
            ("ratelimit-remaining", "x-ratelimit-remaining"),
            ("ratelimit-reset", "x-ratelimit-reset"),
        ] {
            assert_eq!(headers[draft], headers[envoy]);
        }
    }

    #[test]
    fn a_window_without_a_unit_and_an_unnamed_limit_are_written_as_envoy_does() {
        let limits = limits(vec![
            status(Code::Ok, Some((7, Unit::Unknown, "p")), 6, 1_500),
            status(Code::Ok, Some((9, Unit::Second, "")), 8, 0),
        ]);
        let mut headers = HeaderMap::new();
        insert_limit_headers(&mut headers, &limits);
        assert_eq!(header(&headers, "x-ratelimit-limit"), "7, 9;w=1");
        // 1.5 s rounds up.
        assert_eq!(header(&headers, "x-ratelimit-reset"), "2");
    }

    #[test]
    fn no_matched_limit_writes_no_header() {
        let mut headers = HeaderMap::new();
        insert_limit_headers(&mut headers, &limits(vec![status(Code::Ok, None, 0, 0)]));
        assert!(headers.is_empty());
    }

    #[test]
    fn retry_after_is_whole_seconds_up_and_never_zero() {
        assert_eq!(retry_after_value(Duration::ZERO), "1");
        assert_eq!(retry_after_value(Duration::from_millis(1_001)), "2");
        assert_eq!(retry_after_value(Duration::from_secs(30)), "30");
    }
}
