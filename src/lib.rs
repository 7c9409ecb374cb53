pub mod admin;
pub mod domain;
pub mod proto;
