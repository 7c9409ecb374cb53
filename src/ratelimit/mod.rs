//! The hot path of `ShouldRateLimit`: from matched descriptors to a decision. This module owns the
//! counter step — one atomic, exact sliding-window check per tenant per request — in
//! [`counter`].

pub mod counter;
