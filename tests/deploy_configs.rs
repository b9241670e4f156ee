//! Every sidecar config and policy shipped inside deploy/ ConfigMaps must
//! be accepted by the same parsers the sidecar uses, so the examples never
//! drift from the code.

use serde::Deserialize;
use std::path::{Path, PathBuf};

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

#[test]
fn configmaps_in_deploy_hold_valid_configs_and_policies() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let mut files = Vec::new();
    yaml_files(&root, &mut files);
    let (mut configs, mut policies) = (0, 0);
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for doc in serde_norway::Deserializer::from_str(&text) {
            let Ok(value) = serde_norway::Value::deserialize(doc) else {
                continue;
            };
            if value.get("kind").and_then(|k| k.as_str()) != Some("ConfigMap") {
                continue;
            }
            let Some(data) = value.get("data").and_then(|d| d.as_mapping()) else {
                continue;
            };
            for (key, body) in data {
                let (Some(key), Some(body)) = (key.as_str(), body.as_str()) else {
                    continue;
                };
                let name = format!("{}#{key}", file.display());
                if key == "meshguard.yaml" {
                    meshguard::sidecar::config::Config::from_yaml(body, &name, Path::new("/"))
                        .unwrap_or_else(|e| panic!("{e}"));
                    configs += 1;
                } else if key == "policy.yaml" {
                    meshguard::sidecar::policy::Policy::from_yaml(body, &name)
                        .unwrap_or_else(|e| panic!("{e}"));
                    policies += 1;
                }
            }
        }
    }
    assert!(configs >= 2, "found {configs} sidecar configs");
    assert!(policies >= 1, "found {policies} policies");
}
