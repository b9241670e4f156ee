//! The tokio runtime and the stop signals shared by every long-running
//! command (`run`, `webhook`, `demo`, `echo`).

/// The runtime could not be started.
#[derive(Debug, thiserror::Error)]
#[error("starting the async runtime")]
pub struct RuntimeError(#[source] std::io::Error);

/// A runtime builder with everything enabled; 1 worker (or 0) means a
/// single-threaded runtime.
pub fn builder(workers: usize) -> tokio::runtime::Builder {
    let mut builder = if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    builder.enable_all();
    builder
}

/// Builds a runtime (see [`builder`]).
pub fn build(workers: usize) -> Result<tokio::runtime::Runtime, RuntimeError> {
    finish(&mut builder(workers))
}

/// Builds a configured builder, with this module's error.
pub fn finish(
    builder: &mut tokio::runtime::Builder,
) -> Result<tokio::runtime::Runtime, RuntimeError> {
    builder.build().map_err(RuntimeError)
}

/// How the process was asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM: Kubernetes stopping the pod.
    Terminate,
    /// Ctrl-C: a person at a terminal.
    Interrupt,
}

/// The stop signals, installed before a command says it is up: a signal
/// that arrives between "ready" and the first wait must be seen, not take
/// the process down with the default action (a test, or kubelet, may send
/// SIGTERM the moment readiness is reported).
pub struct StopSignals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    /// Installs the handlers (inside a runtime). Where one cannot be
    /// installed, waiting falls back to Ctrl-C.
    pub fn install() -> StopSignals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            StopSignals {
                term: signal(SignalKind::terminate()).ok(),
                int: signal(SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        StopSignals {}
    }

    /// Waits for SIGTERM or Ctrl-C.
    pub async fn next(&mut self) -> Stop {
        #[cfg(unix)]
        {
            let term = async {
                match &mut self.term {
                    Some(term) => term.recv().await,
                    None => std::future::pending().await,
                }
            };
            let int = async {
                match &mut self.int {
                    Some(int) => int.recv().await,
                    None => tokio::signal::ctrl_c().await.ok(),
                }
            };
            tokio::select! {
                _ = int => Stop::Interrupt,
                _ = term => Stop::Terminate,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Stop::Interrupt
        }
    }
}
