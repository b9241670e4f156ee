#!/usr/bin/env bash
# Starts the local demo: dev certs, two workloads each with its sidecar and
# an echo app, one request through outbound -> mTLS -> inbound, then keeps
# running so you can curl it. Usage: bash deploy/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. tests/prereqs.sh
install_packages gcc curl ca-certificates
require_cargo
# A debug build: the release profile uses fat LTO (about five minutes on two
# cores), which the demo does not need. The first build compiles every
# dependency: about two minutes on two cores; later runs start at once.
[ -x target/debug/meshguard ] || echo "building meshguard (first build: about 2 minutes)..." >&2
exec cargo run --locked -- demo "$@"
