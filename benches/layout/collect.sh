#!/usr/bin/env bash
# Regenerates hot-symbols.txt: the functions a sidecar runs, by phase (steady
# keep-alive serving over HTTP/1.1 and HTTP/2 hops; new connections, metrics
# and refusals; start-up last; see hot_symbols.py). build.rs hands the list to
# the linker (lld --symbol-ordering-file) for release builds, so that this
# code sits together in the binary and the pages a running proxy maps stay
# few (the kernel maps file pages in 64 KiB windows around each one touched).
# Run it after a toolchain or dependency update, or a change of Cargo.toml:
# symbol names carry hashes of the build's inputs, and stale names are ignored
# (`benches/layout/coverage.sh` says how many match).
#
#   benches/layout/collect.sh        # needs valgrind, wrk, curl (apt-get installs them)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
command -v valgrind >/dev/null && command -v wrk >/dev/null && command -v curl >/dev/null ||
  { apt-get update -qq && apt-get install -y -qq valgrind wrk curl >/dev/null; }
cargo build --release --manifest-path "$REPO/Cargo.toml" >&2
BIN=${CARGO_TARGET_DIR:-$REPO/target}/release/meshguard
TMP=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$TMP"' EXIT
"$BIN" certs dev --out "$TMP/certs" --workload default/client --workload default/server >/dev/null
# The inbound runs with the benchmark's seven-rule policy, so that the
# authorization step's code is laid out with the rest (without it a pair
# with a policy had ~1 MiB more resident on its inbound than one without;
# with it, ~0.4 MiB).
die() { echo "collect.sh: $*" >&2; exit 1; }
. "$HERE/../pairs/variants-lib.sh"
write_policy "$TMP/policy.yaml"
C=$TMP/certs; P=${BASE_PORT:-18700}
"$BIN" echo --listen 127.0.0.1:$P >/dev/null 2>&1 &
# callgrind_control asks through vgdb; a process asleep in epoll_wait is woken
# by ptrace, so the dump does not wait for the next request.
dump() { for pid in "$@"; do callgrind_control -d "$pid" >/dev/null; done; }
# The first dump ends where the sidecar releases its start-up pages, just
# before readiness: what ran until then is start-up, the rest is serving.
VG=(valgrind --tool=callgrind --demangle=no --dump-instr=no --dump-before='*resident*release_startup_pages*')
for proto in http1 http2; do
  cat >"$TMP/out.yaml" <<YAML
identity: {cert: $C/default/client/tls.crt, key: $C/default/client/tls.key, bundle: $C/ca.crt}
outbound:
  protocol: $proto
  routes: [{listen: "127.0.0.1:$((P + 1))", peer: "127.0.0.1:$((P + 2))", identity: "spiffe://cluster.local/ns/default/sa/server"}]
admin: {listen: "127.0.0.1:$((P + 3))"}
YAML
  "${VG[@]}" --callgrind-out-file="$TMP/in-$proto.cg" "$BIN" run --cert "$C/default/server/tls.crt" \
    --key "$C/default/server/tls.key" --bundle "$C/ca.crt" --inbound 127.0.0.1:$((P + 2)) \
    --app 127.0.0.1:$P --admin 127.0.0.1:$((P + 4)) --policy "$TMP/policy.yaml" --workers 1 >/dev/null 2>&1 & IN=$!
  "${VG[@]}" --callgrind-out-file="$TMP/out-$proto.cg" "$BIN" run --config "$TMP/out.yaml" >/dev/null 2>&1 & OUT=$!
  for _ in $(seq 200); do
    curl -sf http://127.0.0.1:$((P + 3))/ready >/dev/null && curl -sf http://127.0.0.1:$((P + 4))/ready >/dev/null && break
    sleep 0.3
  done
  # Each phase ends with a dump, so hot_symbols.py can tell the code of
  # steady keep-alive serving from that of handshakes and of rarer requests.
  wrk -t1 -c20 -d6s "http://127.0.0.1:$((P + 1))/" >/dev/null
  dump "$IN" "$OUT"
  wrk -t1 -c4 -d2s -H 'Connection: close' "http://127.0.0.1:$((P + 1))/" >/dev/null
  dump "$IN" "$OUT"
  curl -s http://127.0.0.1:$((P + 3))/metrics >/dev/null; curl -s http://127.0.0.1:$((P + 4))/metrics >/dev/null
  curl -s -H 'Host: undeclared' http://127.0.0.1:$((P + 1))/ >/dev/null || true
  curl -s http://127.0.0.1:$((P + 1))/admin/x >/dev/null || true
  kill "$IN" "$OUT"; wait "$IN" "$OUT" 2>/dev/null || true
done
# callgrind numbers the dumps: .1 start-up (up to the release of its pages),
# .2 keep-alive, .3 new connections; what follows, at exit, goes to X.cg.
for n in 1 2 3; do
  [ "$(ls "$TMP"/*.cg.$n 2>/dev/null | wc -l)" = 4 ] || die "missing dumps .$n: was resident::release_startup_pages renamed, or a dump refused?"
done
! ls "$TMP"/*.cg.4 >/dev/null 2>&1 || die "more dumps than phases: the --dump-before pattern matches twice"
# The default protocol's profiles first: their code goes first in the list.
python3 "$HERE/hot_symbols.py" "$BIN" \
  --keepalive "$TMP"/out-http2.cg.2 "$TMP"/in-http2.cg.2 "$TMP"/out-http1.cg.2 "$TMP"/in-http1.cg.2 \
  --serving "$TMP"/*.cg.3 "$TMP"/*.cg --startup "$TMP"/*.cg.1 >"$HERE/hot-symbols.txt"
echo "wrote $HERE/hot-symbols.txt ($(wc -l <"$HERE/hot-symbols.txt") symbols)" >&2
