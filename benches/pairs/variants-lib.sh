# Sourced by benches/pairs/run.sh and benches/startup.sh: the policy and the
# JWT material of the meshguard-policy and meshguard-jwt pairs. Needs `die`.
# shellcheck shell=bash

CALLER_ID=spiffe://cluster.local/ns/default/sa/client
# write_policy FILE [JWT]: a policy as a real service would have one: a deny
# that every request is checked against, health and metrics rules, a
# quarantined workload, the caller's API rules, and the benchmark's caller
# allowed on GET/HEAD of the benchmark's path `/` (with JWT: only with a valid
# token of provider `users` carrying scope bench.read; plus a rate limit).
write_policy() {
  local jwt=
  [ "${2:-}" = jwt ] && jwt='
    jwt: {provider: users, iss: ["https://id.bench.example"], scopes: [bench.read]}'
  cat >"$1" <<EOF
mode: enforce
rules:
  - name: no-admin
    action: deny
    from: ["*"]
    paths: ["/admin/*", /debug]
  - name: quarantined
    action: deny
    from: [spiffe://cluster.local/ns/default/sa/legacy]
  - name: mesh-health
    action: allow
    from: ["spiffe://cluster.local/*"]
    methods: [GET]
    paths: [/healthz, /ready]
  - name: ops-metrics
    action: allow
    from: ["spiffe://cluster.local/ns/ops/*"]
    methods: [GET]
    paths: [/metrics]
  - name: client-api
    action: allow
    from: [$CALLER_ID]
    methods: [GET, POST, PUT]
    paths: ["/api/*"]
  - name: shop-read
    action: allow
    from: ["spiffe://cluster.local/ns/shop/*"]
    methods: [GET]
    paths: ["/api/catalog/*"]
  - name: bench-caller
    action: allow
    from: [$CALLER_ID]
    methods: [GET, HEAD]
    paths: [/]$jwt
EOF
  if [ "${2:-}" = jwt ]; then
    # Per caller, far above the benchmark's rate (~10^4-10^5 req/s) so it never
    # refuses, but every request takes a token from its bucket.
    cat >>"$1" <<EOF
limits:
  - name: per-caller
    key: id
    rate: 100000000
    burst: 100000000
EOF
  fi
}

# make_jwt DIR: an RS256 key pair (openssl), its JWKS, and one token signed
# once (exp in 7 days, so the verified-token cache holds it for the run).
make_jwt() {
  local d=$1
  mkdir -p "$d"
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$d/jwt.key" 2>/dev/null \
    || die "openssl genpkey (JWT key) failed"
  openssl rsa -in "$d/jwt.key" -noout -modulus | sed 's/^Modulus=//' >"$d/modulus.hex"
  python3 - "$d" <<'EOF'
import base64, json, subprocess, sys, time
d = sys.argv[1]
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
n = bytes.fromhex(open(f"{d}/modulus.hex").read().strip())
jwks = {"keys": [{"kty": "RSA", "kid": "bench-1", "alg": "RS256", "use": "sig", "n": b64(n), "e": b64((65537).to_bytes(3, "big"))}]}
json.dump(jwks, open(f"{d}/jwks.json", "w"))
now = int(time.time())
header = {"alg": "RS256", "typ": "JWT", "kid": "bench-1"}
claims = {"iss": "https://id.bench.example", "sub": "user-42", "aud": "bench-server",
          "scope": "bench.read bench.write", "iat": now, "nbf": now - 60, "exp": now + 7 * 86400}
signing = (b64(json.dumps(header, separators=(",", ":")).encode()) + "." +
           b64(json.dumps(claims, separators=(",", ":")).encode()))
sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", f"{d}/jwt.key"], input=signing.encode(),
                     capture_output=True, check=True).stdout
open(f"{d}/token", "w").write(signing + "." + b64(sig))
EOF
  [ -s "$d/token" ] || die "could not sign the benchmark's JWT"
}

# jwt_inbound_yaml JWKS: the `inbound.jwt` section (indented for `inbound:`)
# of the provider the token of make_jwt belongs to.
jwt_inbound_yaml() {
  cat <<EOF2
  jwt:
    providers:
      - name: users
        issuers: ["https://id.bench.example"]
        audiences: [bench-server]
        algorithms: [RS256]
        jwks: {file: $1}
EOF2
}
