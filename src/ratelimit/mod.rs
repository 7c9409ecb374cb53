//! The hot path: `ShouldRateLimit` → parse ([`request`]) → in-memory policy snapshot
//! ([`snapshot`]) → one counter call per tenant ([`counter`], behind the [`breaker`]) → response
//! ([`service`]); [`over_limit_cache`] answers certain denials without Redis. Nothing here imports the admin path or touches the database.

pub mod breaker;
pub mod counter;
pub mod explain;
pub mod keys;
pub mod over_limit_cache;
pub mod request;
pub mod service;
pub mod snapshot;
