#!/usr/bin/env python3
"""Memory per idle connection, meshguard against the peers, in one run.

Started by `run.sh --idle CLIENTS,MTLS` once every pair is up and checked.
For each pair, in turn:

1. mTLS connections: MTLS TLS 1.3 connections straight to the inbound with
   the client SVID, each carrying one request, then left idle (as the mTLS
   connections of many peer sidecars are);
2. client connections: CLIENTS plain keep-alive connections to the outbound,
   each carrying one request and its answer, then left idle (as an app's
   connection pool leaves them).

Each phase reads the resident memory (VmRSS, all processes of the proxy)
after a third of the connections are open and idle, after all of them
are, and after they are closed. Per connection = the growth between the
first two readings / the connections opened between them, in KiB. Memory is a count of pages, not a time, so this run is not
disturbed by other users of the CPU the way throughput is.
"""

import argparse
import json
import os
import resource
import selectors
import socket
import ssl
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import log, proc_status, tree  # noqa: E402

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
BATCH = 256  # connections opened at once: below every listener's backlog
SETTLE_S = 3.0


def rss(root):
    """Resident bytes of a proxy: the sum over its processes."""
    return sum(proc_status(pid, "VmRSS") or 0 for pid in tree(root))


def answered(buf):
    """True once `buf` holds one whole HTTP/1.1 response (Content-Length body)."""
    head, sep, body = buf.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def open_plain(addr, count):
    """`count` keep-alive connections to addr, one answered request each."""
    host, port = addr
    conns = []
    sel = selectors.DefaultSelector()
    while len(conns) < count:
        batch = []
        for _ in range(min(BATCH, count - len(conns))):
            s = socket.create_connection((host, port), timeout=10)
            s.sendall(REQUEST)
            s.setblocking(False)
            batch.append(s)
            sel.register(s, selectors.EVENT_READ, bytearray())
        pending = len(batch)
        deadline = time.monotonic() + 30
        while pending:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{pending} requests unanswered after 30 s")
            for key, _ in sel.select(timeout=1):
                chunk = key.fileobj.recv(65536)
                if not chunk:
                    raise RuntimeError("a proxy closed an idle connection it had just answered")
                key.data.extend(chunk)
                if answered(bytes(key.data)):
                    sel.unregister(key.fileobj)
                    pending -= 1
        conns.extend(batch)
    return conns


def open_mtls(addr, tls, count):
    """`count` TLS 1.3 connections with the client SVID, one request each."""
    ctx = ssl.create_default_context(cafile=tls["ca"])
    ctx.load_cert_chain(tls["cert"], tls["key"])
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    conns = []
    for _ in range(count):
        raw = socket.create_connection(addr, timeout=10)
        s = ctx.wrap_socket(raw, server_hostname=tls["server_name"])
        s.sendall(REQUEST)
        buf = b""
        while not answered(buf):
            chunk = s.recv(65536)
            if not chunk:
                raise RuntimeError("the inbound closed a connection it had just answered")
            buf += chunk
        conns.append(s)
    return conns


def measure(pair, role, opener, count):
    """Per-connection KiB of both proxies of `pair` for `count` connections.

    A slope, not a ratio: a first third of the connections is opened and
    measured, then the rest; per connection = the growth between the two
    points / the connections opened between them. What the first
    connections allocate once (the upstream connection, heap and table
    growth) is not charged to every connection."""
    roots = pair["proxies"]
    first = max(count // 3, 1)
    before = {r: rss(p) for r, p in roots.items()}
    start = time.monotonic()
    conns = opener(first)
    time.sleep(SETTLE_S)
    mid = {r: rss(p) for r, p in roots.items()}
    conns += opener(count - first)
    opened_s = time.monotonic() - start
    time.sleep(SETTLE_S)
    idle = {r: rss(p) for r, p in roots.items()}
    alive = sum(1 for c in conns if c.fileno() >= 0)
    for c in conns:
        c.close()
    time.sleep(SETTLE_S)
    after = {r: rss(p) for r, p in roots.items()}
    res = {"connections": count, "open_s": round(opened_s, 2), "alive": alive}
    for r in roots:
        res[r] = {
            "before_kib": before[r] // 1024,
            "first_kib": mid[r] // 1024,
            "idle_kib": idle[r] // 1024,
            "after_close_kib": after[r] // 1024,
            "kib_per_conn": round((idle[r] - mid[r]) / 1024 / (count - first), 2),
            # The plain ratio, one-time growth included: an upper bound.
            "kib_per_conn_all": round((idle[r] - before[r]) / 1024 / count, 2),
        }
    log(f"  {pair['name']:<10} {role:<7} {count} conns: "
        + ", ".join(f"{r} {res[r]['kib_per_conn']} KiB/conn" for r in roots))
    return res


def markdown(results, args):
    lines = [
        f"# Memory per idle connection ({results['date']})",
        "",
        f"{args.clients} client keep-alive connections to each outbound; {args.mtls} mTLS connections "
        "straight to each inbound; each carried one request, then sat idle for "
        f"{SETTLE_S:.0f} s. VmRSS of all the proxy's processes; KiB per connection = the "
        "growth from a third of the connections open to all of them, / the connections "
        "opened in between; in brackets (all − before) / count, one-time growth included. "
        "Same run, same limits for every proxy.",
        "",
        "| pair | client conn: outbound KiB | client conn: inbound KiB | mTLS conn: inbound KiB "
        "| outbound RSS idle / after close (KiB) | inbound RSS idle / after close (KiB) |",
        "|---|---:|---:|---:|---|---|",
    ]
    for name, r in results["pairs"].items():
        c, m = r["client"], r["mtls"]
        def kib(x):
            return f"{x['kib_per_conn']} ({x['kib_per_conn_all']})"
        lines.append(
            f"| {name} | {kib(c['out'])} | {kib(c['in'])} | "
            f"{kib(m['in'])} | {c['out']['idle_kib']} / {c['out']['after_close_kib']} | "
            f"{m['in']['idle_kib']} / {m['in']['after_close_kib']} |"
        )
    peers = {n: r for n, r in results["pairs"].items() if n in ("nginx", "haproxy")}
    mg = results["pairs"].get("meshguard")
    if mg and peers:
        lines += ["", "meshguard ÷ peer (KiB per connection):", ""]
        for n, r in peers.items():
            cl = mg["client"]["out"]["kib_per_conn"] / max(r["client"]["out"]["kib_per_conn"], 0.01)
            mt = mg["mtls"]["in"]["kib_per_conn"] / max(r["mtls"]["in"]["kib_per_conn"], 0.01)
            lines.append(f"- vs {n}: client connections {cl:.2f}×, mTLS connections {mt:.2f}×")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", required=True)
    ap.add_argument("--clients", type=int, default=10000)
    ap.add_argument("--mtls", type=int, default=1000)
    ap.add_argument("--out-json", required=True)
    ap.add_argument("--out-md", required=True)
    args = ap.parse_args()
    want = args.clients + args.mtls + 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            sys.exit(f"idle.py: {want} open files needed, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    spec = json.load(open(args.spec))
    tls = spec["tls"]
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "pairs": {},
               "machine": spec.get("machine"), "versions": spec.get("versions")}
    for pair in spec["pairs"]:
        if not pair.get("proxies"):
            continue
        out_host, out_port = pair["url"].split("//")[1].rstrip("/").rsplit(":", 1)
        in_host, in_port = pair["in_addr"].rsplit(":", 1)
        # mTLS first: it touches only the inbound, so the client phase after it
        # still meets a fresh outbound. (Freed memory stays with a process, so
        # a phase after another on the same process would reuse its pages.)
        mtls = measure(pair, "mtls", lambda n: open_mtls((in_host, int(in_port)), tls, n), args.mtls)
        client = measure(pair, "client", lambda n: open_plain((out_host, int(out_port)), n), args.clients)
        results["pairs"][pair["name"]] = {"client": client, "mtls": mtls}
    with open(args.out_json, "w") as f:
        json.dump(results, f, indent=1)
    md = markdown(results, args)
    with open(args.out_md, "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
