//! Replay protection that survives restarts and loses no event. A
//! verified webhook's key (route, id) goes through three states:
//! - reserved (in memory only) while the request is with the app: a
//!   concurrent duplicate is refused ([`Seen::InFlight`]);
//! - committed once the app has taken the event (any answer but a 5xx):
//!   a line written and fsynced before the app's answer goes back to the
//!   provider, kept until the key's timestamp leaves the tolerance window;
//! - forgotten when the app did not take it (unreachable, no response, a
//!   5xx) or the caller went away: the provider's retry is a first
//!   delivery, not a replay.
//!
//! The file only ever holds committed keys, so a forgotten key cannot come
//! back after a restart (nothing was written; no tombstone is needed) and
//! a committed one cannot be forgotten by one (a crash does not reopen its
//! window). A crash while a request is with the app leaves nothing on
//! disk: the provider, which got no answer, retries and the app may see
//! the event twice (at-least-once, as every provider delivers).
//!
//! Memory is bounded: a full store refuses new webhooks rather than forget
//! live keys, which would reopen the window. The file is compacted
//! (expired keys dropped, atomically replaced) on start and when it grows
//! past twice the live keys.
//!
//! A line is `<expiry unix seconds> <hex sha256 of the key>\n`; a torn last
//! line (a crash mid-write, so never fsynced and never answered) is
//! ignored.

use aws_lc_rs::digest;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

type Key = [u8; 32];

/// Why a key could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("replay store {file}: {source}")]
    Io {
        file: String,
        source: std::io::Error,
    },
    #[error("replay store full ({0} live ids)")]
    Full(usize),
}

/// What [`ReplayStore::reserve`] decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    /// First time: reserved, may be forwarded; settle it with
    /// [`Reservation::commit`] or let it go (forgotten).
    New(Reservation),
    /// Committed already within the window.
    Replay,
    /// Reserved by a request still with the app: its outcome is unknown,
    /// so this one is neither forwarded nor called a replay.
    InFlight,
}

struct State {
    /// Committed keys and their expiry.
    live: HashMap<Key, i64>,
    /// Reserved keys (requests with the app).
    in_flight: HashSet<Key>,
    order: VecDeque<(i64, Key)>,
    file: Option<File>,
    lines: usize,
}

/// The replay store of one sidecar (all routes share it; keys carry the
/// route name).
pub struct ReplayStore {
    path: Option<PathBuf>,
    max: usize,
    state: Mutex<State>,
}

/// The key of `id` on `route`.
pub fn key(route: &str, id: &str) -> Key {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(route.as_bytes());
    ctx.update(&[0]);
    ctx.update(id.as_bytes());
    let mut out = [0; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

impl ReplayStore {
    /// Opens (or creates) the store at `path`, keeping the keys that have
    /// not expired at `now`, and compacts the file. `None` keeps keys in
    /// memory only (tests; a restart then forgets them).
    pub fn open(path: Option<&Path>, max: usize, now: i64) -> Result<ReplayStore, ReplayError> {
        let mut state = State {
            live: HashMap::new(),
            in_flight: HashSet::new(),
            order: VecDeque::new(),
            file: None,
            lines: 0,
        };
        if let Some(path) = path {
            for (expiry, key) in read(path)? {
                if expiry > now && state.live.insert(key, expiry).is_none() {
                    state.order.push_back((expiry, key));
                }
            }
            state.file = Some(compact(path, &state.live)?);
            state.lines = state.live.len();
        }
        Ok(ReplayStore {
            path: path.map(Path::to_path_buf),
            max,
            state: Mutex::new(state),
        })
    }

    /// Live keys.
    pub fn len(&self) -> usize {
        self.lock().live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves `key` (memory only, no I/O) unless it is committed or
    /// reserved already. The reservation is forgotten when dropped
    /// unsettled.
    pub fn reserve(self: &Arc<Self>, key: Key, expiry: i64, now: i64) -> Result<Seen, ReplayError> {
        let mut state = self.lock();
        expire(&mut state, now);
        if state.live.get(&key).is_some_and(|&e| e > now) {
            return Ok(Seen::Replay);
        }
        if state.in_flight.contains(&key) {
            return Ok(Seen::InFlight);
        }
        let held = state.live.len() + state.in_flight.len();
        if held >= self.max {
            return Err(ReplayError::Full(held));
        }
        state.in_flight.insert(key);
        Ok(Seen::New(Reservation {
            store: self.clone(),
            key,
            expiry,
            settled: false,
        }))
    }

    /// Commits a reserved key: the line is fsynced before this returns.
    /// If the write fails the key stays committed in memory (the app took
    /// the event) and the error is returned for the caller to report.
    fn commit(&self, key: Key, expiry: i64) -> Result<(), ReplayError> {
        let mut state = self.lock();
        state.in_flight.remove(&key);
        state.live.insert(key, expiry);
        state.order.push_back((expiry, key));
        let (Some(path), Some(file)) = (&self.path, state.file.as_mut()) else {
            return Ok(());
        };
        let line = format!("{expiry} {}\n", super::formats::hex(&key));
        let io = |source| ReplayError::Io {
            file: path.display().to_string(),
            source,
        };
        file.write_all(line.as_bytes()).map_err(io)?;
        file.sync_data().map_err(io)?;
        state.lines += 1;
        if state.lines > 2 * state.live.len() + 1024 {
            // A failed compaction leaves the (longer) file as it was.
            if let Ok(file) = compact(path, &state.live) {
                state.file = Some(file);
                state.lines = state.live.len();
            }
        }
        Ok(())
    }

    /// Forgets a reserved key (nothing of it is on disk).
    fn release(&self, key: &Key) {
        self.lock().in_flight.remove(key);
    }

    /// Keys reserved now (requests with the app).
    pub fn in_flight(&self) -> usize {
        self.lock().in_flight.len()
    }
}

/// A reserved key, held while its request is with the app. Dropped
/// without [`Reservation::commit`] (the app failed, the caller went away),
/// the key is forgotten.
pub struct Reservation {
    store: Arc<ReplayStore>,
    key: Key,
    expiry: i64,
    settled: bool,
}

impl PartialEq for Reservation {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for Reservation {}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("expiry", &self.expiry)
            .finish_non_exhaustive()
    }
}

impl Reservation {
    /// The app took the event: the key is committed, on disk before this
    /// returns. Blocking (the fsync): call it from `spawn_blocking`.
    pub fn commit(mut self) -> Result<(), ReplayError> {
        self.settled = true;
        self.store.commit(self.key, self.expiry)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            self.store.release(&self.key);
        }
    }
}

/// Drops keys expired at `now` from memory. Keys come in roughly expiry
/// order; one that expires late behind an early one stays a little
/// longer, which only costs memory.
fn expire(state: &mut State, now: i64) {
    while let Some(&(expiry, key)) = state.order.front() {
        if expiry > now {
            break;
        }
        state.order.pop_front();
        if state.live.get(&key) == Some(&expiry) {
            state.live.remove(&key);
        }
    }
}

fn read(path: &Path) -> Result<Vec<(i64, Key)>, ReplayError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ReplayError::Io {
                file: path.display().to_string(),
                source,
            })
        }
    };
    let mut out = Vec::new();
    for line in BufReader::new(file).split(b'\n') {
        let line = line.map_err(|source| ReplayError::Io {
            file: path.display().to_string(),
            source,
        })?;
        if let Some(entry) = parse_line(&line) {
            out.push(entry);
        }
    }
    Ok(out)
}

/// One line, or `None` for a torn or foreign one.
fn parse_line(line: &[u8]) -> Option<(i64, Key)> {
    let text = std::str::from_utf8(line).ok()?;
    let (expiry, hex) = text.split_once(' ')?;
    let bytes = super::formats::hex_decode(hex)?;
    let key: Key = bytes.try_into().ok()?;
    Some((expiry.parse().ok()?, key))
}

/// Rewrites the file with the live keys (temporary file, fsync, rename,
/// fsync of the directory) and returns it open for appending.
fn compact(path: &Path, live: &HashMap<Key, i64>) -> Result<File, ReplayError> {
    let io = |source| ReplayError::Io {
        file: path.display().to_string(),
        source,
    };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("compact");
    let mut out = String::with_capacity(live.len() * 80);
    for (key, expiry) in live {
        out.push_str(&format!("{expiry} {}\n", super::formats::hex(key)));
    }
    {
        let mut f = File::create(&tmp).map_err(io)?;
        f.write_all(out.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = dir {
        File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    }
    OpenOptions::new().append(true).open(path).map_err(io)
}
