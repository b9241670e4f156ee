#!/usr/bin/env bash
# Start-up time and binary size of meshguard, beside nginx's and haproxy's
# start-up (issue 21 "Startup and size"). See benches/README.md.
#
#   benches/startup.sh                # 20 starts per case
#   benches/startup.sh --runs 5 --no-build
#
# Cases (each a fresh process, killed once ready; cases interleaved):
#   meshguard-in       the pairs' inbound: `meshguard run --inbound … --app …`
#                      (flags), exec → admin /ready 200
#   meshguard-out      the pairs' outbound (flags: --outbound --peer --peer-id)
#   meshguard-in-full  the inbound of the meshguard-jwt pair plus the identity
#                      assertion: config file, policy with a jwt rule and a
#                      rate limit, JWKS file, assertion key file written
#   nginx-in           the pairs' nginx inbound (TLS, client cert verified),
#                      exec → port accepts
#   haproxy-in         the pairs' haproxy inbound, exec → port accepts
# plus the release binary's size as built and stripped (a copy, in a
# temporary directory), and `size` of its sections.
#
# Options (environment variable in brackets):
#   --runs N [RUNS=20]   --base-port P [BASE_PORT=18700] (uses P .. P+9)
#   --no-install, --no-build (use $MESHGUARD_BIN or target/release/meshguard)
#   --keep    keep the temporary directory
# Writes benches/results/startup-<UTC stamp>.{md,json}.
set -euo pipefail
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
export PYTHONDONTWRITEBYTECODE=1

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
RUNS=${RUNS:-20}
BASE_PORT=${BASE_PORT:-18700}
INSTALL=1 BUILD=1 KEEP=0

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS=$2; shift ;;
    --base-port) BASE_PORT=$2; shift ;;
    --no-install) INSTALL=0 ;;
    --no-build) BUILD=0 ;;
    --keep) KEEP=1 ;;
    -h|--help) usage 0 ;;
    *) echo "startup.sh: unknown option $1" >&2; usage 2 ;;
  esac
  shift
done
say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'startup.sh: %s\n' "$*" >&2; exit 1; }

need=()
command -v nginx >/dev/null || need+=(nginx)
command -v haproxy >/dev/null || need+=(haproxy)
command -v openssl >/dev/null || need+=(openssl)
command -v python3 >/dev/null || need+=(python3)
command -v strip >/dev/null && command -v size >/dev/null || need+=(binutils)
if [ ${#need[@]} -gt 0 ]; then
  [ "$INSTALL" = 1 ] || die "missing: ${need[*]} (and --no-install given)"
  [ "$(id -u)" = 0 ] || die "missing: ${need[*]}; run as root or install them"
  # As run.sh: keep package scripts from starting nginx as a service.
  policy=/usr/sbin/policy-rc.d made=0
  [ -e "$policy" ] || { printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made=1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >&2 || { apt-get update -q >&2;
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >&2; }
  [ "$made" = 1 ] && rm -f "$policy"
fi

MESHGUARD_BIN=${MESHGUARD_BIN:-${CARGO_TARGET_DIR:-$REPO/target}/release/meshguard}
if [ "$BUILD" = 1 ]; then
  say "cargo build --release"
  (cd "$REPO" && cargo build --release >&2) || die "cargo build --release failed"
fi
[ -x "$MESHGUARD_BIN" ] || die "no meshguard binary at $MESHGUARD_BIN"

TMP=$(mktemp -d /tmp/meshguard-startup.XXXXXX)
cleanup() { if [ "$KEEP" = 1 ]; then echo "kept $TMP" >&2; else rm -rf "$TMP"; fi; }
trap cleanup EXIT

B=$BASE_PORT
P_APP=$B P_MG_IN=$((B + 1)) P_MG_IN_ADMIN=$((B + 2)) P_MG_OUT=$((B + 3)) P_MG_OUT_ADMIN=$((B + 4))
P_FULL_IN=$((B + 5)) P_FULL_ADMIN=$((B + 6)) P_NGINX=$((B + 7)) P_HAP=$((B + 8))
for p in $(seq "$B" $((B + 8))); do
  [ -z "$(ss -Htln "sport = :$p" 2>/dev/null)" ] || die "port 127.0.0.1:$p is in use; pick another --base-port"
done

"$MESHGUARD_BIN" certs dev --out "$TMP/certs" --workload default/client --workload default/server >"$TMP/certs.log" 2>&1 \
  || { cat "$TMP/certs.log" >&2; die "meshguard certs dev failed"; }
CA=$TMP/certs/ca.crt
CC=$TMP/certs/default/client/tls.crt CK=$TMP/certs/default/client/tls.key
SC=$TMP/certs/default/server/tls.crt SK=$TMP/certs/default/server/tls.key
SERVER_ID=spiffe://cluster.local/ns/default/sa/server
cat "$SC" "$SK" >"$TMP/certs/server.pem"

# shellcheck source=pairs/variants-lib.sh
source "$HERE/pairs/variants-lib.sh"
make_jwt "$TMP/jwt"
write_policy "$TMP/policy.yaml" jwt
mkdir -p "$TMP/assertion"
cat >"$TMP/full-in.yaml" <<EOF
identity: {cert: $SC, key: $SK, bundle: $CA}
admin: {listen: 127.0.0.1:$P_FULL_ADMIN}
runtime: {workers: 1}
assertion: {key_file: $TMP/assertion/assertion.keys}
inbound:
  listen: 127.0.0.1:$P_FULL_IN
  app: 127.0.0.1:$P_APP
  policy: $TMP/policy.yaml
EOF
jwt_inbound_yaml "$TMP/jwt/jwks.json" >>"$TMP/full-in.yaml"

mkdir -p "$TMP/nginx"
cat >"$TMP/nginx/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path $TMP/nginx/body;
  proxy_temp_path $TMP/nginx/proxy;
  fastcgi_temp_path $TMP/nginx/fastcgi;
  uwsgi_temp_path $TMP/nginx/uwsgi;
  scgi_temp_path $TMP/nginx/scgi;
  upstream app { server 127.0.0.1:$P_APP; keepalive 128; }
  server {
    listen 127.0.0.1:$P_NGINX ssl;
    ssl_certificate $SC;
    ssl_certificate_key $SK;
    ssl_client_certificate $CA;
    ssl_verify_client on;
    ssl_verify_depth 2;
    ssl_protocols TLSv1.3;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
EOF
nginx -t -q -e "$TMP/nginx/error.log" -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" || die "nginx config invalid"
{
  cat "$HERE/pairs/haproxy-common.cfg"
  cat <<EOF
frontend in
  bind 127.0.0.1:$P_HAP ssl crt $TMP/certs/server.pem ca-file $CA verify required alpn http/1.1
  default_backend app
backend app
  http-reuse always
  server app 127.0.0.1:$P_APP
EOF
} >"$TMP/haproxy.cfg"
haproxy -c -q -f "$TMP/haproxy.cfg" || die "haproxy config invalid"

export MESHGUARD_LOG=${MESHGUARD_LOG:-warn}
python3 - "$TMP" "$MESHGUARD_BIN" "$REPO" >"$TMP/spec.json" <<EOF
import json, os, platform, subprocess, sys
tmp, mg, repo = sys.argv[1:4]
def out(cmd):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (r.stdout + r.stderr).strip()
    except Exception as e:
        return f"? ({e})"
model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
git = out(["git", "-C", repo, "rev-parse", "--short", "HEAD"])
dirty = out(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no", "src", "Cargo.toml", "Cargo.lock"])
mg_common = [mg, "--log-format", "json", "run"]
cases = [
    {"name": "meshguard-in", "ready_when": "admin /ready 200", "listen_port": $P_MG_IN, "ready_port": $P_MG_IN_ADMIN,
     "what": "the pairs' inbound, from flags (--cert --key --bundle --inbound --app --admin --workers 1)",
     "cmd": mg_common + ["--cert", "$SC", "--key", "$SK", "--bundle", "$CA", "--inbound", "127.0.0.1:$P_MG_IN",
                         "--app", "127.0.0.1:$P_APP", "--admin", "127.0.0.1:$P_MG_IN_ADMIN", "--workers", "1"]},
    {"name": "meshguard-out", "ready_when": "admin /ready 200", "listen_port": $P_MG_OUT, "ready_port": $P_MG_OUT_ADMIN,
     "what": "the pairs' outbound, from flags (--outbound --peer --peer-id --admin --workers 1)",
     "cmd": mg_common + ["--cert", "$CC", "--key", "$CK", "--bundle", "$CA", "--outbound", "127.0.0.1:$P_MG_OUT",
                         "--peer", "127.0.0.1:$P_MG_IN", "--peer-id", "$SERVER_ID",
                         "--admin", "127.0.0.1:$P_MG_OUT_ADMIN", "--workers", "1"]},
    {"name": "meshguard-in-full", "ready_when": "admin /ready 200", "listen_port": $P_FULL_IN, "ready_port": $P_FULL_ADMIN,
     "what": "config file: inbound with the meshguard-jwt pair's policy (7 rules, a jwt rule, a rate limit), "
             "a JWT provider with a JWKS file, and the identity assertion (key file written at start)",
     "cmd": mg_common + ["--config", f"{tmp}/full-in.yaml"]},
    {"name": "nginx-in", "ready_when": "port accepts", "listen_port": $P_NGINX,
     "what": "the pairs' nginx inbound (master + 1 worker, TLS 1.3, client certificate verified)",
     "cmd": ["nginx", "-e", f"{tmp}/nginx/error.log", "-p", f"{tmp}/nginx", "-c", f"{tmp}/nginx/nginx.conf"]},
    {"name": "haproxy-in", "ready_when": "port accepts", "listen_port": $P_HAP,
     "what": "the pairs' haproxy inbound (nbthread 1, TLS 1.3, client certificate verified)",
     "cmd": ["haproxy", "-db", "-f", f"{tmp}/haproxy.cfg"]},
]
print(json.dumps({
    "tmp": tmp, "binary": mg, "cases": cases,
    "machine": {"nproc": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
                "loadavg": open("/proc/loadavg").read().split()[:3]},
    "versions": {"meshguard": git + ("+local-changes" if dirty else ""),
                 "nginx": out(["nginx", "-v"]).split("/")[-1],
                 "haproxy": out(["haproxy", "-v"]).splitlines()[0].split()[2]},
}))
EOF

mkdir -p "$REPO/benches/results"
OUT="$REPO/benches/results/startup-$(date -u +%Y%m%dT%H%M%SZ)"
say "start-up: $RUNS starts per case"
python3 "$HERE/startup.py" --spec "$TMP/spec.json" --runs "$RUNS" --out-json "$OUT.json" --out-md "$OUT.md"
say "wrote $OUT.json and $OUT.md"
