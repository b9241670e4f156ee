#!/usr/bin/env bash
# Starts the local demo: dev certs, two workloads each with its sidecar and
# an echo app, one request through outbound -> mTLS -> inbound, then keeps
# running so you can curl it. Usage: bash deploy/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if ! dpkg -s gcc >/dev/null 2>&1 || ! dpkg -s curl >/dev/null 2>&1; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc curl ca-certificates
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install the Rust toolchain (rustup) first" >&2
    exit 1
fi
# A debug build: the release profile uses fat LTO (about ten minutes on two
# cores), which the demo does not need.
exec cargo run --locked -- demo "$@"
