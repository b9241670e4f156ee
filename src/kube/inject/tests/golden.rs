//! Golden files: `tests/golden/inject/NAME.in.yaml` is injected and
//! compared with `NAME.out.yaml` (or `NAME.err.txt` for an error) and the
//! report with `NAME.report.txt`. `UPDATE_GOLDEN=1` rewrites the expected
//! files; review every change by eye before committing it.
//!
//! A first line `# golden: ...` sets options: `mode=container`,
//! `shutdown-endpoint`, `uninject`.

use super::super::*;
use std::path::{Path, PathBuf};

pub(super) const TEST_IMAGE: &str = "ghcr.io/meshguard/meshguard:test";

pub(super) fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/inject")
}

pub(super) fn test_options() -> InjectOptions {
    InjectOptions {
        image: TEST_IMAGE.into(),
        ..InjectOptions::default()
    }
}

/// Options from the `# golden:` line, and whether to uninject.
fn options_for(input: &str) -> (InjectOptions, bool) {
    let mut opts = test_options();
    let mut uninject = false;
    if let Some(line) = input
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("# golden:"))
    {
        for word in line.split_whitespace() {
            match word {
                "mode=container" => opts.mode = SidecarMode::Container,
                "shutdown-endpoint" => opts.shutdown_endpoint = true,
                "uninject" => uninject = true,
                other => panic!("unknown golden option {other:?}"),
            }
        }
    }
    (opts, uninject)
}

pub(super) struct Case {
    pub name: String,
    pub input: String,
    pub uninject: bool,
    /// Ok(output yaml) or Err(error message).
    pub result: Result<String, String>,
    pub report: String,
}

pub(super) fn cases() -> Vec<Case> {
    let mut names: Vec<String> = std::fs::read_dir(golden_dir())
        .expect("golden directory")
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            Some(name.strip_suffix(".in.yaml")?.to_owned())
        })
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let input = std::fs::read_to_string(golden_dir().join(format!("{name}.in.yaml")))
                .expect("readable input");
            let (opts, uninject) = options_for(&input);
            let processed = if uninject {
                super::super::uninject(&input)
            } else {
                inject(&input, &opts)
            };
            let (result, report) = match processed {
                Ok(p) => {
                    let report = p
                        .reports
                        .iter()
                        .map(|r| describe(&name, r, uninject) + "\n")
                        .collect();
                    (Ok(p.yaml), report)
                }
                Err(e) => (Err(e.to_string()), String::new()),
            };
            Case {
                name,
                input,
                uninject,
                result,
                report,
            }
        })
        .collect()
}

/// Compares (or with UPDATE_GOLDEN, writes) one expected file.
fn check(path: &Path, actual: &str, update: bool, mismatches: &mut Vec<String>) {
    let expected = std::fs::read_to_string(path).ok();
    if expected.as_deref() == Some(actual) {
        return;
    }
    if update {
        std::fs::write(path, actual).expect("write golden");
        return;
    }
    mismatches.push(format!(
        "{}: differs (UPDATE_GOLDEN=1 rewrites it)\n--- expected\n{}\n--- actual\n{actual}",
        path.display(),
        expected.as_deref().unwrap_or("(missing)")
    ));
}

#[test]
fn golden_files() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let dir = golden_dir();
    let cases = cases();
    assert!(cases.len() >= 30, "golden cases missing: {}", cases.len());
    let mut mismatches = Vec::new();
    for case in &cases {
        let out = dir.join(format!("{}.out.yaml", case.name));
        let err = dir.join(format!("{}.err.txt", case.name));
        let report = dir.join(format!("{}.report.txt", case.name));
        match &case.result {
            Ok(yaml) => {
                check(&out, yaml, update, &mut mismatches);
                check(&report, &case.report, update, &mut mismatches);
                assert!(
                    !err.exists() || update,
                    "{}: stale {}",
                    case.name,
                    err.display()
                );
                if update {
                    let _ = std::fs::remove_file(&err);
                }
            }
            Err(message) => {
                check(&err, &format!("{message}\n"), update, &mut mismatches);
                if update {
                    let _ = std::fs::remove_file(&out);
                    let _ = std::fs::remove_file(&report);
                }
            }
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n\n"));
}

#[test]
fn injecting_any_golden_output_again_changes_no_byte() {
    for case in cases() {
        let (Ok(yaml), false) = (&case.result, case.uninject) else {
            continue;
        };
        let (opts, _) = options_for(&case.input);
        let again = inject(yaml, &opts).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        assert_eq!(&again.yaml, yaml, "{}: second injection differs", case.name);
        for r in &again.reports {
            assert!(!r.changed, "{}: {r:?}", case.name);
            assert!(r.skipped.is_some(), "{}: {r:?} must be a skip", case.name);
        }
    }
}

/// Every document as a Value, with the same normalisation inject applies.
fn values(yaml: &str) -> Vec<serde_norway::Value> {
    use serde::Deserialize;
    serde_norway::Deserializer::from_str(yaml)
        .map(|d| {
            let mut v = serde_norway::Value::deserialize(d).expect("valid yaml");
            v.apply_merge().expect("merge");
            normalize_templates(&mut v);
            v
        })
        .filter(|v| !v.is_null())
        .collect()
}

#[test]
fn uninjecting_a_golden_output_gives_back_its_input() {
    for case in cases() {
        let (Ok(yaml), false) = (&case.result, case.uninject) else {
            continue;
        };
        if case.name.starts_with("reinject-") || case.name.starts_with("skip-already") {
            continue; // their input is itself injected
        }
        let undone = super::super::uninject(yaml).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        assert_eq!(
            values(&undone.yaml),
            values(&case.input),
            "{}: uninject(inject(x)) != x",
            case.name
        );
    }
}
