//! Sluice's answer, read once into what the layer needs: allowed or denied, and the limits that
//! applied ([`Limits`]) — from which the rate-limit headers, `Retry-After` and the gRPC error
//! details are written.

use std::time::Duration;

use crate::proto::envoy::service::ratelimit::v3::{
    RateLimitResponse,
    rate_limit_response::{Code, DescriptorStatus, rate_limit::Unit},
};

/// What Sluice decided about one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every enforcing descriptor was under its limit (its hits were counted).
    Allowed(Limits),
    /// At least one descriptor was over its limit (nothing was counted).
    Denied(Limits),
}

impl Verdict {
    /// Reads Sluice's response; `None` when its overall code is neither OK nor OVER_LIMIT (which
    /// Sluice never sends; Envoy would treat it as OK).
    pub(crate) fn from_response(response: &RateLimitResponse) -> Option<Verdict> {
        let limits = Limits::from_statuses(&response.statuses);
        match Code::try_from(response.overall_code).ok()? {
            Code::Ok => Some(Verdict::Allowed(limits)),
            Code::OverLimit => Some(Verdict::Denied(limits)),
            Code::Unknown => None,
        }
    }

    /// The limits that applied.
    pub fn limits(&self) -> &Limits {
        match self {
            Verdict::Allowed(limits) | Verdict::Denied(limits) => limits,
        }
    }
}

/// One descriptor's limit as Sluice reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limit {
    /// The limit (`requests_per_unit`).
    pub max_requests: u32,
    /// The window in seconds when Sluice could name it as a unit (1 s, 1 min, 1 h, 1 day, 1 week,
    /// 30 days, 365 days); `None` for other windows, which the RLS API cannot express.
    pub window_seconds: Option<u32>,
    /// The policy's id (`current_limit.name`); empty for a descriptor's own override.
    pub name: String,
    /// Requests left in the window after this one.
    pub remaining: u32,
    /// Until the oldest counted hit leaves the window.
    pub reset: Duration,
    /// Whether this descriptor was over its limit.
    pub over_limit: bool,
}

/// The limits of every matched descriptor, in request order (unmatched descriptors have none).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    limits: Vec<Limit>,
}

impl Limits {
    fn from_statuses(statuses: &[DescriptorStatus]) -> Limits {
        let limits = statuses
            .iter()
            .filter_map(|status| {
                let current = status.current_limit.as_ref()?;
                let reset = status
                    .duration_until_reset
                    .and_then(|d| Duration::try_from(d).ok())
                    .unwrap_or_default();
                Some(Limit {
                    max_requests: current.requests_per_unit,
                    window_seconds: Unit::try_from(current.unit).ok().and_then(unit_seconds),
                    name: current.name.clone(),
                    remaining: status.limit_remaining,
                    reset,
                    over_limit: status.code == Code::OverLimit as i32,
                })
            })
            .collect();
        Limits { limits }
    }

    /// Every matched descriptor's limit, in request order.
    pub fn all(&self) -> &[Limit] {
        &self.limits
    }

    /// The limit with the fewest requests remaining (the first of equals), as Envoy picks it for
    /// its `x-ratelimit-*` headers; `None` when no descriptor matched a limit.
    pub fn tightest(&self) -> Option<&Limit> {
        self.limits.iter().reduce(|tightest, limit| {
            if limit.remaining < tightest.remaining {
                limit
            } else {
                tightest
            }
        })
    }

    /// How long a denied request should wait before trying again: until every limit it was over
    /// has room again, as far as Sluice can tell (the latest reset among them); `None` when none
    /// was over.
    pub fn retry_after(&self) -> Option<Duration> {
        self.limits
            .iter()
            .filter(|limit| limit.over_limit)
            .map(|limit| limit.reset)
            .max()
    }
}

fn unit_seconds(unit: Unit) -> Option<u32> {
    match unit {
        Unit::Second => Some(1),
        Unit::Minute => Some(60),
        Unit::Hour => Some(3_600),
        Unit::Day => Some(86_400),
        Unit::Week => Some(604_800),
        Unit::Month => Some(2_592_000),
        Unit::Year => Some(31_536_000),
        Unit::Unknown => None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::proto::envoy::service::ratelimit::v3::rate_limit_response::RateLimit;

    pub(crate) fn status(
        code: Code,
        limit: Option<(u32, Unit, &str)>,
        remaining: u32,
        reset_ms: u64,
    ) -> DescriptorStatus {
        DescriptorStatus {
            code: code as i32,
            current_limit: limit.map(|(max, unit, name)| RateLimit {
                name: name.into(),
                requests_per_unit: max,
                unit: unit as i32,
            }),
            limit_remaining: remaining,
            duration_until_reset: Some(
                prost_types::Duration::try_from(Duration::from_millis(reset_ms)).unwrap(),
            ),
            quota: None,
        }
    }

    fn response(code: Code, statuses: Vec<DescriptorStatus>) -> RateLimitResponse {
        RateLimitResponse {
            overall_code: code as i32,
            statuses,
            ..Default::default()
        }
    }

    #[test]
    fn an_unknown_overall_code_is_no_verdict() {
        assert_eq!(
            Verdict::from_response(&response(Code::Unknown, vec![])),
            None
        );
    }

    #[test]
    fn unmatched_descriptors_carry_no_limit() {
        let verdict = Verdict::from_response(&response(
            Code::Ok,
            vec![
                status(Code::Ok, None, 0, 0),
                status(Code::Ok, Some((10, Unit::Minute, "p1")), 4, 30_000),
            ],
        ))
        .unwrap();
        assert_eq!(verdict.limits().all().len(), 1);
        assert_eq!(verdict.limits().all()[0].window_seconds, Some(60));
    }

    #[test]
    fn the_tightest_limit_is_the_first_with_the_fewest_remaining() {
        let verdict = Verdict::from_response(&response(
            Code::Ok,
            vec![
                status(Code::Ok, Some((100, Unit::Hour, "a")), 7, 1_000),
                status(Code::Ok, Some((10, Unit::Unknown, "b")), 3, 2_000),
                status(Code::Ok, Some((5, Unit::Second, "c")), 3, 3_000),
            ],
        ))
        .unwrap();
        let tightest = verdict.limits().tightest().unwrap();
        assert_eq!(
            (tightest.name.as_str(), tightest.window_seconds),
            ("b", None)
        );
    }

    #[test]
    fn retry_after_waits_for_every_limit_that_was_over() {
        let verdict = Verdict::from_response(&response(
            Code::OverLimit,
            vec![
                status(Code::OverLimit, Some((5, Unit::Second, "a")), 0, 400),
                status(Code::Ok, Some((50, Unit::Minute, "b")), 0, 59_000),
                status(Code::OverLimit, Some((9, Unit::Minute, "c")), 0, 12_500),
            ],
        ))
        .unwrap();
        assert!(matches!(verdict, Verdict::Denied(_)));
        assert_eq!(
            verdict.limits().retry_after(),
            Some(Duration::from_millis(12_500))
        );
    }
}
