#!/usr/bin/env bash
# The mTLS pairs benchmark of meshguard against nginx, haproxy and stunnel.
#
# Every pair does the same job, on loopback only:
#   wrk → outbound proxy (plain HTTP/1.1) → mTLS (TLS 1.3, client cert required,
#   both sides verified against one dev CA) → inbound proxy → nginx backend
# plus the direct path wrk → nginx backend. See benches/README.md.
#
#   benches/pairs/run.sh                 # 3 rounds × 10 s, 3 s warm-up
#   benches/pairs/run.sh --quick         # smoke test: 1 round × 2 s
#   benches/pairs/run.sh --soak 600      # meshguard pair only, RSS over 10 minutes
#
# Options (environment variable in brackets):
#   --rounds N [ROUNDS=3]  --duration S [DURATION=10]  --warmup S [WARMUP=3]
#   --connections N [CONNS=50]    connections of the keep-alive and new-connection tests
#   --pairs LIST [PAIRS=direct,nginx,haproxy,stunnel,meshguard]; also meshguard-h1
#               (HTTP/1.1 pool on the mTLS hop, outbound from a config file) and
#               bare (the calibration pair: tokio + hyper + rustls doing only the
#               forwarding, one multiplexed HTTP/2 connection; benches/bare/), and
#               the feature variants of the meshguard pair (same outbound, the
#               inbound from a config file; `meshguard` is added to the run when
#               one is asked for, so the report can set them side by side):
#                 meshguard-policy  a policy of seven rules on the inbound, the
#                                   benchmark's caller allowed on GET + its path
#                 meshguard-jwt     that policy with a `jwt:` rule (RS256 token
#                                   signed once by this script, JWKS file, sent
#                                   by wrk on every request) and a per-caller
#                                   rate limit high enough never to trigger
#                 meshguard-assert  the identity assertion on (`assertion:`,
#                                   default HMAC mode), no policy
#                 meshguard-mc      the outbound with `h2_connections_per_peer:`
#                                   --h2-connections N [H2_CONNS=2], no policy
#   --workers N [WORKERS=1]  worker threads/processes of every proxy: meshguard
#               `runtime.workers: N` (both sidecars, every meshguard pair), nginx
#               `worker_processes N`, haproxy `nbthread N`; stunnel and bare are
#               unchanged, the backend nginx keeps 1 worker, wrk keeps -t1
#   --base-port P [BASE_PORT=18400]  uses P .. P+93 on 127.0.0.1
#   --max-foreign C [MAX_FOREIGN=0.10]  foreign CPU (cores) that marks a measurement disturbed
#   --max-steal C [MAX_STEAL=0.05]      steal (cores) that marks a measurement disturbed
#   --soak S, --soak-interval S [SOAK_INTERVAL=5]
#   --no-perf  skip the syscalls-per-request count (perf stat; skipped anyway without perf)
#   --no-install, --no-build (use $MESHGUARD_BIN or target/release/meshguard as is)
#   --keep    keep the temporary directory (configs, certs, logs)
#   --idle C,M  memory per idle connection instead of the load tests: C client
#             keep-alive connections to each outbound, M mTLS connections to each
#             inbound (benches/pairs/idle.py); every proxy's connection limit
#             raised to the same value
#   --hold    start and check the pairs, print their addresses and pids, then wait
#             (for profiling by hand: perf record -p PID, strace -c -f -p PID); Ctrl-C ends
set -euo pipefail
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
export PYTHONDONTWRITEBYTECODE=1

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-3}
CONNS=${CONNS:-50}
PAIRS=${PAIRS:-direct,nginx,haproxy,stunnel,meshguard}
BASE_PORT=${BASE_PORT:-18400}
MAX_FOREIGN=${MAX_FOREIGN:-0.10}
MAX_STEAL=${MAX_STEAL:-0.05}
SOAK=${SOAK:-0}
SOAK_INTERVAL=${SOAK_INTERVAL:-5}
PERF=${PERF:-1}
WORKERS=${WORKERS:-1}
INSTALL=1
BUILD=1
KEEP=0
HOLD=0
IDLE=
H2_CONNS=${H2_CONNS:-2}

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --quick) ROUNDS=1; DURATION=2; WARMUP=1 ;;
    --rounds) ROUNDS=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --warmup) WARMUP=$2; shift ;;
    --connections) CONNS=$2; shift ;;
    --pairs) PAIRS=$2; shift ;;
    --workers) WORKERS=$2; shift ;;
    --base-port) BASE_PORT=$2; shift ;;
    --max-foreign) MAX_FOREIGN=$2; shift ;;
    --max-steal) MAX_STEAL=$2; shift ;;
    --soak) SOAK=$2; shift ;;
    --soak-interval) SOAK_INTERVAL=$2; shift ;;
    --no-perf) PERF=0 ;;
    --no-install) INSTALL=0 ;;
    --no-build) BUILD=0 ;;
    --keep) KEEP=1 ;;
    --hold) HOLD=1 ;;
    --idle) IDLE=$2; shift ;;
    --h2-connections) H2_CONNS=$2; shift ;;
    -h|--help) usage 0 ;;
    *) echo "run.sh: unknown option $1" >&2; usage 2 ;;
  esac
  shift
done

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'run.sh: %s\n' "$*" >&2; exit 1; }

if [ "$SOAK" != 0 ]; then PAIRS=meshguard; fi
IFS=, read -r -a PAIR_LIST <<<"$PAIRS"
has_pair() { local p; for p in "${PAIR_LIST[@]}"; do [ "$p" = "$1" ] && return 0; done; return 1; }
for p in "${PAIR_LIST[@]}"; do
  case "$p" in
    direct|nginx|haproxy|stunnel|meshguard|meshguard-h1|bare|meshguard-policy|meshguard-jwt|meshguard-assert|meshguard-mc) ;;
    *) die "unknown pair $p" ;;
  esac
done
[[ "$WORKERS" =~ ^[1-9][0-9]*$ ]] || die "--workers wants a positive integer, not $WORKERS"
# The variants are reported against the plain meshguard pair of the same rounds.
MG_VARIANTS=(meshguard-policy meshguard-jwt meshguard-assert meshguard-mc)
for p in "${MG_VARIANTS[@]}"; do
  if has_pair "$p" && [ -n "$IDLE" ]; then die "$p is a load-test pair; not with --idle"; fi
  if has_pair "$p" && ! has_pair meshguard; then
    say "adding the meshguard pair: $p is reported against it, in the same rounds"
    PAIR_LIST=(meshguard "${PAIR_LIST[@]}")
    PAIRS=$(IFS=,; echo "${PAIR_LIST[*]}")
  fi
done

# ------------------------------------------------------------------ tools

need_pkgs=()
command -v wrk >/dev/null || need_pkgs+=(wrk)
command -v nginx >/dev/null || need_pkgs+=(nginx)
if has_pair haproxy; then command -v haproxy >/dev/null || need_pkgs+=(haproxy); fi
if has_pair stunnel; then command -v stunnel4 >/dev/null || command -v stunnel >/dev/null || need_pkgs+=(stunnel4); fi
command -v openssl >/dev/null || need_pkgs+=(openssl)
command -v curl >/dev/null || need_pkgs+=(curl)
command -v python3 >/dev/null || need_pkgs+=(python3)
command -v ss >/dev/null || need_pkgs+=(iproute2)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  [ "$INSTALL" = 1 ] || die "missing: ${need_pkgs[*]} (and --no-install given)"
  [ "$(id -u)" = 0 ] || die "missing: ${need_pkgs[*]}; run as root or install them"
  say "installing ${need_pkgs[*]}"
  # Keep package scripts from starting system services (nginx would listen
  # on 0.0.0.0:80): a policy-rc.d that refuses, only for this install.
  policy=/usr/sbin/policy-rc.d
  made_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
  fi
  apt_ok=0
  for attempt in 1 2; do
    if DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_pkgs[@]}" >&2; then apt_ok=1; break; fi
    apt-get update -q >&2 || true
  done
  if [ "$apt_ok" = 0 ] && [[ " ${need_pkgs[*]} " == *" nginx "* ]]; then
    # Older releases package the binary as nginx-light / nginx-core.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_pkgs[@]/#nginx/nginx-light}" >&2 && apt_ok=1
  fi
  [ "$made_policy" = 1 ] && rm -f "$policy"
  [ "$apt_ok" = 1 ] || die "apt-get install ${need_pkgs[*]} failed"
fi
STUNNEL=$(command -v stunnel4 || command -v stunnel || true)

# ------------------------------------------------------------------ meshguard

MESHGUARD_BIN=${MESHGUARD_BIN:-${CARGO_TARGET_DIR:-$REPO/target}/release/meshguard}
if [ "$BUILD" = 1 ]; then
  say "cargo build --release"
  built=0
  for attempt in 1 2 3 4 5; do
    if (cd "$REPO" && cargo build --release >&2); then built=1; break; fi
    say "build failed (attempt $attempt; someone may be mid-edit); retrying in 60 s"
    sleep 60
  done
  [ "$built" = 1 ] || die "cargo build --release keeps failing"
fi
[ -x "$MESHGUARD_BIN" ] || die "no meshguard binary at $MESHGUARD_BIN"
# The hot-code layout silently loses functions whose names change: say so.
while IFS= read -r line; do say "$line"; done < <(bash "$REPO/benches/layout/coverage.sh" "$MESHGUARD_BIN")
BARE_BIN=${BARE_BIN:-${CARGO_TARGET_DIR:-$REPO/target}/release/examples/bare_pair}
if has_pair bare; then
  if [ "$BUILD" = 1 ]; then
    say "cargo build --release --example bare_pair"
    (cd "$REPO" && cargo build --release --example bare_pair >&2) || die "cannot build the bare pair"
  fi
  [ -x "$BARE_BIN" ] || die "no bare_pair binary at $BARE_BIN"
fi

# ------------------------------------------------------------------ processes

TMP=$(mktemp -d /tmp/meshguard-pairs.XXXXXX)
PIDS=()
cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM
  set +e
  for pid in ${BENCH_PID:-} ${SLEEP_PID:-}; do
    kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  done
  for pid in "${PIDS[@]}"; do
    # Each server runs in its own session (setsid): its process group is its pid.
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  done
  # meshguard drains for 5 s after SIGTERM (readiness off, then close); give it 8.
  for _ in $(seq 1 80); do
    local alive=0
    for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for pid in "${PIDS[@]}"; do
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null
  done
  if [ "$KEEP" = 1 ]; then echo "kept $TMP" >&2; else rm -rf "$TMP"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME CMD...: runs CMD in its own session, logs to $TMP/NAME.log.
start() {
  local name=$1; shift
  setsid "$@" >"$TMP/$name.log" 2>&1 </dev/null &
  local pid=$!
  PIDS+=("$pid")
  eval "PID_${name//-/_}=$pid"
}
pid_of() { local v="PID_${1//-/_}"; echo "${!v}"; }

port_free() { [ -z "$(ss -Htln "sport = :$1" 2>/dev/null)" ]; }
wait_port() { # wait_port PORT NAME
  for _ in $(seq 1 100); do
    if ! port_free "$1"; then return 0; fi
    kill -0 "$(pid_of "$2")" 2>/dev/null || { cat "$TMP/$2.log" >&2; die "$2 exited"; }
    sleep 0.1
  done
  cat "$TMP/$2.log" >&2
  die "$2 does not listen on 127.0.0.1:$1"
}

# Connection limits: the load tests keep the peers' usual ones; the idle run
# raises every proxy's to the same value (and the open-files limit with it).
NGINX_CONNS=8192 HAP_MAXCONN=4096 NGINX_RLIMIT=
if [ -n "$IDLE" ]; then
  # The open-files limit is raised as far as the hard limit lets, and every
  # proxy may hold as many connections as haproxy can: it reserves two
  # descriptors per connection and refuses to start when the limit is lower.
  # (A hard limit of 20000, as in this sandbox, so allows ~9,900.)
  ulimit -n "$(ulimit -Hn)"
  IDLE_MAX=$(( ($(ulimit -n) - 200) / 2 ))
  NGINX_CONNS=$IDLE_MAX HAP_MAXCONN=$IDLE_MAX
  NGINX_RLIMIT="worker_rlimit_nofile $(ulimit -n);
"
fi

B=$BASE_PORT
P_NGINX_OUT=$((B + 10)) P_NGINX_IN=$((B + 11))
P_HAP_OUT=$((B + 20)) P_HAP_IN=$((B + 21))
P_ST_OUT=$((B + 30)) P_ST_IN=$((B + 31))
P_MG_OUT=$((B + 40)) P_MG_IN=$((B + 41)) P_MG_ADMIN_OUT=$((B + 42)) P_MG_ADMIN_IN=$((B + 43))
P_MG2_OUT=$((B + 50)) P_MG2_IN=$((B + 51)) P_MG2_ADMIN_OUT=$((B + 52)) P_MG2_ADMIN_IN=$((B + 53))
P_BARE_OUT=$((B + 60)) P_BARE_IN=$((B + 61))
# The meshguard variants: out, in, admin out, admin in at +70, +80, +90.
P_MGP_OUT=$((B + 70)) P_MGP_IN=$((B + 71)) P_MGP_ADMIN_OUT=$((B + 72)) P_MGP_ADMIN_IN=$((B + 73))
P_MGJ_OUT=$((B + 80)) P_MGJ_IN=$((B + 81)) P_MGJ_ADMIN_OUT=$((B + 82)) P_MGJ_ADMIN_IN=$((B + 83))
P_MGA_OUT=$((B + 90)) P_MGA_IN=$((B + 91)) P_MGA_ADMIN_OUT=$((B + 92)) P_MGA_ADMIN_IN=$((B + 93))
P_MGC_OUT=$((B + 100)) P_MGC_IN=$((B + 101)) P_MGC_ADMIN_OUT=$((B + 102)) P_MGC_ADMIN_IN=$((B + 103))
for p in $P_MGC_OUT $P_MGC_IN $P_MGC_ADMIN_OUT $P_MGC_ADMIN_IN $P_MGP_OUT $P_MGP_IN $P_MGP_ADMIN_OUT $P_MGP_ADMIN_IN $P_MGJ_OUT $P_MGJ_IN $P_MGJ_ADMIN_OUT $P_MGJ_ADMIN_IN \
  $P_MGA_OUT $P_MGA_IN $P_MGA_ADMIN_OUT $P_MGA_ADMIN_IN $P_BARE_OUT $P_BARE_IN $P_MG2_OUT $P_MG2_IN $P_MG2_ADMIN_OUT $P_MG2_ADMIN_IN $B $P_NGINX_OUT $P_NGINX_IN $P_HAP_OUT $P_HAP_IN $P_ST_OUT $P_ST_IN $P_MG_OUT $P_MG_IN $P_MG_ADMIN_OUT $P_MG_ADMIN_IN; do
  port_free "$p" || die "port 127.0.0.1:$p is in use; pick another --base-port"
done

# ------------------------------------------------------------------ certs

say "dev certificates (meshguard certs dev) in $TMP/certs"
"$MESHGUARD_BIN" certs dev --out "$TMP/certs" --workload default/client --workload default/server >"$TMP/certs.log" 2>&1 \
  || { cat "$TMP/certs.log" >&2; die "meshguard certs dev failed"; }
# A second, unrelated CA: its client cert must be refused by every inbound.
"$MESHGUARD_BIN" certs dev --out "$TMP/rogue" --workload default/client >>"$TMP/certs.log" 2>&1
CA=$TMP/certs/ca.crt
CC=$TMP/certs/default/client/tls.crt CK=$TMP/certs/default/client/tls.key
SC=$TMP/certs/default/server/tls.crt SK=$TMP/certs/default/server/tls.key
SERVER_DNS=server.default.svc.cluster.local
SERVER_ID=spiffe://cluster.local/ns/default/sa/server
# haproxy wants certificate and key in one PEM: the same files, concatenated.
cat "$CC" "$CK" >"$TMP/certs/client.pem"
cat "$SC" "$SK" >"$TMP/certs/server.pem"

MARKER="meshguard-pairs-backend-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"

# ------------------------------------------------------------------ backend

nginx_common() { # nginx_common DIR [WORKERS] (the backend keeps 1)
  cat <<EOF
daemon off;
master_process on;
worker_processes ${2:-1};
pid $1/nginx.pid;
error_log $1/error.log warn;
${NGINX_RLIMIT}events { worker_connections $NGINX_CONNS; }
EOF
}
nginx_http_common() { # nginx_http_common DIR
  cat <<EOF
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 75s;
  client_body_temp_path $1/body;
  proxy_temp_path $1/proxy;
  fastcgi_temp_path $1/fastcgi;
  uwsgi_temp_path $1/uwsgi;
  scgi_temp_path $1/scgi;
EOF
}
run_nginx() { # run_nginx NAME (config in $TMP/NAME/nginx.conf)
  nginx -t -q -e "$TMP/$1/error.log" -p "$TMP/$1" -c "$TMP/$1/nginx.conf" >"$TMP/$1.check" 2>&1 \
    || { cat "$TMP/$1.check" >&2; die "nginx config $1 invalid"; }
  start "$1" nginx -e "$TMP/$1/error.log" -p "$TMP/$1" -c "$TMP/$1/nginx.conf"
}

mkdir -p "$TMP/backend"
{
  nginx_common "$TMP/backend"
  echo "http {"
  nginx_http_common "$TMP/backend"
  cat <<EOF
  server {
    listen 127.0.0.1:$B;
    location / { default_type text/plain; return 200 "$MARKER\n"; }
    # For the meshguard-assert check: the assertion the app received.
    location = /assert-check { default_type text/plain; return 200 "\$http_x_meshguard_assertion\n"; }
  }
}
EOF
} >"$TMP/backend/nginx.conf"
say "backend nginx on 127.0.0.1:$B"
run_nginx backend
wait_port "$B" backend

# ------------------------------------------------------------------ pairs

if has_pair nginx; then
  for side in out in; do
    mkdir -p "$TMP/nginx-$side"
    {
      nginx_common "$TMP/nginx-$side" "$WORKERS"
      echo "http {"
      nginx_http_common "$TMP/nginx-$side"
      if [ "$side" = out ]; then
        cat <<EOF
  upstream mtls_in { server 127.0.0.1:$P_NGINX_IN; keepalive 128; keepalive_requests 10000000; keepalive_timeout 75s; }
  server {
    listen 127.0.0.1:$P_NGINX_OUT;
    location / {
      proxy_pass https://mtls_in;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_ssl_certificate $CC;
      proxy_ssl_certificate_key $CK;
      proxy_ssl_trusted_certificate $CA;
      proxy_ssl_verify on;
      proxy_ssl_verify_depth 2;
      proxy_ssl_name $SERVER_DNS;
      proxy_ssl_server_name on;
      proxy_ssl_protocols TLSv1.3;
      proxy_ssl_session_reuse on;
    }
  }
}
EOF
      else
        cat <<EOF
  upstream app { server 127.0.0.1:$B; keepalive 128; keepalive_requests 10000000; keepalive_timeout 75s; }
  server {
    listen 127.0.0.1:$P_NGINX_IN ssl;
    ssl_certificate $SC;
    ssl_certificate_key $SK;
    ssl_client_certificate $CA;
    ssl_verify_client on;
    ssl_verify_depth 2;
    ssl_protocols TLSv1.3;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
      fi
    } >"$TMP/nginx-$side/nginx.conf"
  done
  say "nginx pair: 127.0.0.1:$P_NGINX_OUT → mTLS 127.0.0.1:$P_NGINX_IN"
  run_nginx nginx-in
  run_nginx nginx-out
  wait_port "$P_NGINX_IN" nginx-in
  wait_port "$P_NGINX_OUT" nginx-out
fi

if has_pair haproxy; then
  # global and defaults, shared with benches/protocols/run.py
  hap_common() {
    sed "s/^  maxconn .*/  maxconn $HAP_MAXCONN/; s/^  nbthread .*/  nbthread $WORKERS/" "$HERE/haproxy-common.cfg"
  }
  {
    hap_common
    cat <<EOF
frontend out
  bind 127.0.0.1:$P_HAP_OUT
  default_backend mtls_in
backend mtls_in
  http-reuse always
  server in 127.0.0.1:$P_HAP_IN ssl crt $TMP/certs/client.pem ca-file $CA verify required verifyhost $SERVER_DNS sni str($SERVER_DNS) alpn http/1.1
EOF
  } >"$TMP/haproxy-out.cfg"
  {
    hap_common
    cat <<EOF
frontend in
  bind 127.0.0.1:$P_HAP_IN ssl crt $TMP/certs/server.pem ca-file $CA verify required alpn http/1.1
  default_backend app
backend app
  http-reuse always
  server app 127.0.0.1:$B
EOF
  } >"$TMP/haproxy-in.cfg"
  for side in out in; do
    haproxy -c -q -f "$TMP/haproxy-$side.cfg" >"$TMP/haproxy-$side.check" 2>&1 \
      || { cat "$TMP/haproxy-$side.check" >&2; die "haproxy config $side invalid"; }
  done
  say "haproxy pair: 127.0.0.1:$P_HAP_OUT → mTLS 127.0.0.1:$P_HAP_IN"
  start haproxy-in haproxy -db -f "$TMP/haproxy-in.cfg"
  start haproxy-out haproxy -db -f "$TMP/haproxy-out.cfg"
  wait_port "$P_HAP_IN" haproxy-in
  wait_port "$P_HAP_OUT" haproxy-out
fi

if has_pair stunnel; then
  [ -n "$STUNNEL" ] || die "stunnel not found"
  cat >"$TMP/stunnel-out.conf" <<EOF
foreground = yes
pid =
syslog = no
debug = 3
[out]
client = yes
accept = 127.0.0.1:$P_ST_OUT
connect = 127.0.0.1:$P_ST_IN
cert = $CC
key = $CK
CAfile = $CA
verifyChain = yes
checkHost = $SERVER_DNS
sni = $SERVER_DNS
sslVersionMin = TLSv1.3
EOF
  cat >"$TMP/stunnel-in.conf" <<EOF
foreground = yes
pid =
syslog = no
debug = 3
[in]
accept = 127.0.0.1:$P_ST_IN
connect = 127.0.0.1:$B
cert = $SC
key = $SK
CAfile = $CA
verifyChain = yes
requireCert = yes
sslVersionMin = TLSv1.3
EOF
  say "stunnel pair: 127.0.0.1:$P_ST_OUT → mTLS 127.0.0.1:$P_ST_IN"
  start stunnel-in "$STUNNEL" "$TMP/stunnel-in.conf"
  start stunnel-out "$STUNNEL" "$TMP/stunnel-out.conf"
  wait_port "$P_ST_IN" stunnel-in
  wait_port "$P_ST_OUT" stunnel-out
fi

mg_ready() { # mg_ready ADMIN_PORT NAME
  for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "http://127.0.0.1:$1/ready" 2>/dev/null && return 0
    kill -0 "$(pid_of "$2")" 2>/dev/null || break
    sleep 0.1
  done
  cat "$TMP/$2.log" >&2
  die "$2 not ready"
}
export MESHGUARD_LOG=${MESHGUARD_LOG:-warn}
if has_pair meshguard; then
  say "meshguard pair: 127.0.0.1:$P_MG_OUT → mTLS 127.0.0.1:$P_MG_IN ($MESHGUARD_BIN)"
  if [ -z "$IDLE" ]; then
    start meshguard-in "$MESHGUARD_BIN" --log-format json run --cert "$SC" --key "$SK" --bundle "$CA" \
      --inbound "127.0.0.1:$P_MG_IN" --app "127.0.0.1:$B" --admin "127.0.0.1:$P_MG_ADMIN_IN" --workers "$WORKERS"
    start meshguard-out "$MESHGUARD_BIN" --log-format json run --cert "$CC" --key "$CK" --bundle "$CA" \
      --outbound "127.0.0.1:$P_MG_OUT" --peer "127.0.0.1:$P_MG_IN" --peer-id "$SERVER_ID" \
      --admin "127.0.0.1:$P_MG_ADMIN_OUT" --workers "$WORKERS"
  else
    # The same pair from config files: the flags have no connection limit.
    cat >"$TMP/meshguard-in.yaml" <<EOF
identity: {cert: $SC, key: $SK, bundle: $CA}
inbound: {listen: 127.0.0.1:$P_MG_IN, app: 127.0.0.1:$B}
admin: {listen: 127.0.0.1:$P_MG_ADMIN_IN}
runtime: {workers: $WORKERS}
limits: {max_connections: $IDLE_MAX}
EOF
    cat >"$TMP/meshguard-out.yaml" <<EOF
identity: {cert: $CC, key: $CK, bundle: $CA}
outbound:
  routes:
    - {listen: 127.0.0.1:$P_MG_OUT, peer: 127.0.0.1:$P_MG_IN, identity: $SERVER_ID}
admin: {listen: 127.0.0.1:$P_MG_ADMIN_OUT}
runtime: {workers: $WORKERS}
limits: {max_connections: $IDLE_MAX}
EOF
    start meshguard-in "$MESHGUARD_BIN" --log-format json run --config "$TMP/meshguard-in.yaml"
    start meshguard-out "$MESHGUARD_BIN" --log-format json run --config "$TMP/meshguard-out.yaml"
  fi
  mg_ready "$P_MG_ADMIN_IN" meshguard-in
  mg_ready "$P_MG_ADMIN_OUT" meshguard-out
fi
if has_pair meshguard-h1; then
  # Not in the default list: the same inbound, an outbound from a config file
  # with `protocol: http1` (a pool of HTTP/1.1 connections on the mTLS hop;
  # the default pair `meshguard` multiplexes HTTP/2).
  cat >"$TMP/meshguard-h1-out.yaml" <<EOF
identity:
  cert: $CC
  key: $CK
  bundle: $CA
outbound:
  protocol: http1
  routes:
    - listen: 127.0.0.1:$P_MG2_OUT
      peer: 127.0.0.1:$P_MG2_IN
      identity: $SERVER_ID
admin:
  listen: 127.0.0.1:$P_MG2_ADMIN_OUT
runtime:
  workers: $WORKERS
EOF
  say "meshguard-h1 pair: 127.0.0.1:$P_MG2_OUT → mTLS (HTTP/1.1) 127.0.0.1:$P_MG2_IN"
  start meshguard-h1-in "$MESHGUARD_BIN" --log-format json run --cert "$SC" --key "$SK" --bundle "$CA" \
    --inbound "127.0.0.1:$P_MG2_IN" --app "127.0.0.1:$B" --admin "127.0.0.1:$P_MG2_ADMIN_IN" --workers "$WORKERS"
  start meshguard-h1-out "$MESHGUARD_BIN" --log-format json run --config "$TMP/meshguard-h1-out.yaml"
  mg_ready "$P_MG2_ADMIN_IN" meshguard-h1-in
  mg_ready "$P_MG2_ADMIN_OUT" meshguard-h1-out
fi
if has_pair meshguard-mc; then
  # The meshguard pair with `outbound.h2_connections_per_peer: $H2_CONNS`: the
  # requests take that many multiplexed HTTP/2 connections in turn.
  cat >"$TMP/meshguard-mc-out.yaml" <<EOF
identity: {cert: $CC, key: $CK, bundle: $CA}
outbound:
  h2_connections_per_peer: $H2_CONNS
  routes:
    - {listen: 127.0.0.1:$P_MGC_OUT, peer: 127.0.0.1:$P_MGC_IN, identity: $SERVER_ID}
admin: {listen: 127.0.0.1:$P_MGC_ADMIN_OUT}
runtime: {workers: $WORKERS}
EOF
  say "meshguard-mc pair: 127.0.0.1:$P_MGC_OUT → mTLS ($H2_CONNS HTTP/2 connections) 127.0.0.1:$P_MGC_IN"
  start meshguard-mc-in "$MESHGUARD_BIN" --log-format json run --cert "$SC" --key "$SK" --bundle "$CA" \
    --inbound "127.0.0.1:$P_MGC_IN" --app "127.0.0.1:$B" --admin "127.0.0.1:$P_MGC_ADMIN_IN" --workers "$WORKERS"
  start meshguard-mc-out "$MESHGUARD_BIN" --log-format json run --config "$TMP/meshguard-mc-out.yaml"
  mg_ready "$P_MGC_ADMIN_IN" meshguard-mc-in
  mg_ready "$P_MGC_ADMIN_OUT" meshguard-mc-out
fi

# ---- the meshguard feature variants (issue 21's policy figure, issues 15 and 16)
# Each is the `meshguard` pair with one thing added on the inbound, which runs
# from a config file; the outbound is started exactly as meshguard's.
# write_policy, make_jwt: shared with benches/startup.sh.
source "$HERE/variants-lib.sh"

# start_mg_variant NAME OUT IN ADMIN_OUT ADMIN_IN: the config of the inbound is
# $TMP/NAME-in.yaml (written by the caller); the outbound is meshguard's.
start_mg_variant() {
  local name=$1 out=$2 in=$3 admin_out=$4 admin_in=$5
  say "$name pair: 127.0.0.1:$out → mTLS 127.0.0.1:$in (inbound: $TMP/$name-in.yaml)"
  start "$name-in" "$MESHGUARD_BIN" --log-format json run --config "$TMP/$name-in.yaml"
  start "$name-out" "$MESHGUARD_BIN" --log-format json run --cert "$CC" --key "$CK" --bundle "$CA" \
    --outbound "127.0.0.1:$out" --peer "127.0.0.1:$in" --peer-id "$SERVER_ID" \
    --admin "127.0.0.1:$admin_out" --workers "$WORKERS"
  mg_ready "$admin_in" "$name-in"
  mg_ready "$admin_out" "$name-out"
}
mg_inbound_yaml() { # mg_inbound_yaml IN ADMIN_IN: the parts every variant shares
  cat <<EOF
identity: {cert: $SC, key: $SK, bundle: $CA}
admin: {listen: 127.0.0.1:$2}
runtime: {workers: $WORKERS}
inbound:
  listen: 127.0.0.1:$1
  app: 127.0.0.1:$B
EOF
}
if has_pair meshguard-policy; then
  write_policy "$TMP/meshguard-policy.policy.yaml"
  { mg_inbound_yaml "$P_MGP_IN" "$P_MGP_ADMIN_IN"
    echo "  policy: $TMP/meshguard-policy.policy.yaml"; } >"$TMP/meshguard-policy-in.yaml"
  start_mg_variant meshguard-policy "$P_MGP_OUT" "$P_MGP_IN" "$P_MGP_ADMIN_OUT" "$P_MGP_ADMIN_IN"
fi
JWT_TOKEN=
if has_pair meshguard-jwt; then
  make_jwt "$TMP/jwt"
  JWT_TOKEN=$(cat "$TMP/jwt/token")
  write_policy "$TMP/meshguard-jwt.policy.yaml" jwt
  { mg_inbound_yaml "$P_MGJ_IN" "$P_MGJ_ADMIN_IN"
    echo "  policy: $TMP/meshguard-jwt.policy.yaml"
    jwt_inbound_yaml "$TMP/jwt/jwks.json"
  } >"$TMP/meshguard-jwt-in.yaml"
  # wrk sends the token on every request: a per-pair script, the reporter
  # of wrk-json.lua after one header line.
  { printf 'wrk.headers["Authorization"] = "Bearer %s"\n' "$JWT_TOKEN"; cat "$HERE/wrk-json.lua"; } \
    >"$TMP/wrk-meshguard-jwt.lua"
  start_mg_variant meshguard-jwt "$P_MGJ_OUT" "$P_MGJ_IN" "$P_MGJ_ADMIN_OUT" "$P_MGJ_ADMIN_IN"
fi
if has_pair meshguard-assert; then
  mkdir -p "$TMP/meshguard-assert"
  { mg_inbound_yaml "$P_MGA_IN" "$P_MGA_ADMIN_IN"
    echo "assertion: {key_file: $TMP/meshguard-assert/assertion.keys}"; } >"$TMP/meshguard-assert-in.yaml"
  start_mg_variant meshguard-assert "$P_MGA_OUT" "$P_MGA_IN" "$P_MGA_ADMIN_OUT" "$P_MGA_ADMIN_IN"
fi

if has_pair bare; then
  say "bare pair: 127.0.0.1:$P_BARE_OUT → mTLS (HTTP/2) 127.0.0.1:$P_BARE_IN ($BARE_BIN)"
  start bare-in "$BARE_BIN" in "127.0.0.1:$P_BARE_IN" "127.0.0.1:$B" "$SC" "$SK" "$CA"
  wait_port "$P_BARE_IN" bare-in
  start bare-out "$BARE_BIN" out "127.0.0.1:$P_BARE_OUT" "127.0.0.1:$P_BARE_IN" "$CC" "$CK" "$CA" "$SERVER_DNS"
  wait_port "$P_BARE_OUT" bare-out
fi

# ------------------------------------------------------------------ checks

REQ='GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n'
# s_client_get PORT [openssl options...]: stdout+stderr of one request over TLS
# ($EXTRA_HDR, e.g. the meshguard-jwt pair's token, goes into the request).
EXTRA_HDR=
s_client_get() {
  local port=$1; shift
  local req=$REQ
  [ -n "$EXTRA_HDR" ] && req="GET / HTTP/1.1\r\nHost: bench\r\n$EXTRA_HDR\r\nConnection: close\r\n\r\n"
  printf "$req" | timeout 10 openssl s_client -connect "127.0.0.1:$port" -servername "$SERVER_DNS" \
    -CAfile "$CA" -verify_return_error -brief -ign_eof "$@" 2>&1 || true
}
CHECKS=()
check() { # check DESCRIPTION OK(0/1)
  if [ "$2" = 1 ]; then CHECKS+=("ok   $1"); echo "  ok   $1" >&2
  else CHECKS+=("FAIL $1"); echo "  FAIL $1" >&2; FAILED=1; fi
}
FAILED=0
http_code() { curl -sS -o /dev/null -w '%{http_code}' --max-time 10 "$@" 2>/dev/null || true; }
# variant_checks PAIR OUT: the feature a variant adds is really in force.
variant_checks() {
  local pair=$1 out=$2 code body
  case "$pair" in
    meshguard-policy|meshguard-jwt)
      code=$(http_code "${curl_hdr[@]}" "http://127.0.0.1:$out/admin/x")
      check "$pair: the policy denies GET /admin/x (403)" "$([ "$code" = 403 ] && echo 1 || echo 0)"
      code=$(http_code "${curl_hdr[@]}" -X DELETE "http://127.0.0.1:$out/")
      check "$pair: the policy denies DELETE / (403)" "$([ "$code" = 403 ] && echo 1 || echo 0)" ;;
  esac
  case "$pair" in
    meshguard-jwt)
      code=$(http_code "http://127.0.0.1:$out/")
      check "$pair: without the token 401" "$([ "$code" = 401 ] && echo 1 || echo 0)"
      # One character of the signature changed (not the last: it carries padding bits).
      local bad=${JWT_TOKEN:0:${#JWT_TOKEN}-10} c=${JWT_TOKEN: -10:1}
      [ "$c" = A ] && bad+=B || bad+=A
      bad+=${JWT_TOKEN: -9}
      code=$(http_code -H "Authorization: Bearer $bad" "http://127.0.0.1:$out/")
      check "$pair: a token with a tampered signature 401" "$([ "$code" = 401 ] && echo 1 || echo 0)"
      curl -sS -o /dev/null --max-time 10 "${curl_hdr[@]}" "http://127.0.0.1:$out/" || true
      body=$(curl -sS --max-time 10 "http://127.0.0.1:$P_MGJ_ADMIN_IN/metrics" || true)
      check "$pair: the repeated token is served from the verified-token cache" \
        "$(grep -E '^meshguard_jwt_validations_total\{[^}]*result="cached"[^}]*\} [1-9]' <<<"$body" >/dev/null && echo 1 || echo 0)"
      check "$pair: the rate limit has refused nothing" \
        "$(grep -q '^meshguard_rate_limited_total{' <<<"$body" && echo 0 || echo 1)" ;;
    meshguard-assert)
      body=$(curl -sS --max-time 10 "http://127.0.0.1:$out/assert-check" || true)
      check "$pair: the app receives x-meshguard-assertion (v1.…)" "$([[ "$body" == v1.*.*.*.*.* ]] && echo 1 || echo 0)"
      check "$pair: the assertion key file exists, mode 0400" \
        "$([ "$(stat -c %a "$TMP/meshguard-assert/assertion.keys" 2>/dev/null)" = 400 ] && echo 1 || echo 0)" ;;
  esac
}
say "checking that every pair really does mTLS"
body=$(curl -fsS "http://127.0.0.1:$B/" || true)
check "direct: backend answers its marker" "$([ "$body" = "$MARKER" ] && echo 1 || echo 0)"
for pair in "${PAIR_LIST[@]}"; do
  case "$pair" in
    direct) continue ;;
    nginx) in=$P_NGINX_IN out=$P_NGINX_OUT ;;
    haproxy) in=$P_HAP_IN out=$P_HAP_OUT ;;
    stunnel) in=$P_ST_IN out=$P_ST_OUT ;;
    meshguard) in=$P_MG_IN out=$P_MG_OUT ;;
    meshguard-h1) in=$P_MG2_IN out=$P_MG2_OUT ;;
    bare) in=$P_BARE_IN out=$P_BARE_OUT ;;
    meshguard-policy) in=$P_MGP_IN out=$P_MGP_OUT ;;
    meshguard-jwt) in=$P_MGJ_IN out=$P_MGJ_OUT ;;
    meshguard-assert) in=$P_MGA_IN out=$P_MGA_OUT ;;
    meshguard-mc) in=$P_MGC_IN out=$P_MGC_OUT ;;
  esac
  EXTRA_HDR=
  [ "$pair" = meshguard-jwt ] && EXTRA_HDR="Authorization: Bearer $JWT_TOKEN"
  r=$(s_client_get "$in" -cert "$CC" -key "$CK")
  check "$pair inbound: TLS 1.3 with the client SVID returns the backend body" \
    "$(grep -q "$MARKER" <<<"$r" && grep -q 'Protocol version: TLSv1.3' <<<"$r" && echo 1 || echo 0)"
  r=$(s_client_get "$in")
  check "$pair inbound: without a client certificate no backend body" "$(grep -q "$MARKER" <<<"$r" && echo 0 || echo 1)"
  r=$(s_client_get "$in" -cert "$TMP/rogue/default/client/tls.crt" -key "$TMP/rogue/default/client/tls.key")
  check "$pair inbound: client cert from another CA gets no backend body" "$(grep -q "$MARKER" <<<"$r" && echo 0 || echo 1)"
  r=$(s_client_get "$in" -cert "$CC" -key "$CK" -tls1_2)
  check "$pair inbound: TLS 1.2 refused" "$(grep -q "$MARKER" <<<"$r" && echo 0 || echo 1)"
  curl_hdr=()
  [ -n "$EXTRA_HDR" ] && curl_hdr=(-H "$EXTRA_HDR")
  body=$(curl -sS --max-time 10 "${curl_hdr[@]}" "http://127.0.0.1:$out/" || true)
  check "$pair: request through the pair returns the backend body" "$([ "$body" = "$MARKER" ] && echo 1 || echo 0)"
  variant_checks "$pair" "$out"
done
EXTRA_HDR=
printf '%s\n' "${CHECKS[@]}" >"$TMP/checks.txt"
[ "$FAILED" = 0 ] || die "mTLS checks failed; not measuring (logs in $TMP with --keep)"

# ------------------------------------------------------------------ measure

pids_json() { # pids_json out-name in-name
  printf '{"out": %s, "in": %s}' "$(pid_of "$1")" "$(pid_of "$2")"
}
{
  echo '{"pairs": ['
  sep=""
  for pair in "${PAIR_LIST[@]}"; do
    case "$pair" in
      direct) url=http://127.0.0.1:$B/ in=$B procs='{}' ;;
      nginx) url=http://127.0.0.1:$P_NGINX_OUT/ in=$P_NGINX_IN procs=$(pids_json nginx-out nginx-in) ;;
      haproxy) url=http://127.0.0.1:$P_HAP_OUT/ in=$P_HAP_IN procs=$(pids_json haproxy-out haproxy-in) ;;
      stunnel) url=http://127.0.0.1:$P_ST_OUT/ in=$P_ST_IN procs=$(pids_json stunnel-out stunnel-in) ;;
      meshguard) url=http://127.0.0.1:$P_MG_OUT/ in=$P_MG_IN procs=$(pids_json meshguard-out meshguard-in) ;;
      meshguard-h1) url=http://127.0.0.1:$P_MG2_OUT/ in=$P_MG2_IN procs=$(pids_json meshguard-h1-out meshguard-h1-in) ;;
      bare) url=http://127.0.0.1:$P_BARE_OUT/ in=$P_BARE_IN procs=$(pids_json bare-out bare-in) ;;
      meshguard-policy) url=http://127.0.0.1:$P_MGP_OUT/ in=$P_MGP_IN procs=$(pids_json meshguard-policy-out meshguard-policy-in) ;;
      meshguard-jwt) url=http://127.0.0.1:$P_MGJ_OUT/ in=$P_MGJ_IN procs=$(pids_json meshguard-jwt-out meshguard-jwt-in) ;;
      meshguard-assert) url=http://127.0.0.1:$P_MGA_OUT/ in=$P_MGA_IN procs=$(pids_json meshguard-assert-out meshguard-assert-in) ;;
      meshguard-mc) url=http://127.0.0.1:$P_MGC_OUT/ in=$P_MGC_IN procs=$(pids_json meshguard-mc-out meshguard-mc-in) ;;
    esac
    # A pair whose requests need more than the plain GET has a wrk script of its own.
    lua=
    [ -f "$TMP/wrk-$pair.lua" ] && lua=", \"lua\": \"$TMP/wrk-$pair.lua\""
    printf '%s{"name": "%s", "url": "%s", "in_addr": "127.0.0.1:%s", "proxies": %s%s}\n' "$sep" "$pair" "$url" "$in" "$procs" "$lua"
    sep=","
  done
  echo "],"
  printf '"backend_pids": [%s],\n' "$(pid_of backend)"
  printf '"workers": %s,\n' "$WORKERS"
  printf '"tls": {"ca": "%s", "cert": "%s", "key": "%s", "server_name": "%s"},\n' "$CA" "$CC" "$CK" "$SERVER_DNS"
  python3 - "$MESHGUARD_BIN" "$STUNNEL" "$REPO" "$TMP/checks.txt" <<'EOF'
import json, os, platform, subprocess, sys
def out(cmd):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (r.stdout + r.stderr).strip()
    except Exception as e:
        return f"? ({e})"
model = "?"
with open("/proc/cpuinfo") as f:
    for line in f:
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
mem = "?"
with open("/proc/meminfo") as f:
    mem = f.readline().split()[1]
git = out(["git", "-C", sys.argv[3], "rev-parse", "--short", "HEAD"])
dirty = out(["git", "-C", sys.argv[3], "status", "--porcelain", "--untracked-files=no", "src", "Cargo.toml", "Cargo.lock"])
machine = {
    "nproc": os.cpu_count(),
    "cpu_model": model,
    "kernel": platform.release(),
    "mem_gib": round(int(mem) / 2**20, 1),
    "loadavg": open("/proc/loadavg").read().split()[:3],
}
versions = {
    "meshguard": git + ("+local-changes" if dirty else ""),
    "nginx": out(["nginx", "-v"]).split("/")[-1],
    "haproxy": out(["haproxy", "-v"]).splitlines()[0].split()[2],
    "stunnel": out([sys.argv[2], "-version"]).split("stunnel ")[-1].split()[0] if sys.argv[2] else "?",
    "wrk": out(["wrk", "-v"]).split()[1],
    "openssl": out(["openssl", "version"]).split()[1],
}
print('"machine": ' + json.dumps(machine) + ',')
print('"versions": ' + json.dumps(versions) + ',')
print('"checks": ' + json.dumps(open(sys.argv[4]).read().splitlines()))
EOF
  echo "}"
} >"$TMP/spec.json"

if [ "$HOLD" = 1 ]; then
  say "holding; Ctrl-C stops everything. Spec (urls, pids): $TMP/spec.json"
  python3 -c 'import json,sys
for p in json.load(open(sys.argv[1]))["pairs"]: print("  %-10s %-26s pids %s" % (p["name"], p["url"], p["proxies"]))' "$TMP/spec.json" >&2
  while :; do sleep 3600 & SLEEP_PID=$!; wait "$SLEEP_PID"; done
fi
if [ -n "$IDLE" ]; then
  OUT="$REPO/benches/results/idle-$(date -u +%Y%m%dT%H%M%SZ)"
  say "idle connections: ${IDLE%,*} client, ${IDLE#*,} mTLS, per pair"
  python3 "$HERE/idle.py" --spec "$TMP/spec.json" --clients "${IDLE%,*}" --mtls "${IDLE#*,}" \
    --out-json "$OUT.json" --out-md "$OUT.md"
  exit 0
fi
PERF_FLAG=--no-perf
if [ "$PERF" = 1 ] && command -v perf >/dev/null && perf stat -e raw_syscalls:sys_enter true >/dev/null 2>&1; then
  PERF_FLAG=--perf
fi
mkdir -p "$REPO/benches/results"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
if [ "$SOAK" != 0 ]; then
  OUT="$REPO/benches/results/soak-$STAMP"
  say "soak: meshguard pair for $SOAK s"
  python3 "$HERE/bench.py" soak --spec "$TMP/spec.json" --pair meshguard --seconds "$SOAK" \
    --interval "$SOAK_INTERVAL" --conns "$CONNS" --out-json "$OUT.json" --out-md "$OUT.md" \
    --max-foreign "$MAX_FOREIGN" --max-steal "$MAX_STEAL" &
else
  OUT="$REPO/benches/results/pairs-$STAMP"
  say "measuring: pairs ${PAIRS}; $ROUNDS rounds × $DURATION s, warm-up $WARMUP s, $CONNS connections"
  python3 "$HERE/bench.py" run --spec "$TMP/spec.json" --rounds "$ROUNDS" --duration "$DURATION" \
    --warmup "$WARMUP" --conns "$CONNS" $PERF_FLAG --out-json "$OUT.json" --out-md "$OUT.md" \
    --max-foreign "$MAX_FOREIGN" --max-steal "$MAX_STEAL" &
fi
# In the background and waited for, so that Ctrl-C / SIGTERM reach the trap at once.
BENCH_PID=$!
wait "$BENCH_PID" || die "measurement failed"
BENCH_PID=
say "wrote $OUT.json and $OUT.md"
