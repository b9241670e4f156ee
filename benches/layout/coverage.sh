#!/usr/bin/env bash
# How many names of hot-symbols.txt the release binary has: below ~95 % the
# layout has gone stale (a dependency, toolchain or Cargo.toml change alters
# the hashes in symbol names) and collect.sh should be run again.
#
#   benches/layout/coverage.sh [BINARY]     # default: target/release/meshguard
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BIN=${1:-${CARGO_TARGET_DIR:-$HERE/../../target}/release/meshguard}
total=$(grep -c . "$HERE/hot-symbols.txt")
found=$(nm "$BIN" | awk '{print $NF}' | sort -u | comm -12 - <(sort -u "$HERE/hot-symbols.txt") | wc -l)
echo "hot-code layout: $found of $total listed functions in $BIN ($((100 * found / total)) %)"
