//! Kubernetes tooling: `meshguard inject` and its admission webhook, the
//! `init-iptables` capture, and the probe forwarder that serves kubelet's
//! probes of an injected pod.

pub mod inject;
pub mod iptables;
pub mod probe;
pub mod run;
