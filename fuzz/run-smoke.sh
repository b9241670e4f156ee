#!/usr/bin/env bash
# CI smoke of every fuzz target: build once, then run each target for a few
# seconds on its committed corpus. Fails on any crash, panic, leak or
# timeout (libFuzzer exits non-zero and leaves the input in
# fuzz/artifacts/<target>/).
#
#   bash fuzz/run-smoke.sh            # 25 s per target (about 3 min, plus the build)
#   SMOKE_SECONDS=5 bash fuzz/run-smoke.sh
#   bash fuzz/run-smoke.sh pathnorm headers   # only these targets
#
# Works on the stable toolchain: RUSTC_BOOTSTRAP=1 lets stable rustc accept
# the -Z flags cargo-fuzz passes (-Zsanitizer=address). The committed corpora
# are read, never written: new inputs go to a temporary directory.
set -euo pipefail

cd "$(dirname "$0")"
seconds="${SMOKE_SECONDS:-25}"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --version 0.13.2 --locked
fi

cargo fuzz build
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target" "$scratch/$target"
    dict=()
    if [ -f "dict/$target.dict" ]; then
        dict=("-dict=dict/$target.dict")
    fi
    echo "=== $target: ${seconds}s, $(ls "corpus/$target" | wc -l) corpus inputs"
    log="$scratch/$target.log"
    status=0
    cargo fuzz run "$target" "$scratch/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        "${dict[@]}" >"$log" 2>&1 || status=$?
    grep -E '^(#[0-9]+[[:space:]]+(INITED|DONE)|stat::number_of_executed_units)' "$log" || true
    if [ "$status" -ne 0 ]; then
        tail -n 60 "$log" >&2
        echo "FAIL: $target (the input is saved under fuzz/artifacts/$target/)" >&2
        exit 1
    fi
done
echo "fuzz smoke passed: ${targets[*]}"
