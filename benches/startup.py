#!/usr/bin/env python3
"""Start-up time and binary size (issue 21 "Startup and size"); started by
benches/startup.sh, which writes the configs and certificates.

Each case is a command and what "ready" means for it:

- meshguard: exec until the admin `/ready` answers 200 (the identity is loaded,
  the listeners are bound: what a Kubernetes readiness probe waits for), and,
  on the side, until its data-plane port accepts a connection;
- nginx, haproxy: exec until the listening port accepts a connection (they have
  no readiness endpoint; a bound port is when they can serve).

Every start is a fresh process in its own session, killed (SIGKILL to the
group) once ready: shutdown is not measured. Cases are interleaved, start by
start, so a burst of load from elsewhere on the machine touches all of them.

    startup.py --spec spec.json --runs 20 --out-json F --out-md F
"""

import argparse
import datetime
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time

POLL_S = 0.0005
TIMEOUT_S = 20.0


def accepts(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def http_ok(port, path):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def one_start(case):
    """Seconds from exec to ready (and to the port accepting), or an error."""
    listen, ready = case["listen_port"], case.get("ready_port")
    t0 = time.perf_counter()
    proc = subprocess.Popen(case["cmd"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    t_listen = t_ready = None
    try:
        while time.perf_counter() - t0 < TIMEOUT_S:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace")[-2000:]
                raise RuntimeError(f"{case['name']} exited with {proc.returncode}: {err}")
            now = time.perf_counter()
            if t_listen is None and accepts(listen):
                t_listen = now - t0
            if ready is None:
                if t_listen is not None:
                    t_ready = t_listen
                    break
            elif http_ok(ready, "/ready"):
                t_ready = time.perf_counter() - t0
                if t_listen is None:
                    t_listen = t_ready
                break
            time.sleep(POLL_S)
        if t_ready is None:
            raise RuntimeError(f"{case['name']} not ready after {TIMEOUT_S} s")
        return t_ready, t_listen
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        # The group's other members (nginx workers) go with it; wait for the
        # port to be free before the next start.
        deadline = time.monotonic() + 5
        while accepts(listen) and time.monotonic() < deadline:
            time.sleep(0.01)


def pct(xs, q):
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def stats(xs):
    ms = [x * 1000 for x in xs]
    return {"median_ms": statistics.median(ms), "p90_ms": pct(ms, 0.9), "min_ms": min(ms), "max_ms": max(ms),
            "all_ms": [round(x, 2) for x in ms]}


def sizes(binary, tmp):
    out = {"path": binary, "bytes": os.path.getsize(binary)}
    stripped = os.path.join(tmp, "meshguard.stripped")
    subprocess.run(["cp", binary, stripped], check=True)
    subprocess.run(["strip", stripped], check=True)
    out["stripped_bytes"] = os.path.getsize(stripped)
    try:
        r = subprocess.run(["size", "-A", "-d", stripped], capture_output=True, text=True, check=True)
        secs = {}
        for line in r.stdout.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0].startswith(".") and parts[1].isdigit():
                secs[parts[0]] = int(parts[1])
        out["sections"] = secs
        r = subprocess.run(["size", stripped], capture_output=True, text=True, check=True)
        text, data, bss = r.stdout.splitlines()[1].split()[:3]
        out["text"], out["data"], out["bss"] = int(text), int(data), int(bss)
    except (OSError, subprocess.CalledProcessError, ValueError, IndexError):
        pass
    os.unlink(stripped)
    return out


def render(res):
    mib = 2**20
    m = res["machine"]
    out = [f"### Start-up and size, {res['started']} ({res['runs']} starts per case, interleaved)\n",
           f"Machine: {m['nproc']} × {m['cpu_model']}, load before start {m['loadavg']}; "
           + ", ".join(f"{k} {v}" for k, v in res["versions"].items()) + ".\n",
           "| case | ready when | exec → ready median ms | p90 ms | min … max ms | exec → port accepts median ms |",
           "|---|---|---:|---:|---|---:|"]
    for c in res["cases"]:
        r, li = c["ready"], c["listen"]
        out.append(f"| {c['name']} | {c['ready_when']} | {r['median_ms']:.1f} | {r['p90_ms']:.1f} "
                   f"| {r['min_ms']:.1f} … {r['max_ms']:.1f} | {li['median_ms']:.1f} |")
    out.append("")
    out.append("What each case starts:\n")
    for c in res["cases"]:
        out.append(f"- **{c['name']}**: {c['what']}")
    out.append("")
    s = res["size"]
    out.append(f"Release binary `{s['path']}`: {s['bytes'] / mib:.1f} MiB as built (with line tables), "
               f"**{s['stripped_bytes'] / mib:.2f} MiB stripped** ({s['stripped_bytes']:,} bytes).")
    if "text" in s:
        out.append(f"`size` of the stripped binary: text {s['text'] / mib:.2f} MiB, data {s['data'] / 1024:.0f} KiB, "
                   f"bss {s['bss'] / 1024:.0f} KiB.")
        big = sorted(s.get("sections", {}).items(), key=lambda kv: -kv[1])[:6]
        out.append("Largest sections: " + ", ".join(f"`{k}` {v / mib:.2f} MiB" for k, v in big) + ".")
    out.append("")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", required=True)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--out-json", required=True)
    ap.add_argument("--out-md", required=True)
    args = ap.parse_args()
    spec = json.load(open(args.spec))
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    times = {c["name"]: ([], []) for c in spec["cases"]}
    # One untimed start each: page cache warm for every binary, as after the
    # first pod on a node.
    for c in spec["cases"]:
        one_start(c)
    for i in range(args.runs):
        for c in spec["cases"]:
            ready, listen = one_start(c)
            times[c["name"]][0].append(ready)
            times[c["name"]][1].append(listen)
        print(f"  start {i + 1}/{args.runs}: " + ", ".join(
            f"{n} {v[0][-1] * 1000:.1f} ms" for n, v in times.items()), file=sys.stderr, flush=True)
    res = {
        "kind": "meshguard-startup",
        "started": started,
        "runs": args.runs,
        "machine": spec["machine"],
        "versions": spec["versions"],
        "cases": [dict(c, ready=stats(times[c["name"]][0]), listen=stats(times[c["name"]][1]))
                  for c in spec["cases"]],
        "size": sizes(spec["binary"], spec["tmp"]),
    }
    md = render(res)
    with open(args.out_json, "w") as f:
        json.dump(res, f, indent=1)
    with open(args.out_md, "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
