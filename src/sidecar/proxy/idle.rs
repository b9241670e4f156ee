//! The idle connections of one upstream pool: newest first, each kept up
//! to an idle timeout, at most a set number. Both HTTP/1.1 pools (hyper's
//! client to a peer, `h1client` to the app) keep theirs here.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct IdleList<T> {
    list: Mutex<VecDeque<(T, Instant)>>,
    max: usize,
    timeout: Duration,
}

impl<T> IdleList<T> {
    pub fn new(max: usize, timeout: Duration) -> Self {
        IdleList {
            list: Mutex::default(),
            max,
            timeout,
        }
    }

    /// The most recently used connection that is within the idle timeout
    /// and `usable`; the others on the way are dropped (which closes them).
    pub fn take(&self, usable: impl Fn(&T) -> bool) -> Option<T> {
        let mut list = self.list.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((conn, since)) = list.pop_back() {
            if since.elapsed() < self.timeout && usable(&conn) {
                return Some(conn);
            }
        }
        None
    }

    /// Keeps `conn` for the next request. Checkouts take the newest, so the
    /// oldest wait at the front: those past the idle timeout (or no longer
    /// `usable`) are closed here, under load, rather than kept open until
    /// the other side gives up on them.
    pub fn put(&self, conn: T, usable: impl Fn(&T) -> bool) {
        if self.max == 0 {
            return;
        }
        let mut list = self.list.lock().unwrap_or_else(|p| p.into_inner());
        while list
            .front()
            .is_some_and(|(c, since)| since.elapsed() >= self.timeout || !usable(c))
        {
            list.pop_front();
        }
        if list.len() >= self.max {
            list.pop_front();
        }
        list.push_back((conn, Instant::now()));
    }

    /// How many are kept now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.list.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}
