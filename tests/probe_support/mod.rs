//! Helpers of tests/probes.rs: the apps that get probed, and the
//! forwarder started and called as kubelet calls it.

pub mod apps;
pub mod harness;
