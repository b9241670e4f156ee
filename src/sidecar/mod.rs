//! The sidecar runtime: everything that runs beside a workload. Nothing here
//! depends on the Kubernetes or developer tooling.

pub mod admin;
pub mod app;
pub mod assertion;
pub mod audit;
pub mod config;
pub mod egress;
pub mod headers;
pub mod identity;
pub mod jwt;
pub mod limits;
pub mod logbuf;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod pathnorm;
pub mod policy;
pub mod proxy;
pub mod reload;
pub mod resident;
pub mod runtime;
pub mod tls;
pub mod webhook;
pub mod workers;
pub mod workload_api;
