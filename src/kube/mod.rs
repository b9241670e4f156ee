//! Kubernetes tooling: `meshguard run` (the sidecar with what an injected pod
//! adds to it), `meshguard inject` and its admission webhook, the
//! `init-iptables` capture, and the probe forwarder that serves kubelet's
//! probes of an injected pod. What the injector writes into a pod and the
//! others read there (ports, UID, environment, recorded probes) is owned
//! by [`contract`], so none of them imports another for it.

pub mod contract;
pub mod inject;
pub mod iptables;
pub mod probe;
pub mod run;
