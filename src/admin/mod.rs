//! The admin path: JWT → [`TenantScope`](crate::domain::TenantScope) → policy store.
//!
//! - [`auth`]: the interceptor that verifies the bearer JWT and puts the caller's scope into the
//!   request.
//! - [`service`]: `sluice.admin.v1.PolicyService`, from proto messages to domain types to the store.
//! - [`page_token`]: signed keyset cursors for `ListPolicies`.
//! - [`error`]: the one mapping from admin failures to gRPC status codes and ErrorInfo reasons.

pub mod auth;
pub mod error;
pub mod page_token;
pub mod service;
