//! The admin path's one error type and its one mapping to `tonic::Status`, with the stable
//! `google.rpc.ErrorInfo` reasons of SPEC §4 and `google.rpc.BadRequest` field violations. The
//! JWT interceptor's refusals ([`AuthError`]) come through here too.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::auth::AuthError;
use crate::{domain::FieldViolation, store::StoreError, telemetry::error_chain};

/// `google.rpc.ErrorInfo.domain` of every Sluice error.
pub use crate::grpc_codec::ERROR_DOMAIN;

/// Why an admin RPC failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("invalid policy request")]
    Invalid(Vec<FieldViolation>),
    #[error("policy not found")]
    NotFound,
    #[error("tenant {tenant} already has a policy for endpoint pattern {pattern:?}")]
    Conflict { tenant: String, pattern: String },
    #[error(
        "etag {given:?} does not match the policy's current etag {current:?}; read it again and retry"
    )]
    EtagMismatch { given: String, current: String },
    #[error(
        "tenant {tenant} already has {limit} policies, the most SLUICE_MAX_POLICIES_PER_TENANT \
         allows; delete one before creating another"
    )]
    PolicyLimit { tenant: String, limit: u32 },
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("policy store unavailable")]
    Unavailable(#[source] StoreError),
}

impl AdminError {
    /// A single invalid field.
    pub fn invalid(field: &str, description: impl Into<String>) -> Self {
        Self::Invalid(vec![FieldViolation::new(field, description)])
    }

    /// The stable `ErrorInfo.reason` for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "INVALID_RATE_POLICY",
            Self::NotFound => "RATE_POLICY_NOT_FOUND",
            Self::Conflict { .. } => "RATE_POLICY_CONFLICT",
            Self::EtagMismatch { .. } => "ETAG_MISMATCH",
            Self::PolicyLimit { .. } => "RATE_POLICY_LIMIT",
            Self::PermissionDenied(_) => "PERMISSION_DENIED",
            Self::Unauthenticated(_) => "UNAUTHENTICATED",
            Self::Unavailable(_) => "STORE_UNAVAILABLE",
        }
    }

    fn code(&self) -> Code {
        match self {
            Self::Invalid(_) => Code::InvalidArgument,
            Self::NotFound => Code::NotFound,
            Self::Conflict { .. } => Code::AlreadyExists,
            Self::EtagMismatch { .. } => Code::Aborted,
            Self::PolicyLimit { .. } => Code::ResourceExhausted,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::Unavailable(_) => Code::Unavailable,
        }
    }

    fn message(&self) -> String {
        match self {
            Self::Invalid(violations) => {
                let fields: Vec<String> = violations
                    .iter()
                    .map(|v| format!("{}: {}", v.field, v.description))
                    .collect();
                format!("invalid request: {}", fields.join("; "))
            }
            Self::Unavailable(_) => "the policy store is unavailable; try again shortly".to_owned(),
            other => other.to_string(),
        }
    }

    /// `ErrorInfo.metadata`: the numbers a script needs to act on the error without parsing
    /// the message.
    fn metadata(&self) -> HashMap<String, String> {
        match self {
            Self::PolicyLimit { tenant, limit } => HashMap::from([
                ("tenant_id".to_owned(), tenant.clone()),
                ("limit".to_owned(), limit.to_string()),
            ]),
            _ => HashMap::new(),
        }
    }
}

impl From<StoreError> for AdminError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound => Self::NotFound,
            StoreError::Conflict { tenant, pattern } => Self::Conflict { tenant, pattern },
            StoreError::EtagMismatch { given, current } => Self::EtagMismatch { given, current },
            StoreError::PolicyLimit { tenant, limit } => Self::PolicyLimit { tenant, limit },
            StoreError::Invalid(violations) => Self::Invalid(violations),
            other @ (StoreError::Unavailable(_)
            | StoreError::TimedOut(_)
            | StoreError::Corrupt { .. }) => Self::Unavailable(other),
        }
    }
}

impl From<AuthError> for AdminError {
    /// A token that verifies but names the reserved tenant is a permission problem; every other
    /// refusal means the caller is not authenticated.
    fn from(err: AuthError) -> Self {
        match err {
            AuthError::Scope(_) => Self::PermissionDenied(err.to_string()),
            other => Self::Unauthenticated(other.to_string()),
        }
    }
}

impl From<AuthError> for Status {
    fn from(err: AuthError) -> Self {
        AdminError::from(err).into()
    }
}

impl From<AdminError> for Status {
    fn from(err: AdminError) -> Self {
        if let AdminError::Unavailable(source) = &err {
            // The client gets a generic message; the cause chain stays in our logs.
            tracing::error!(error = %error_chain(source), "policy store failed");
        }
        let mut details = ErrorDetails::new();
        details.set_error_info(err.reason(), ERROR_DOMAIN, err.metadata());
        if let AdminError::Invalid(violations) = &err {
            for v in violations {
                details.add_bad_request_violation(v.field.clone(), v.description.clone());
            }
        }
        Status::with_error_details(err.code(), err.message(), details)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_carries_its_reason_and_code() {
        let cases = [
            (
                AdminError::invalid("policy.max_requests", "bad"),
                Code::InvalidArgument,
                "INVALID_RATE_POLICY",
            ),
            (
                AdminError::NotFound,
                Code::NotFound,
                "RATE_POLICY_NOT_FOUND",
            ),
            (
                AdminError::Conflict {
                    tenant: "a".into(),
                    pattern: "/x".into(),
                },
                Code::AlreadyExists,
                "RATE_POLICY_CONFLICT",
            ),
            (
                AdminError::EtagMismatch {
                    given: "1".into(),
                    current: "2".into(),
                },
                Code::Aborted,
                "ETAG_MISMATCH",
            ),
            (
                AdminError::PolicyLimit {
                    tenant: "acme".into(),
                    limit: 3,
                },
                Code::ResourceExhausted,
                "RATE_POLICY_LIMIT",
            ),
            (
                AdminError::PermissionDenied("no".into()),
                Code::PermissionDenied,
                "PERMISSION_DENIED",
            ),
            (
                AdminError::Unauthenticated("no".into()),
                Code::Unauthenticated,
                "UNAUTHENTICATED",
            ),
            (
                AdminError::Unavailable(StoreError::Unavailable(sqlx::Error::PoolTimedOut)),
                Code::Unavailable,
                "STORE_UNAVAILABLE",
            ),
        ];
        for (err, code, reason) in cases {
            let status = Status::from(err);
            assert_eq!(status.code(), code);
            let info = status.get_details_error_info().expect("error info");
            assert_eq!(info.reason, reason);
            assert_eq!(info.domain, ERROR_DOMAIN);
        }
    }

    #[test]
    fn invalid_lists_each_field_violation() {
        let status = Status::from(AdminError::Invalid(vec![
            FieldViolation::new(
                "policy.max_requests",
                "must be between 1 and 1000000, got 0",
            ),
            FieldViolation::new("policy.endpoint_pattern", "must start with '/'"),
        ]));
        let bad = status.get_details_bad_request().expect("bad request");
        let fields: Vec<&str> = bad
            .field_violations
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(fields, ["policy.max_requests", "policy.endpoint_pattern"]);
        assert!(
            status
                .message()
                .contains("policy.max_requests: must be between")
        );
    }

    #[test]
    fn unavailable_does_not_leak_internals() {
        let status = Status::from(AdminError::Unavailable(StoreError::Unavailable(
            sqlx::Error::Protocol("secret internals".into()),
        )));
        assert!(!status.message().contains("secret internals"));
    }
}
