#!/usr/bin/env bash
# Instructions per request per proxy, counted by callgrind: repeatable for
# the same binary and inputs whatever else the machine does, so it compares
# two builds where the wall-clock pairs benchmark is noise-bound.
#
#   benches/callgrind/per_request.sh [BIN ...]   # default: target/release/meshguard
#   CONNS=1 (requests in flight: 1 batches nothing, so the count does not
#   depend on how fast valgrind ran)  KEEP_DIR=/tmp/cg (keep the load profiles)  REQUESTS_SECONDS=4 PROTOCOLS="http2 http1" BASE_PORT=18750 benches/callgrind/per_request.sh a b
#
# For each binary and hop protocol: the outbound and inbound proxies run
# under callgrind with a dev SVID, the built-in echo app behind them (not
# measured); after a warm-up the counters are zeroed (callgrind_control
# --dump), wrk sends keep-alive load for REQUESTS_SECONDS, and the second
# dump's instruction total divided by the requests the proxies counted
# (meshguard_requests_total) is the figure. Handshakes happen in the
# warm-up, so it is the steady per-request path. Needs valgrind, wrk, curl.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
SECONDS_LOAD=${REQUESTS_SECONDS:-4}
PROTOCOLS=${PROTOCOLS:-"http2 http1"}
P=${BASE_PORT:-18750}
command -v valgrind >/dev/null && command -v wrk >/dev/null && command -v curl >/dev/null ||
  { apt-get update -qq && apt-get install -y -qq valgrind wrk curl >/dev/null; }
[ $# -gt 0 ] || set -- "$REPO/target/release/meshguard"
TMP=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$TMP"' EXIT

requests() { # requests counted by the admin endpoint at $1
  curl -sf "http://127.0.0.1:$1/metrics" | awk '/^meshguard_requests_total/ { s += $NF } END { printf "%d\n", s }'
}
total_ir() { # instruction total of the last dump of callgrind output prefix $1
  local f; f=$(ls -t "$1".* 2>/dev/null | head -n1)
  awk '/^(summary|totals):/ { print $2; exit }' "$f"
}

printf '%-40s %-6s %12s %12s %10s\n' binary hop inbound outbound requests
for BIN in "$@"; do
  "$BIN" certs dev --out "$TMP/certs" --workload default/client --workload default/server >/dev/null
  C=$TMP/certs
  "$BIN" echo --listen 127.0.0.1:$P >/dev/null 2>&1 & ECHO=$!
  for proto in $PROTOCOLS; do
    # File polling off (an hour): its reads and hashes are a cost per
    # second, not per request, and would be divided by however many
    # requests valgrind's speed allowed.
    cat >"$TMP/out.yaml" <<YAML
identity: {cert: $C/default/client/tls.crt, key: $C/default/client/tls.key, bundle: $C/ca.crt}
outbound:
  protocol: $proto
  routes: [{listen: "127.0.0.1:$((P + 1))", peer: "127.0.0.1:$((P + 2))", identity: "spiffe://cluster.local/ns/default/sa/server"}]
admin: {listen: "127.0.0.1:$((P + 3))"}
runtime: {workers: 1, poll_interval_ms: 3600000}
YAML
    cat >"$TMP/in.yaml" <<YAML
identity: {cert: $C/default/server/tls.crt, key: $C/default/server/tls.key, bundle: $C/ca.crt}
inbound: {listen: "127.0.0.1:$((P + 2))", app: "127.0.0.1:$P"}
admin: {listen: "127.0.0.1:$((P + 4))"}
runtime: {workers: 1, poll_interval_ms: 3600000}
YAML
    # Uncompressed names: each dump kept for callgrind_annotate reads alone.
    VG=(valgrind --tool=callgrind --dump-instr=no --collect-atstart=yes --compress-strings=no)
    MESHGUARD_LOG=warn "${VG[@]}" --callgrind-out-file="$TMP/in.cg" "$BIN" run --config "$TMP/in.yaml" >/dev/null 2>&1 & IN=$!
    MESHGUARD_LOG=warn "${VG[@]}" --callgrind-out-file="$TMP/out.cg" "$BIN" run --config "$TMP/out.yaml" >/dev/null 2>&1 & OUT=$!
    for _ in $(seq 300); do
      curl -sf http://127.0.0.1:$((P + 3))/ready >/dev/null && curl -sf http://127.0.0.1:$((P + 4))/ready >/dev/null && break
      sleep 0.3
    done
    # Under valgrind a handshake takes seconds: one request first, then a
    # warm-up long enough for every pooled connection's handshake.
    curl -s -m 60 -o /dev/null "http://127.0.0.1:$((P + 1))/"
    wrk -t1 -c20 -d6s "http://127.0.0.1:$((P + 1))/" >/dev/null
    callgrind_control --dump=warmup "$IN" >/dev/null 2>&1; callgrind_control --dump=warmup "$OUT" >/dev/null 2>&1
    # What the proxies spend idle (timers, the admin scrape below) over as
    # long as the load lasts, subtracted from the load's total.
    before=$(requests $((P + 4)))
    sleep "$SECONDS_LOAD"
    callgrind_control --dump=idle "$IN" >/dev/null 2>&1; callgrind_control --dump=idle "$OUT" >/dev/null 2>&1
    in_idle=$(total_ir "$TMP/in.cg"); out_idle=$(total_ir "$TMP/out.cg")
    before=$(requests $((P + 4)))
    wrk -t1 -c"${CONNS:-1}" -d"${SECONDS_LOAD}s" "http://127.0.0.1:$((P + 1))/" >/dev/null
    after=$(requests $((P + 4)))
    callgrind_control --dump=load "$IN" >/dev/null 2>&1; callgrind_control --dump=load "$OUT" >/dev/null 2>&1
    n=$((after - before))
    [ "$n" -gt 0 ] || { echo "no request counted for $BIN ($proto)" >&2; exit 1; }
    in_ir=$(($(total_ir "$TMP/in.cg") - in_idle)); out_ir=$(($(total_ir "$TMP/out.cg") - out_idle))
    printf '%-40s %-6s %12d %12d %10d\n' "$BIN" "$proto" \
      $((in_ir / n)) $((out_ir / n)) "$n"
    kill "$IN" "$OUT"; wait "$IN" "$OUT" 2>/dev/null || true
    if [ -n "${KEEP_DIR:-}" ]; then # the profiles, for callgrind_annotate
      mkdir -p "$KEEP_DIR"; tag=$(basename "$BIN")-$proto
      cp "$(ls -t "$TMP"/in.cg.* | head -n1)" "$KEEP_DIR/$tag-in.cg"
      cp "$(ls -t "$TMP"/out.cg.* | head -n1)" "$KEEP_DIR/$tag-out.cg"
    fi
    rm -f "$TMP"/in.cg* "$TMP"/out.cg*
  done
  kill "$ECHO"; wait "$ECHO" 2>/dev/null || true
  rm -rf "$TMP/certs"
done
