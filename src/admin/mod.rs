//! The admin path: JWT → TenantScope → policy store.

pub mod auth;
