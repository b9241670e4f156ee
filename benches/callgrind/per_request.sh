#!/usr/bin/env bash
# Instructions per request per proxy, counted by callgrind: repeatable for
# the same binary and inputs whatever else the machine does, so it compares
# two builds where the wall-clock pairs benchmark is noise-bound.
#
#   benches/callgrind/per_request.sh [BIN ...]   # default: target/release/meshguard
#   REQUESTS_SECONDS=4 PROTOCOLS="http2 http1" BASE_PORT=18750 benches/callgrind/per_request.sh a b
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
    cat >"$TMP/out.yaml" <<YAML
identity: {cert: $C/default/client/tls.crt, key: $C/default/client/tls.key, bundle: $C/ca.crt}
outbound:
  protocol: $proto
  routes: [{listen: "127.0.0.1:$((P + 1))", peer: "127.0.0.1:$((P + 2))", identity: "spiffe://cluster.local/ns/default/sa/server"}]
admin: {listen: "127.0.0.1:$((P + 3))"}
YAML
    VG=(valgrind --tool=callgrind --dump-instr=no --collect-atstart=yes)
    MESHGUARD_LOG=warn "${VG[@]}" --callgrind-out-file="$TMP/in.cg" "$BIN" run --cert "$C/default/server/tls.crt" \
      --key "$C/default/server/tls.key" --bundle "$C/ca.crt" --inbound 127.0.0.1:$((P + 2)) \
      --app 127.0.0.1:$P --admin 127.0.0.1:$((P + 4)) --workers 1 >/dev/null 2>&1 & IN=$!
    MESHGUARD_LOG=warn "${VG[@]}" --callgrind-out-file="$TMP/out.cg" "$BIN" run --config "$TMP/out.yaml" >/dev/null 2>&1 & OUT=$!
    for _ in $(seq 300); do
      curl -sf http://127.0.0.1:$((P + 3))/ready >/dev/null && curl -sf http://127.0.0.1:$((P + 4))/ready >/dev/null && break
      sleep 0.3
    done
    # Under valgrind a handshake takes seconds: one request first, then a
    # warm-up long enough for every pooled connection's handshake.
    curl -s -m 60 -o /dev/null "http://127.0.0.1:$((P + 1))/"
    wrk -t1 -c20 -d6s "http://127.0.0.1:$((P + 1))/" >/dev/null
    before=$(requests $((P + 4)))
    callgrind_control --dump=warmup "$IN" >/dev/null 2>&1; callgrind_control --dump=warmup "$OUT" >/dev/null 2>&1
    wrk -t1 -c20 -d"${SECONDS_LOAD}s" "http://127.0.0.1:$((P + 1))/" >/dev/null
    after=$(requests $((P + 4)))
    callgrind_control --dump=load "$IN" >/dev/null 2>&1; callgrind_control --dump=load "$OUT" >/dev/null 2>&1
    n=$((after - before))
    [ "$n" -gt 0 ] || { echo "no request counted for $BIN ($proto)" >&2; exit 1; }
    in_ir=$(total_ir "$TMP/in.cg"); out_ir=$(total_ir "$TMP/out.cg")
    printf '%-40s %-6s %12d %12d %10d\n' "$BIN" "$proto" \
      $((in_ir / n)) $((out_ir / n)) "$n"
    kill "$IN" "$OUT"; wait "$IN" "$OUT" 2>/dev/null || true
    rm -f "$TMP"/in.cg* "$TMP"/out.cg*
  done
  kill "$ECHO"; wait "$ECHO" 2>/dev/null || true
  rm -rf "$TMP/certs"
done
