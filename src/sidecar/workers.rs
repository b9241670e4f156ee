//! `runtime.workers: N`: N single-threaded event loops, one per thread,
//! that accepted connections are dealt to in turn; each connection, and
//! every task it spawns (HTTP/2 streams, its close watch, splices), stays on
//! the loop it was dealt to, and so do the upstream connections it opens
//! (the pools keep one set per loop, [`PerWorker`]).
//!
//! Why not tokio's work-stealing runtime: it moved a request's tasks (the
//! client connection, the HTTP/2 connection to the peer, the stream) between
//! threads, and on a 2-core machine shared with the app the cross-thread
//! wake-ups cost more than the second core gave. Measured in the same
//! minutes at 2 workers (`benches/results/workers-ab-20261203T130843Z.md`):
//! keep-alive 1.05x haproxy's with work-stealing, 1.49x with these loops,
//! at 44 instead of 66 µs CPU per request. Here a request never leaves its
//! thread; only the hand-over of a new connection does.
//!
//! Loop 0 is the process's main runtime, which also runs the accept loops,
//! the admin server and the watchers. Without [`start`] (one worker, every
//! CLI command, the in-process tests) there is only loop 0.

use std::cell::Cell;
use std::future::Future;
use std::sync::OnceLock;
use tokio::net::TcpStream;
use tokio::runtime::Handle;

/// The loops of this process (loop 0 first), once started.
static LOOPS: OnceLock<Box<[Handle]>> = OnceLock::new();

thread_local! {
    /// The loop this thread runs; 0 on every thread but the workers'.
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The worker loops could not be started.
#[derive(Debug, thiserror::Error)]
pub enum WorkersError {
    #[error("starting worker {index}")]
    Start {
        index: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("the worker loops were already started")]
    AlreadyStarted,
}

/// Starts loops 1..`n` on threads of their own beside `main` (loop 0, the
/// caller's runtime). `on_park` runs whenever a loop runs out of work (the
/// batched log's flush). Once per process; `n <= 1` starts nothing.
pub fn start(main: Handle, n: usize, on_park: fn()) -> Result<(), WorkersError> {
    if n <= 1 {
        return Ok(());
    }
    let mut handles = vec![main];
    for index in 1..n {
        let fail = |source| WorkersError::Start { index, source };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_park(on_park)
            .build()
            .map_err(fail)?;
        handles.push(runtime.handle().clone());
        std::thread::Builder::new()
            .name(format!("meshguard-w{index}"))
            .spawn(move || {
                INDEX.set(index);
                // Runs until the process exits: the main loop decides when
                // that is, once every connection has been drained.
                runtime.block_on(std::future::pending::<()>());
            })
            .map_err(fail)?;
    }
    LOOPS
        .set(handles.into_boxed_slice())
        .map_err(|_| WorkersError::AlreadyStarted)
}

/// How many loops this process runs.
pub fn count() -> usize {
    LOOPS.get().map_or(1, |l| l.len())
}

/// The loop the calling thread runs.
fn current() -> usize {
    INDEX.with(Cell::get)
}

/// Serves the `nth` connection a listener accepted on loop `nth mod N`:
/// `serve` is called on that loop's thread, with the socket registered
/// there. Each listener deals its own connections, so a peer's few
/// multiplexed connections (one per worker of its sidecar) arrive in a row
/// and land on different loops.
pub fn spawn_connection<F, Fut>(nth: usize, tcp: TcpStream, serve: F)
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(loops) = LOOPS.get() else {
        tokio::spawn(serve(tcp));
        return;
    };
    let turn = nth % loops.len();
    if turn == current() {
        tokio::spawn(serve(tcp));
        return;
    }
    // A tokio socket belongs to the loop that registered it: left there,
    // every read and write would be a wake-up across threads.
    let moved = match tcp.into_std() {
        Ok(std) => std,
        Err(e) => {
            tracing::warn!(error = %e, "handing a connection to a worker failed");
            return;
        }
    };
    loops[turn].spawn(async move {
        match TcpStream::from_std(moved) {
            Ok(tcp) => serve(tcp).await,
            Err(e) => tracing::warn!(error = %e, "registering a connection on a worker failed"),
        }
    });
}

/// One value per loop (a pool's idle connections, an HTTP/2 connection),
/// so a loop only ever uses connections whose I/O it drives itself.
pub struct PerWorker<T>(Box<[T]>);

impl<T> PerWorker<T> {
    /// One value per loop of this process (one before [`start`]).
    pub fn new(make: impl FnMut() -> T) -> PerWorker<T> {
        PerWorker(std::iter::repeat_with(make).take(count()).collect())
    }

    /// The calling loop's value.
    pub fn get(&self) -> &T {
        // A thread of another process-wide set (a test running several
        // sidecars in one process has only loop 0) takes the first.
        self.0.get(current()).unwrap_or(&self.0[0])
    }
}
