//! meshguard: a service-mesh sidecar that makes the trust boundary explicit.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod certs;
pub mod config;
pub mod demo;
pub mod headers;
pub mod identity;
pub mod pathnorm;
pub mod proxy;
pub mod tls;
pub mod policy;
