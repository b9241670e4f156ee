#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs what the tests
# need, then runs every unit and integration test. Exits non-zero when any
# test fails. Usage: bash tests/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Debian packages the tests use: a C compiler for aws-lc-sys; curl and
# openssl for the scripts and TLS checks; prometheus (promtool and a real
# server for the metrics tests); iproute2, iptables and util-linux (setpriv)
# for the network-namespace test; python3 with venv for the offline
# Kubernetes schema validation. Install only what is missing, so a warm
# machine starts at once.
packages=(gcc curl openssl ca-certificates prometheus iproute2 iptables util-linux python3 python3-venv)
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
# The package starts a system Prometheus where systemd runs; the tests start
# their own on loopback ports, so a running one does no harm, but stop it
# when we can to keep the machine quiet.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
    as_root systemctl stop prometheus || true
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install the Rust toolchain (rustup) first" >&2
    exit 1
fi

cargo build --locked --all-targets
log="$(mktemp)"
cargo test --locked --all-targets 2>&1 | tee "$log"
# One closing line with the totals of every test binary (also kept for CI).
mkdir -p target
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log" | tee target/test-summary.txt
rm -f "$log"
