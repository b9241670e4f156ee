//! Config parsing on arbitrary YAML: never a panic; an accepted config is
//! valid, and its serialised form (what `/config` shows) loads back to the
//! same config.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use meshguard::sidecar::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let base = Path::new("/etc/meshguard");
    let config = match Config::from_yaml(text, "fuzz.yaml", base) {
        Ok(config) => config,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    assert!(config.validate().is_ok());
    let yaml = serde_norway::to_string(&config).expect("a config serialises");
    let again = Config::from_yaml(&yaml, "again.yaml", base)
        .unwrap_or_else(|e| panic!("serialised config does not load: {e}\n{yaml}"));
    assert_eq!(
        serde_norway::to_string(&again).expect("serialises"),
        yaml,
        "config changed through a round trip"
    );
});
