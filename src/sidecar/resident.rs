//! Start-up pages given back once the sidecar is ready.
//!
//! Starting touches code and read-only data a running proxy never uses again:
//! argument and config parsing, certificate loading, TLS and runtime set-up,
//! and the kernel maps file pages in 64 KiB windows around each one touched.
//! Measured before this existed (one worker, under load): 3.4 MiB of the
//! binary's code and 1.3 MiB of its read-only data resident per proxy, of
//! which the proxy referenced 1.1 and 0.2 MiB while serving.
//!
//! At ready, the file-backed read-only mappings whose pages are all clean
//! (the binary's code and read-only data, the shared libraries') are dropped
//! from this process with `MADV_DONTNEED`. Their contents stay in the page
//! cache, so what the proxy still runs comes back through a minor fault with
//! the same bytes: nothing is lost, and memory under load holds only what
//! serving uses. It is what the kernel itself does to clean file pages under
//! memory pressure, done at the one moment we know which pages are cold.
//! A mapping with an anonymous page is never touched: the
//! loader writes relocations into RELRO before making it read-only, and
//! dropping those pages would bring back the unrelocated file bytes.

/// What one call gave back.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Released {
    /// Mappings dropped.
    pub mappings: usize,
    /// Their resident size before, in KiB.
    pub kib: u64,
}

/// One mapping of `/proc/self/smaps` that can be dropped without loss.
#[derive(Debug, PartialEq, Eq)]
struct CleanMapping {
    start: usize,
    end: usize,
    rss_kib: u64,
}

/// Drops this process's clean file-backed pages (see the module comment).
/// Nothing in meshguard unmaps a file mapping while it runs (no `dlclose`,
/// no memory-mapped files), so the ranges read from smaps still hold the
/// same mappings when `madvise` runs a moment later.
///
/// Never inlined: benches/layout/collect.sh splits its profiles where this
/// is called (start-up before, serving after).
#[cfg(target_os = "linux")]
#[inline(never)]
pub fn release_startup_pages() -> std::io::Result<Released> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut released = Released::default();
    for m in clean_file_mappings(&smaps) {
        // SAFETY: the range is a whole mapping of a file, read-only, private,
        // with no anonymous (copied-on-write) or swapped page. MADV_DONTNEED
        // on such a mapping only unmaps page-cache pages: the next access
        // faults the same file bytes back in, so no memory the program can
        // observe changes. No Rust reference is invalidated.
        #[allow(unsafe_code)]
        let rc = unsafe {
            libc::madvise(
                m.start as *mut libc::c_void,
                m.end - m.start,
                libc::MADV_DONTNEED,
            )
        };
        if rc == 0 {
            released.mappings += 1;
            released.kib += m.rss_kib;
        }
    }
    Ok(released)
}

/// Elsewhere there is nothing to give back this way.
#[cfg(not(target_os = "linux"))]
pub fn release_startup_pages() -> std::io::Result<Released> {
    Ok(Released::default())
}

/// The mappings of an smaps text that are file-backed, private, not
/// writable, resident, and hold no anonymous or swapped page.
fn clean_file_mappings(smaps: &str) -> Vec<CleanMapping> {
    let mut out = Vec::new();
    let mut current: Option<(CleanMapping, bool)> = None;
    for line in smaps.lines() {
        if let Some(header) = mapping_header(line) {
            out.extend(current.take().and_then(keep));
            current = header.map(|m| (m, true));
            continue;
        }
        let Some((m, clean)) = current.as_mut() else {
            continue;
        };
        let (key, kib) = match line.split_once(':') {
            Some((k, v)) => (k, v.trim().trim_end_matches(" kB").parse::<u64>().ok()),
            None => continue,
        };
        match (key, kib) {
            ("Rss", Some(n)) => m.rss_kib = n,
            ("Anonymous" | "Swap", Some(n)) if n > 0 => *clean = false,
            _ => {}
        }
    }
    out.extend(current.and_then(keep));
    out
}

fn keep((m, clean): (CleanMapping, bool)) -> Option<CleanMapping> {
    (clean && m.rss_kib > 0).then_some(m)
}

/// `None` when the line is not a mapping header; `Some(None)` for a header
/// of a mapping that is not a candidate (writable, shared, anonymous or a
/// kernel one such as `[vdso]`).
fn mapping_header(line: &str) -> Option<Option<CleanMapping>> {
    let mut fields = line.split_ascii_whitespace();
    let (range, perms) = (fields.next()?, fields.next()?);
    let (start, end) = range.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    if perms.len() != 4 {
        return None;
    }
    let path = fields.nth(3);
    let candidate = perms.as_bytes()[1] != b'w'
        && perms.as_bytes()[3] == b'p'
        && path.is_some_and(|p| p.starts_with('/'));
    Some(candidate.then_some(CleanMapping {
        start,
        end,
        rss_kib: 0,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0a0000000-55d0a0100000 r--p 00000000 fd:01 42 /usr/bin/meshguard
Size:               1024 kB
Rss:                 640 kB
Anonymous:             0 kB
Swap:                  0 kB
55d0a0100000-55d0a0400000 r-xp 00100000 fd:01 42 /usr/bin/meshguard
Rss:                2048 kB
Anonymous:             0 kB
55d0a0400000-55d0a0440000 r--p 00400000 fd:01 42 /usr/bin/meshguard
Rss:                 256 kB
Anonymous:           252 kB
55d0a0440000-55d0a0450000 rw-p 00440000 fd:01 42 /usr/bin/meshguard
Rss:                  20 kB
Anonymous:            20 kB
55d0a1000000-55d0a1200000 rw-p 00000000 00:00 0 [heap]
Rss:                1200 kB
7f0000000000-7f0000010000 r-xp 00000000 fd:01 7 /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                  64 kB
Anonymous:             0 kB
7f0000010000-7f0000020000 r-xp 00000000 fd:01 8 /usr/lib/libswapped.so
Rss:                   8 kB
Swap:                  4 kB
7f0000020000-7f0000030000 r--p 00000000 fd:01 9 /usr/lib/libcold.so
Rss:                   0 kB
7f0000030000-7f0000040000 r--s 00000000 fd:01 9 /dev/shm/shared
Rss:                  64 kB
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0 [vdso]
Rss:                   8 kB
";

    #[test]
    fn only_clean_private_read_only_file_mappings_are_candidates() {
        let got = clean_file_mappings(SMAPS);
        let ranges: Vec<_> = got.iter().map(|m| (m.start, m.end, m.rss_kib)).collect();
        assert_eq!(
            ranges,
            vec![
                (0x55d0a0000000, 0x55d0a0100000, 640),
                (0x55d0a0100000, 0x55d0a0400000, 2048),
                (0x7f0000000000, 0x7f0000010000, 64),
            ],
            "RELRO (anonymous pages), writable, heap, swapped, non-resident, shared and [vdso] mappings stay"
        );
    }

    #[test]
    fn a_text_without_headers_yields_nothing() {
        assert!(clean_file_mappings("Rss: 4 kB\nnonsense\n").is_empty());
    }

    /// The real call on this test process: the code and read-only data it
    /// drops come back on use (this test keeps running, and so do the other
    /// tests' threads), and its resident file pages shrink.
    #[cfg(target_os = "linux")]
    #[test]
    fn releasing_this_process_shrinks_its_file_pages_and_it_keeps_running() {
        let resident_file_kib = || -> u64 {
            let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
            clean_file_mappings(&smaps).iter().map(|m| m.rss_kib).sum()
        };
        let before = resident_file_kib();
        let released = release_startup_pages().unwrap();
        assert!(released.mappings > 0 && released.kib > 0, "{released:?}");
        let after = resident_file_kib();
        assert!(
            after < before,
            "resident clean file pages {before} KiB -> {after} KiB"
        );
        // Relocated data (RELRO) must have survived: formatting walks vtables
        // and a panic message table lives in read-only data.
        assert_eq!(
            format!("{:?}", Some(released.mappings)),
            format!("Some({})", released.mappings)
        );
    }
}
