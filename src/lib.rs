//! meshguard: a service-mesh sidecar that makes the trust boundary explicit.
//!
//! Three parts, each in its own folder; the arrows are the only allowed
//! dependencies (see ARCHITECTURE.md):
//!
//! - [`sidecar`]: the runtime that sits beside a workload (identity, mTLS,
//!   policy, the two proxy directions, metrics, audit, reload, admin).
//! - [`kube`] → `sidecar`: Kubernetes tooling (`meshguard run`, the injector and its admission
//!   webhook, the iptables capture, and the probe contract the injector
//!   writes and the sidecar's probe forwarder reads).
//! - [`dev`] → `sidecar`: developer tools (dev certificates, the demo, the
//!   echo app).
//!
//! One `unsafe` call exists, `madvise` in `sidecar::resident`, allowed there
//! alone with its safety argument; everywhere else unsafe code is an error.
#![deny(unsafe_code)]

pub mod dev;
pub mod kube;
pub mod sidecar;
