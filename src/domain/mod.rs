//! Domain types shared by the hot path and the admin path. Each is built only by parsing, so a
//! value of one of these types is valid by construction; proto types never get past the services.

pub mod endpoint_pattern;
pub mod policy;
pub mod tenant;

pub use endpoint_pattern::{EndpointPattern, PatternSet, Specificity};
pub use policy::{FieldViolation, Limits, NewPolicy, Policy, PolicyId, PolicyPatch, PolicyUpdate};
pub use tenant::{PolicyTenant, TenantId, TenantScope};
