"""The test app of tests/assertion_jwks.rs: an HTTP app that serves a request
only when its x-meshguard-assertion verifies with the sidecar's public keys
(examples/verify_assertion_jwks.py, unchanged), and refuses everything else
with 401 and the verifier's reason. Requests ids are remembered until their
assertion expires, so a captured assertion replayed, even on its own path, is
refused.

argv: min_refresh_s. Prints the port it listens on, then reads the JWKS
source (an admin URL or a file path) from stdin: the sidecar's admin address
is known only once the sidecar is up, and the sidecar needs this port first.
A source `hmac:PATH` verifies the default HMAC assertion with the key file
instead (examples/verify_assertion.py, unchanged; it keeps no replay list).
The echoed x-seen-assertion lets the test replay what reached the app; a
path under /slow is verified only after half a second.
"""
import os, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
from verify_assertion import verify as verify_hmac  # noqa: E402
from verify_assertion_jwks import Jwks, Seen, verify  # noqa: E402


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def handle_any(self):
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        if self.path.startswith("/slow"):
            # Still in flight when the test rotates the key: verified after
            # requests signed by the new key made the app reload the JWKS.
            time.sleep(0.5)
        header = self.headers.get("x-meshguard-assertion", "")
        caller = self.headers.get("x-meshguard-client-id", "")
        try:
            rid = VERIFY(header, caller, self.command, self.path)
            status, body = 200, f"ok {rid}\n"
        except ValueError as e:
            status, body = 401, f"refused: {e}\n"
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.send_header("x-seen-assertion", header)
        self.end_headers()
        self.wfile.write(body.encode())

    do_GET = do_POST = do_DELETE = handle_any

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
print(server.server_address[1], flush=True)
SOURCE = sys.stdin.readline().strip()
if SOURCE.startswith("hmac:"):
    def VERIFY(header, caller, method, target):
        return verify_hmac(header, caller, method, target, SOURCE[len("hmac:"):])
else:
    JWKS = Jwks(SOURCE, min_refresh_s=float(sys.argv[1]))
    SEEN = Seen()

    def VERIFY(header, caller, method, target):
        return verify(header, caller, method, target, JWKS, seen=SEEN)
server.serve_forever()
