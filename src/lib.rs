//! meshguard: a service-mesh sidecar that makes the trust boundary explicit.
#![forbid(unsafe_code)]

pub mod identity;
