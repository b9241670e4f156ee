//! meshguard: a service-mesh sidecar that makes the trust boundary explicit.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod audit;
pub mod certs;
pub mod config;
pub mod demo;
pub mod headers;
pub mod identity;
pub mod inject;
pub mod iptables;
pub mod logbuf;
pub mod metrics;
pub mod pathnorm;
pub mod policy;
pub mod probe;
pub mod proxy;
pub mod reload;
pub mod tls;
