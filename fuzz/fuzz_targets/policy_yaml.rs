//! Policy parsing on arbitrary YAML: never a panic; an accepted policy's
//! patterns print back to themselves, lint runs, and evaluation (with its
//! source index) agrees with a linear scan of the rules for many requests.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshguard::sidecar::policy::{lint, PathPattern, Policy, Request, Source};
use meshguard_fuzz::{check_against_naive, probe_methods, probe_paths, probe_peers, probe_ports};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let policy = match Policy::from_yaml(text, "fuzz.yaml") {
        Ok(policy) => policy,
        Err(e) => {
            let _ = (e.to_string(), e.line());
            return;
        }
    };
    for rule in policy.rules() {
        for source in rule.sources() {
            assert_eq!(source.to_string().parse::<Source>().as_ref(), Ok(source));
        }
        for pattern in rule.paths().unwrap_or_default() {
            assert_eq!(
                pattern.to_string().parse::<PathPattern>().as_ref(),
                Ok(pattern)
            );
        }
    }
    for finding in lint(&policy, &["cluster.local"]) {
        let _ = format!("{finding:?}");
    }
    let (peers, paths, ports, methods) = (
        probe_peers(&policy),
        probe_paths(&policy),
        probe_ports(&policy),
        probe_methods(),
    );
    for peer in &peers {
        for path in &paths {
            for &port in &ports {
                for method in &methods {
                    let req = Request {
                        peer,
                        port,
                        method,
                        path,
                    };
                    check_against_naive(&policy, &req);
                }
            }
        }
    }
});
