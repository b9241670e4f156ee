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

/// Waits for SIGTERM or Ctrl-C (only Ctrl-C where there are no Unix
/// signals, or if the SIGTERM handler cannot be installed).
pub async fn shutdown_signal() -> Stop {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return Stop::Interrupt;
                }
            };
        tokio::select! {
            _ = ctrl_c => Stop::Interrupt,
            _ = term.recv() => Stop::Terminate,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
        Stop::Interrupt
    }
}
