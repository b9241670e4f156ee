"""Verifies meshguard's x-meshguard-assertion in the asymmetric modes
(assertion.mode: ed25519 | es256) with only the public keys: the JWKS at the
sidecar's admin http://127.0.0.1:15000/.well-known/jwks.json or in
assertion.jwks_file (README: "Webhooks and signed claims").

    jwks = Jwks("http://127.0.0.1:15000/.well-known/jwks.json")  # or a file path
    rid = verify(header, caller, method, target, jwks)            # raises ValueError

caller: the x-meshguard-client-id the app received; target: path?query as
received. Needs the `cryptography` package.
"""
import base64, json, threading, time, urllib.request

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature


B64URL = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def b64d(s):
    if not s or not set(s) <= B64URL:
        raise ValueError("malformed")
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def parse_jwks(doc):
    """kid -> (alg, public key). The algorithm comes from the key, never the header."""
    keys = {}
    for k in doc.get("keys", []):
        if k.get("use") != "sig":
            continue
        if (k.get("kty"), k.get("crv"), k.get("alg")) == ("OKP", "Ed25519", "EdDSA"):
            pub = ed25519.Ed25519PublicKey.from_public_bytes(b64d(k["x"]))
        elif (k.get("kty"), k.get("crv"), k.get("alg")) == ("EC", "P-256", "ES256"):
            x, y = (int.from_bytes(b64d(k[c]), "big") for c in ("x", "y"))
            pub = ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
        else:
            continue
        keys[k["kid"]] = (k["alg"], pub)
    return keys


class Jwks:
    """The sidecar's public keys, from a URL or a file. An unknown kid re-reads
    the source (at most every `min_refresh_s`): a rotation publishes the new key
    before it signs with it, and keeps the old one for the grace period."""

    def __init__(self, source, min_refresh_s=1.0):
        self.source, self.min_refresh_s = source, min_refresh_s
        self.keys, self.loaded_at = {}, float("-inf")
        self.lock = threading.Lock()

    def refresh(self):
        if self.source.startswith(("http://", "https://")):
            with urllib.request.urlopen(self.source, timeout=2) as r:
                doc = json.load(r)
        else:
            with open(self.source) as f:
                doc = json.load(f)
        self.keys, self.loaded_at = parse_jwks(doc), time.monotonic()

    def key(self, kid):
        with self.lock:
            if kid not in self.keys and time.monotonic() - self.loaded_at >= self.min_refresh_s:
                self.refresh()
            return self.keys.get(kid)


class Seen:
    """Request ids already accepted, kept until their assertion expires, so a
    captured assertion is refused even on its own path."""

    def __init__(self):
        self.ids, self.lock = {}, threading.Lock()

    def first_time(self, rid, exp, now):
        with self.lock:
            self.ids = {r: e for r, e in self.ids.items() if e >= now} if len(self.ids) > 10000 else self.ids
            if rid in self.ids:
                return False
            self.ids[rid] = exp
            return True


def verify(header, caller, method, target, jwks, now=None, seen=None):
    now = int(time.time()) if now is None else now
    if not header:
        raise ValueError("missing")
    parts = header.split(".")
    if len(parts) != 6 or parts[0] != "v1":
        raise ValueError("malformed")
    _, kid, iat, exp, rid, sig = parts
    if not (iat.isdigit() and exp.isdigit()):
        raise ValueError("malformed")
    found = jwks.key(kid)
    if found is None:
        raise ValueError("unknown key")
    alg, pub = found
    sig = b64d(sig)
    msg = "\n".join(["meshguard-assertion-v1", kid, iat, exp, rid, caller, method, target]).encode()
    try:
        if len(sig) != 64:
            raise InvalidSignature()
        if alg == "EdDSA":
            pub.verify(sig, msg)
        else:  # ES256: r || s, 32 bytes each (as in JWS)
            r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
            pub.verify(encode_dss_signature(r, s), msg, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise ValueError("bad signature")
    if not int(iat) - 5 <= now <= int(exp):
        raise ValueError("expired")
    if seen is not None and not seen.first_time(rid, int(exp), now):
        raise ValueError("replayed")
    return rid


if __name__ == "__main__":
    import sys
    # argv: header caller method target jwks-url-or-file [now]
    args = sys.argv[1:]
    try:
        print(verify(*args[:4], Jwks(args[4]), now=int(args[5]) if len(args) > 5 else None))
    except ValueError as e:
        print("refused:", e)
        sys.exit(1)
