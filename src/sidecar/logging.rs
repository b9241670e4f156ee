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

/// `MESHGUARD_LOG` could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error("MESHGUARD_LOG={spec:?}: expected a level (error, warn, info, debug, trace) or target=level pairs")]
pub struct LogError {
    spec: String,
    #[source]
    source: tracing_subscriber::filter::ParseError,
}

/// The filter `MESHGUARD_LOG` asks for (`info` if unset or blank): a
/// level, or `target=level` pairs such as `info,meshguard::audit=warn`.
pub fn filter_from(spec: Option<&str>) -> Result<Targets, LogError> {
    match spec {
        Some(spec) if !spec.trim().is_empty() => spec.parse().map_err(|source| LogError {
            spec: spec.to_owned(),
            source,
        }),
        _ => Ok("info".parse().expect("a valid filter")),
    }
}

/// Installs the global subscriber: stderr, filtered by `MESHGUARD_LOG`.
pub fn init(format: LogFormat) -> Result<(), LogError> {
    let filter = filter_from(std::env::var("MESHGUARD_LOG").ok().as_deref())?;
    // The filter decides; the builder's own level cap is lifted.
    let builder = tracing_subscriber::fmt()
        .with_max_level(LevelFilter::TRACE)
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
