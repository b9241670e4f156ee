#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs what the tests
# need, then runs every unit and integration test. Exits non-zero when any
# test fails. Usage: bash tests/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Debian packages the tests use: a C compiler for aws-lc-sys, curl for the
# scripts. Install only what is missing, so a warm machine starts at once.
packages=(gcc curl ca-certificates)
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install the Rust toolchain (rustup) first" >&2
    exit 1
fi

cargo build --locked --all-targets
cargo test --locked --all-targets
