//! Running the plan: read the table, compute the commands, run them one by
//! one and stop at the first failure.

use super::rules::{plan, Family, IptablesCommand, NatState};
use super::{CaptureConfig, IptablesError};
use std::io::{self, Write};
use std::path::Path;

/// What a command did: enough to report a failure precisely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutcome {
    pub success: bool,
    /// "exit status 4", "killed by a signal"...
    pub status: String,
    pub stdout: String,
    pub stderr: String,
}

/// Runs a real program (the runner [`apply`] takes in production).
pub fn system_runner(program: &str, args: &[String]) -> io::Result<RunOutcome> {
    let out = std::process::Command::new(program).args(args).output()?;
    Ok(RunOutcome {
        success: out.status.success(),
        status: out.status.to_string(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    })
}

/// Whether this network namespace has IPv6: `/proc/net/if_inet6` exists
/// (it lists at least `::1` whenever IPv6 is on, and is absent when the
/// kernel has it disabled). With IPv6 on, an app can open IPv6 sockets,
/// so IPv6 must be captured too.
pub fn ipv6_enabled(proc_net: &Path) -> bool {
    proc_net.join("if_inet6").exists()
}

/// Configures capture for each family in `families`, logging every command
/// to `log` before running it. Returns the commands that ran.
pub fn apply<R>(
    config: &CaptureConfig,
    families: &[Family],
    mut runner: R,
    log: &mut dyn Write,
) -> Result<Vec<IptablesCommand>, IptablesError>
where
    R: FnMut(&str, &[String]) -> io::Result<RunOutcome>,
{
    config.validate()?;
    let mut ran = Vec::new();
    for &family in families {
        let program = family.program();
        let list = vec!["-t".to_owned(), "nat".to_owned(), "-S".to_owned()];
        let listed = match runner(program, &list) {
            Ok(outcome) => outcome,
            Err(e) if family == Family::V6 && e.kind() == io::ErrorKind::NotFound => {
                return Err(IptablesError::Ip6tablesMissing {
                    reason: "no ip6tables program".into(),
                })
            }
            Err(source) => {
                return Err(IptablesError::Spawn {
                    program: program.to_owned(),
                    source,
                })
            }
        };
        if !listed.success {
            // Most often the kernel lacks the ip6 nat table; for IPv6 say
            // so in the terms of the guarantee we cannot give.
            let reason = format!("`{program} -t nat -S` {}: {}", listed.status, listed.stderr);
            if family == Family::V6 {
                return Err(IptablesError::Ip6tablesMissing { reason });
            }
            return Err(IptablesError::Failed {
                command: format!("{program} -t nat -S"),
                status: listed.status,
                stderr: listed.stderr,
            });
        }
        let state = NatState::parse(&listed.stdout);
        for command in plan(config, family, &state) {
            // A failed write to the log must not stop capture setup.
            let _ = writeln!(log, "{command}");
            let outcome =
                runner(program, &command.args).map_err(|source| IptablesError::Spawn {
                    program: program.to_owned(),
                    source,
                })?;
            if !outcome.success {
                return Err(IptablesError::Failed {
                    command: command.to_string(),
                    status: outcome.status,
                    stderr: outcome.stderr,
                });
            }
            ran.push(command);
        }
    }
    Ok(ran)
}
