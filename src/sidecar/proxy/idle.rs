//! The idle connections of one upstream pool: newest first, each kept up
//! to an idle timeout, at most a set number. `h1client` keeps its pools'
//! connections here (to the app, and to peer sidecars).
//!
//! No task reads an idle connection, so nothing else would notice it end:
//! the other side closing it, its peer's certificate revoked, or its idle
//! time running out without another request coming. A reaper task sweeps
//! the list while it holds any connection and stops when it is empty.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// How often the reaper looks: a connection that ended is closed within
/// this (the revocation sweep of peer certificates runs as often).
const REAP_EVERY: Duration = Duration::from_secs(1);

pub struct IdleList<T> {
    state: Mutex<State<T>>,
    max: usize,
    timeout: Duration,
    /// Whether an idle connection may still carry a request.
    usable: fn(&T) -> bool,
}

struct State<T> {
    list: VecDeque<(T, Instant)>,
    reaping: bool,
}

impl<T: Send + 'static> IdleList<T> {
    pub fn new(max: usize, timeout: Duration, usable: fn(&T) -> bool) -> Self {
        IdleList {
            state: Mutex::new(State {
                list: VecDeque::new(),
                reaping: false,
            }),
            max,
            timeout,
            usable,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn keep(&self, conn: &T, since: Instant) -> bool {
        since.elapsed() < self.timeout && (self.usable)(conn)
    }

    /// The most recently used connection that is within the idle timeout
    /// and usable; the others on the way are dropped (which closes them).
    pub fn take(&self) -> Option<T> {
        let mut state = self.state();
        while let Some((conn, since)) = state.list.pop_back() {
            if self.keep(&conn, since) {
                return Some(conn);
            }
        }
        None
    }

    /// Keeps `conn` for the next request. Checkouts take the newest, so the
    /// oldest wait at the front: those past the idle timeout are closed here
    /// under load, and by the reaper otherwise. (Whether they are usable is
    /// left to the reaper and to `take`: asking may cost a system call, and
    /// this runs once per request.)
    pub fn put(self: &Arc<Self>, conn: T) {
        if self.max == 0 {
            return;
        }
        let mut state = self.state();
        while state
            .list
            .front()
            .is_some_and(|(_, since)| since.elapsed() >= self.timeout)
        {
            state.list.pop_front();
        }
        if state.list.len() >= self.max {
            state.list.pop_front();
        }
        state.list.push_back((conn, Instant::now()));
        if !state.reaping {
            state.reaping = true;
            tokio::spawn(reap(Arc::downgrade(self)));
        }
    }

    /// Closes every connection that ended or timed out; `false` (and the
    /// reaper stops) once none is left.
    fn sweep(&self) -> bool {
        let mut state = self.state();
        state.list.retain(|(c, since)| self.keep(c, *since));
        state.reaping = !state.list.is_empty();
        state.reaping
    }

    /// How many are kept now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.state().list.len()
    }
}

/// Sweeps the list every `REAP_EVERY` while it holds connections (and
/// while its pool exists).
async fn reap<T: Send + 'static>(list: Weak<IdleList<T>>) {
    loop {
        tokio::time::sleep(REAP_EVERY).await;
        match list.upgrade() {
            Some(list) if list.sweep() => {}
            _ => return,
        }
    }
}
