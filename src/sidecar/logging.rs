//! Logging setup for every command: tracing to stderr through
//! [`logbuf`](crate::sidecar::logbuf), filtered by `MESHGUARD_LOG`.

use crate::sidecar::logbuf::BatchedStderr;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Log format: human-readable text for local runs, JSON for containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// `--log-format` after a subcommand that logs (`meshguard run
/// --log-format json`); the one before the subcommand and
/// `MESHGUARD_LOG_FORMAT` are read by `main`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LogArgs {
    /// Log format: human-readable text for local runs, JSON for containers
    /// [env: MESHGUARD_LOG_FORMAT] [default: text].
    #[arg(long = "log-format", value_enum)]
    pub format: Option<LogFormat>,
}

/// `MESHGUARD_LOG` could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error("MESHGUARD_LOG={spec:?}: {why}; expected a level (off, error, warn, info, debug, trace) or target=level pairs")]
pub struct LogError {
    spec: String,
    why: String,
}

/// The filter `MESHGUARD_LOG` asks for (`info` if unset or blank): a
/// level, or `target=level` pairs such as `info,meshguard::audit=warn`.
///
/// Every directive is checked before `Targets` sees it: `Targets` reads a
/// bare word as a target name, so a misspelt level (`verbose`, `debugg`)
/// would silently switch every log line, audit lines included, off.
pub fn filter_from(spec: Option<&str>) -> Result<Targets, LogError> {
    let Some(spec) = spec.filter(|s| !s.trim().is_empty()) else {
        return Ok(Targets::new().with_default(LevelFilter::INFO));
    };
    let refuse = |why: String| LogError {
        spec: spec.to_owned(),
        why,
    };
    for directive in spec.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        check_directive(directive).map_err(refuse)?;
    }
    spec.parse().map_err(|e| refuse(format!("{e}")))
}

/// A bare level, or `target=level` with a non-empty target and a level.
fn check_directive(directive: &str) -> Result<(), String> {
    let (target, level) = match directive.split_once('=') {
        Some((target, level)) => (Some(target.trim()), level.trim()),
        None => (None, directive),
    };
    if target == Some("") {
        return Err(format!("{directive:?} has no target before '='"));
    }
    // LevelFilter reads "" as `error`; an empty level is a typo, not a choice.
    if level.is_empty() || level.parse::<LevelFilter>().is_err() {
        return Err(format!("{level:?} is not a level"));
    }
    Ok(())
}

/// Colours only for a person at a terminal: never into files or pipes,
/// and never when `NO_COLOR` is set to anything but "" (no-color.org).
fn use_colour() -> bool {
    use std::io::IsTerminal;
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color && std::io::stderr().is_terminal()
}

/// Installs the global subscriber: stderr, filtered by `MESHGUARD_LOG`.
pub fn init(format: LogFormat) -> Result<(), LogError> {
    let filter = filter_from(std::env::var("MESHGUARD_LOG").ok().as_deref())?;
    // The filter decides; the builder's own level cap is lifted.
    let builder = tracing_subscriber::fmt()
        .with_max_level(LevelFilter::TRACE)
        .with_ansi(use_colour())
        .with_writer(BatchedStderr);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .finish()
            .with(filter)
            .init(),
        LogFormat::Text => builder.finish().with(filter).init(),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::filter_from;

    #[test]
    fn levels_and_target_level_pairs_are_accepted() {
        for ok in [
            "warn",
            "INFO",
            "off",
            " info , meshguard::audit=warn",
            "meshguard=debug,",
        ] {
            assert!(filter_from(Some(ok)).is_ok(), "{ok}");
        }
        assert!(filter_from(None).is_ok());
        assert!(filter_from(Some("  ")).is_ok());
    }

    #[test]
    fn a_word_that_is_not_a_level_is_refused_not_read_as_a_target() {
        for (bad, why) in [
            ("verbose", "\"verbose\" is not a level"),
            ("debugg", "\"debugg\" is not a level"),
            ("info,meshguard=loud", "\"loud\" is not a level"),
            ("=info", "has no target"),
            ("meshguard=", "\"\" is not a level"),
        ] {
            let err = filter_from(Some(bad)).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
            assert!(err.starts_with(&format!("MESHGUARD_LOG={bad:?}")), "{err}");
        }
    }
}
