//! meshguard: a service-mesh sidecar that makes the trust boundary explicit.
#![forbid(unsafe_code)]

pub mod certs;
pub mod config;
pub mod identity;
pub mod tls;
