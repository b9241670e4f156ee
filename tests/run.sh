#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs what the tests
# need, then runs every unit and integration test. Exits non-zero when any
# test fails. Usage: bash tests/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."

. tests/prereqs.sh

# Debian packages the tests use: a C compiler for aws-lc-sys; curl and
# openssl for the scripts and TLS checks; prometheus (promtool and a real
# server for the metrics tests); iproute2, iptables and util-linux (setpriv)
# for the network-namespace test; python3 with venv for the offline
# Kubernetes schema validation; redis-server and redis-tools for the opaque
# TCP tests (tests/tcp.rs, netns_tcp).
install_packages gcc curl openssl ca-certificates prometheus iproute2 iptables util-linux python3 python3-venv python3-cryptography redis-server redis-tools
# The package starts a system Prometheus where systemd runs; the tests start
# their own on loopback ports, so a running one does no harm, but stop it
# when we can to keep the machine quiet.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
    as_root systemctl stop prometheus || true
fi
require_cargo

cargo build --locked --all-targets
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# Every test binary runs even when one fails (--no-fail-fast), and the
# summary below is printed either way; the exit status is the tests'.
status=0
cargo test --locked --all-targets --no-fail-fast 2>&1 | tee "$log" || status=$?
# One closing line with the totals of every test binary (also kept for CI).
mkdir -p target
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log" | tee target/test-summary.txt
if [ "$status" -ne 0 ] && ! grep -q '^test result:' "$log"; then
    echo "tests: the build failed before any test ran" | tee -a target/test-summary.txt
fi
exit "$status"
