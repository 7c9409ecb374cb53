//! One `ShouldRateLimit` call with the layer's own deadline: descriptors in, a [`Verdict`] or the
//! reason there is none ([`CheckFailure`]) out. Never waits longer than the deadline, whatever
//! Sluice or the network does.

use std::{fmt, time::Duration};

use tonic::{Code, transport::Channel};

use crate::{
    descriptor::Descriptor,
    proto::envoy::{
        extensions::common::ratelimit::v3::{RateLimitDescriptor, rate_limit_descriptor::Entry},
        service::ratelimit::v3::{
            RateLimitRequest, rate_limit_service_client::RateLimitServiceClient,
        },
    },
    verdict::Verdict,
};

/// Why a check gave no verdict; the layer then allows or denies as its
/// [`FailureMode`](crate::FailureMode) says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CheckFailure {
    /// No answer within the deadline: Sluice slow, frozen, or a connection still being made.
    Timeout,
    /// Sluice unreachable (connection refused or lost), or it answered UNAVAILABLE (its own
    /// counter failed and it runs with `SLUICE_FAILURE_MODE=unavailable`).
    Unavailable,
    /// Sluice refused the request as malformed (INVALID_ARGUMENT): the layer's descriptors break
    /// its rules (more than 64 descriptors or entries, an empty key). A configuration error.
    Rejected,
    /// Any other error, or an answer without a verdict.
    Error,
}

impl CheckFailure {
    /// A short stable name for logs and metric labels: `timeout`, `unavailable`, `rejected`,
    /// `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckFailure::Timeout => "timeout",
            CheckFailure::Unavailable => "unavailable",
            CheckFailure::Rejected => "rejected",
            CheckFailure::Error => "error",
        }
    }

    fn of_status(code: Code) -> CheckFailure {
        match code {
            Code::DeadlineExceeded | Code::Cancelled => CheckFailure::Timeout,
            Code::Unavailable => CheckFailure::Unavailable,
            Code::InvalidArgument => CheckFailure::Rejected,
            _ => CheckFailure::Error,
        }
    }
}

impl fmt::Display for CheckFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A check that failed, with what Sluice or the transport said (for the log only).
#[derive(Debug)]
pub(crate) struct Failed {
    pub(crate) failure: CheckFailure,
    pub(crate) detail: String,
}

/// Sluice's client with the domain and deadline every check uses.
#[derive(Clone)]
pub(crate) struct Checker {
    client: RateLimitServiceClient<Channel>,
    domain: String,
    deadline: Duration,
}

impl Checker {
    pub(crate) fn new(channel: Channel, domain: String, deadline: Duration) -> Checker {
        Checker {
            client: RateLimitServiceClient::new(channel),
            domain,
            deadline,
        }
    }

    /// Asks Sluice about `descriptors`, counting `hits_addend` hits (`None`: one).
    pub(crate) async fn check(
        &self,
        descriptors: Vec<Descriptor>,
        hits_addend: Option<u32>,
    ) -> Result<Verdict, Failed> {
        let message = RateLimitRequest {
            domain: self.domain.clone(),
            descriptors: descriptors.into_iter().map(to_proto).collect(),
            hits_addend: hits_addend.unwrap_or(0),
        };
        let mut request = tonic::Request::new(message);
        // Sluice sees how long the caller waits (`grpc-timeout`).
        request.set_timeout(self.deadline);
        let mut client = self.client.clone();
        let answer = tokio::time::timeout(self.deadline, client.should_rate_limit(request)).await;
        match answer {
            Err(_) => Err(Failed {
                failure: CheckFailure::Timeout,
                detail: format!("no answer within {:?}", self.deadline),
            }),
            Ok(Err(status)) => Err(Failed {
                failure: CheckFailure::of_status(status.code()),
                detail: format!("{:?}: {}", status.code(), status.message()),
            }),
            Ok(Ok(response)) => Verdict::from_response(response.get_ref()).ok_or(Failed {
                failure: CheckFailure::Error,
                detail: "the answer's overall code was UNKNOWN".to_owned(),
            }),
        }
    }
}

fn to_proto(descriptor: Descriptor) -> RateLimitDescriptor {
    let (entries, hits_addend) = descriptor.into_parts();
    RateLimitDescriptor {
        entries: entries
            .into_iter()
            .map(|(key, value)| Entry { key, value })
            .collect(),
        limit: None,
        hits_addend: hits_addend.map(u64::from),
    }
}
