"""Verifies meshguard's x-meshguard-assertion (README: "Webhooks and signed claims").

verify(header, caller, method, target, key_file, now) -> rid, or raises ValueError.
caller: the x-meshguard-client-id the app received; target: path?query as received.
"""
import base64, hashlib, hmac, time

def load_keys(key_file):
    keys = {}
    with open(key_file) as f:
        for line in f:
            if line.strip():
                kid, key = line.split()
                keys[kid] = base64.urlsafe_b64decode(key + "=" * (-len(key) % 4))
    return keys

def verify(header, caller, method, target, key_file, now=None):
    now = int(time.time()) if now is None else now
    parts = header.split(".")
    if len(parts) != 6 or parts[0] != "v1":
        raise ValueError("malformed")
    _, kid, iat, exp, rid, mac = parts
    keys = load_keys(key_file)  # re-read: a rotation adds the new key first
    if kid not in keys:
        raise ValueError("unknown key")
    msg = "\n".join(["meshguard-assertion-v1", kid, iat, exp, rid, caller, method, target])
    want = base64.urlsafe_b64encode(hmac.new(keys[kid], msg.encode(), hashlib.sha256).digest()).rstrip(b"=")
    if not hmac.compare_digest(want, mac.encode()):
        raise ValueError("bad mac")
    if not int(iat) - 5 <= now <= int(exp):
        raise ValueError("expired")
    return rid

if __name__ == "__main__":
    import sys
    # argv: header caller method target key_file [now]
    args = sys.argv[1:]
    try:
        print(verify(*args[:5], now=int(args[5]) if len(args) > 5 else None))
    except ValueError as e:
        print("refused:", e)
        sys.exit(1)
