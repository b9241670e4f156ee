//! Release builds on x86_64 Linux place the functions a running sidecar uses
//! next to each other, from the list benches/layout/collect.sh makes: the
//! kernel maps a binary's pages in 64 KiB windows around each page touched,
//! so scattered hot code made most of the 9 MiB text resident. The list puts
//! steady keep-alive serving first, then the rest of serving, then start-up
//! code, whose pages the sidecar drops when it becomes ready
//! (sidecar::resident). Measured (wrk c50 through a pair): the binary's
//! text resident per proxy 6.7 MiB unordered, 3.4 MiB with one hot list,
//! 2.1-2.3 MiB with the phases apart and the start-up pages dropped. Names
//! missing from the binary are skipped silently (benches/layout/coverage.sh
//! counts them).
//!
//! `--symbol-ordering-file` is an lld option: GNU ld refuses it. Rust links
//! x86_64-unknown-linux-gnu with its bundled lld from 1.90 on; with an older
//! compiler, or a linker of the user's own choosing, the layout is skipped
//! (the binary is the same, only less compact in memory).
//!
//! They also pack relative relocations (`-z pack-relative-relocs`, DT_RELR):
//! a position-independent binary otherwise carries 372 KiB of RELA entries
//! that the loader reads, and so makes resident, at every start (measured:
//! peak RSS under load −0.7 to −0.9 MiB per proxy). The loader must know
//! DT_RELR (glibc 2.36, Debian 12): the flag is set only when the glibc of
//! the building machine, which is the one the binary runs with here and in
//! the image (deploy/image copies it), is that new.

use std::process::Command;

/// The first Rust release that links x86_64 Linux with lld by default.
const LLD_DEFAULT_SINCE: (u32, u32) = (1, 90);

/// The first glibc whose loader applies DT_RELR relocations.
const GLIBC_RELR_SINCE: (u32, u32) = (2, 36);

fn main() {
    let list = "benches/layout/hot-symbols.txt";
    println!("cargo:rerun-if-changed={list}");
    println!("cargo:rerun-if-changed=build.rs");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    let target = std::env::var("TARGET").unwrap_or_default();
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let path = std::path::Path::new(&manifest).join(list);
    if !(release && target == "x86_64-unknown-linux-gnu") {
        return;
    }
    if std::env::var("HOST").is_ok_and(|h| h == target) && glibc_at_least(GLIBC_RELR_SINCE) {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    if !path.exists() {
        return;
    }
    if !links_with_lld() {
        println!("cargo:warning=hot-code layout skipped: the linker is not Rust's lld (Rust < 1.90 or a custom linker)");
        return;
    }
    println!(
        "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
        path.display()
    );
    println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
}

/// Whether the binary will be linked by lld: a compiler that defaults to it
/// and no linker chosen in the environment.
fn links_with_lld() -> bool {
    for var in [
        "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER",
        "RUSTC_LINKER",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
        if std::env::var_os(var).is_some() {
            return false;
        }
    }
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if flags.contains("linker") || flags.contains("fuse-ld") {
        return flags.contains("fuse-ld=lld") || flags.contains("linker-flavor=gnu-lld");
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    // "rustc 1.95.0 (59807616e 2026-04-14)"
    second_word_version(&rustc, "--version") >= LLD_DEFAULT_SINCE
}

/// Whether the building machine's glibc is at least `since`
/// (`getconf GNU_LIBC_VERSION` prints "glibc 2.36"); false when unknown.
fn glibc_at_least(since: (u32, u32)) -> bool {
    second_word_version("getconf", "GNU_LIBC_VERSION") >= since
}

/// The version that `program arg` prints as its second word ("1.95.0",
/// "2.36"), as (major, minor); (0, 0) when it cannot be run or parsed.
fn second_word_version(program: &str, arg: &str) -> (u32, u32) {
    let out = Command::new(program)
        .arg(arg)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .unwrap_or_default();
    let mut numbers = out
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .split(['.', '-'])
        .map(|n| n.parse::<u32>().unwrap_or(0));
    (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0))
}
