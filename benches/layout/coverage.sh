#!/usr/bin/env bash
# How many names of hot-symbols.txt the release binary has, with a warning
# below 90 %: the layout loses functions whose names change (a dependency,
# toolchain or Cargo.toml change alters the hashes in symbol names; the list
# once decayed to a third and RSS grew 3 MiB before anyone saw it), and
# collect.sh should then be run again. benches/pairs/run.sh prints this.
#
#   benches/layout/coverage.sh [BINARY]     # default: target/release/meshguard
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BIN=${1:-${CARGO_TARGET_DIR:-$HERE/../../target}/release/meshguard}
LIST=$HERE/hot-symbols.txt
command -v nm >/dev/null && [ -f "$LIST" ] || exit 0
ordered=$(sort -u "$LIST" | wc -l)
present=$(nm --defined-only "$BIN" 2>/dev/null | awk '{print $3}' | sort -u | comm -12 - <(sort -u "$LIST") | wc -l)
echo "hot-code layout: $present of $ordered ordered functions in the binary ($((100 * present / ordered)) %)"
[ "$present" -ge $((ordered * 9 / 10)) ] ||
  echo "WARNING: the layout is stale; run benches/layout/collect.sh (resident text grows without it)"
