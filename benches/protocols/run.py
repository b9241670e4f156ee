#!/usr/bin/env python3
"""Protocols benchmark: multiplexed h2c and opaque TCP through mTLS pairs.

Every pair does the same job, on loopback only, one worker/thread per proxy:

  h2c:  h2load (HTTP/2, prior knowledge) -> outbound proxy -> mTLS (TLS 1.3,
        client certificate required, both sides verified against one dev CA)
        -> inbound proxy -> nginx answering h2c
        pairs: meshguard, nginx (grpc_pass, which speaks HTTP/2 both ways),
        haproxy (proto h2 on both sides, alpn h2 on the hop), direct
  tcp:  redis-benchmark -> outbound proxy -> mTLS -> inbound proxy -> redis-server
        pairs: meshguard (TCP route), stunnel, direct

Rounds rotate the order of the pairs; each measurement reads the CPU time of
the proxy processes from /proc before and after, so CPU per request is the
proxies' own. The report (Markdown + JSON in benches/results/) gives medians
and meshguard's ratios against the best peer of the same run.

    python3 benches/protocols/run.py              # 3 rounds x 10 s
    python3 benches/protocols/run.py --quick      # 1 round x 3 s
    options: --rounds N --duration S --streams M --clients C --no-build --keep
             --tcp-requests N
             --only h2c|tcp  --pairs direct,meshguard,nginx,haproxy,stunnel
"""

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "benches", "pairs"))
from bench import HZ, cpu_ticks, proc_status, tree  # noqa: E402

PACKAGES = {
    "h2load": "nghttp2-client",
    "nginx": "nginx",
    "haproxy": "haproxy",
    "redis-server": "redis-server",
    "redis-benchmark": "redis-tools",
}
SERVER_DNS = "server.default.svc.cluster.local"
SERVER_ID = "spiffe://cluster.local/ns/default/sa/server"
BASE = int(os.environ.get("BASE_PORT", "18600"))
PORTS = {
    "backend": BASE,
    "redis": BASE + 1,
    "meshguard-out": BASE + 10, "meshguard-in": BASE + 11,
    "meshguard-admin-out": BASE + 12, "meshguard-admin-in": BASE + 13,
    "meshguard-tcp-out": BASE + 14,
    "nginx-out": BASE + 20, "nginx-in": BASE + 21,
    "haproxy-out": BASE + 30, "haproxy-in": BASE + 31,
    "stunnel-out": BASE + 40, "stunnel-in": BASE + 41,
}


def log(msg):
    print(f"==> {msg}", file=sys.stderr, flush=True)


def ensure_packages():
    missing = sorted({pkg for cmd, pkg in PACKAGES.items() if not shutil.which(cmd)})
    if not (shutil.which("stunnel4") or shutil.which("stunnel")):
        missing.append("stunnel4")
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(f"missing {' '.join(missing)}: run as root or install them")
    log(f"installing {' '.join(missing)}")
    # Keep package scripts from starting system services (nginx on :80,
    # a system redis on :6379): a policy-rc.d that refuses, for this install.
    policy = "/usr/sbin/policy-rc.d"
    made = not os.path.exists(policy)
    if made:
        with open(policy, "w") as f:
            f.write("#!/bin/sh\nexit 101\n")
        os.chmod(policy, 0o755)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        cmd = ["apt-get", "install", "-y", "-q", *missing]
        if subprocess.run(cmd, env=env).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env)
            subprocess.run(cmd, env=env, check=True)
    finally:
        if made:
            os.unlink(policy)


class Procs:
    """Servers started in their own sessions, stopped on exit."""

    def __init__(self, tmp):
        self.tmp, self.pids = tmp, {}

    def start(self, name, argv, env=None):
        out = open(os.path.join(self.tmp, f"{name}.log"), "w")
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True, env=env)
        self.pids[name] = p
        return p

    def pids_of(self, *names):
        return [pid for n in names for pid in tree(self.pids[n].pid)]

    def wait_port(self, name, port):
        for _ in range(150):
            if self.pids[name].poll() is not None:
                break
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.1)
        sys.stderr.write(open(os.path.join(self.tmp, f"{name}.log")).read())
        sys.exit(f"{name} does not listen on 127.0.0.1:{port}")

    def stop(self):
        for p in self.pids.values():
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except OSError:
                pass
        deadline = time.time() + 8
        for p in self.pids.values():
            try:
                p.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def nginx_conf(tmp, name, body):
    d = os.path.join(tmp, name)
    os.makedirs(d, exist_ok=True)
    temps = "".join(f"  {k}_temp_path {d}/{k};\n" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf = f"""daemon off;
master_process on;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 75s;
  http2_max_requests 10000000;
{temps}{body}
}}
"""
    with open(os.path.join(d, "nginx.conf"), "w") as f:
        f.write(conf)
    return ["nginx", "-e", f"{d}/error.log", "-p", d, "-c", f"{d}/nginx.conf"]


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def start_backends(procs, tmp, c, only):
    if "h2c" in only:
        # nginx 1.22 (bookworm): `listen ... http2` on a plain port is h2c
        # with prior knowledge, what both the h2c pairs' inbounds speak.
        body = f"""  server {{
    listen 127.0.0.1:{PORTS['backend']} http2;
    location / {{ default_type text/plain; return 200 "meshguard-protocols-backend\\n"; }}
  }}"""
        procs.start("backend", nginx_conf(tmp, "backend", body))
        procs.wait_port("backend", PORTS["backend"])
    if "tcp" in only:
        procs.start("redis", ["redis-server", "--port", str(PORTS["redis"]), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no", "--protected-mode", "no"])
        procs.wait_port("redis", PORTS["redis"])


def start_nginx_pair(procs, tmp, c):
    tls = f"""grpc_ssl_certificate {c['cc']};
      grpc_ssl_certificate_key {c['ck']};
      grpc_ssl_trusted_certificate {c['ca']};
      grpc_ssl_verify on;
      grpc_ssl_verify_depth 2;
      grpc_ssl_name {SERVER_DNS};
      grpc_ssl_server_name on;
      grpc_ssl_protocols TLSv1.3;
      grpc_ssl_session_reuse on;"""
    out = f"""  upstream mtls_in {{ server 127.0.0.1:{PORTS['nginx-in']}; keepalive 128; keepalive_requests 10000000; }}
  server {{
    listen 127.0.0.1:{PORTS['nginx-out']} http2;
    location / {{
      grpc_pass grpcs://mtls_in;
      {tls}
    }}
  }}"""
    inb = f"""  upstream app {{ server 127.0.0.1:{PORTS['backend']}; keepalive 128; keepalive_requests 10000000; }}
  server {{
    listen 127.0.0.1:{PORTS['nginx-in']} ssl http2;
    ssl_certificate {c['sc']};
    ssl_certificate_key {c['sk']};
    ssl_client_certificate {c['ca']};
    ssl_verify_client on;
    ssl_verify_depth 2;
    ssl_protocols TLSv1.3;
    location / {{ grpc_pass grpc://app; }}
  }}"""
    procs.start("nginx-in", nginx_conf(tmp, "nginx-in", inb))
    procs.start("nginx-out", nginx_conf(tmp, "nginx-out", out))
    procs.wait_port("nginx-in", PORTS["nginx-in"])
    procs.wait_port("nginx-out", PORTS["nginx-out"])


# The same global and defaults sections as the pairs benchmark's haproxy.
with open(os.path.join(HERE, "..", "pairs", "haproxy-common.cfg")) as f:
    HAPROXY_COMMON = f.read()


def start_haproxy_pair(procs, tmp, c):
    out = HAPROXY_COMMON + f"""frontend out
  bind 127.0.0.1:{PORTS['haproxy-out']} proto h2
  default_backend mtls_in
backend mtls_in
  http-reuse always
  server in 127.0.0.1:{PORTS['haproxy-in']} ssl crt {c['client_pem']} ca-file {c['ca']} verify required verifyhost {SERVER_DNS} sni str({SERVER_DNS}) alpn h2
"""
    inb = HAPROXY_COMMON + f"""frontend in
  bind 127.0.0.1:{PORTS['haproxy-in']} ssl crt {c['server_pem']} ca-file {c['ca']} verify required alpn h2
  default_backend app
backend app
  http-reuse always
  server app 127.0.0.1:{PORTS['backend']} proto h2
"""
    for side, text in (("in", inb), ("out", out)):
        path = write(os.path.join(tmp, f"haproxy-{side}.cfg"), text)
        procs.start(f"haproxy-{side}", ["haproxy", "-db", "-f", path])
    procs.wait_port("haproxy-in", PORTS["haproxy-in"])
    procs.wait_port("haproxy-out", PORTS["haproxy-out"])


def start_stunnel_pair(procs, tmp, c):
    stunnel = shutil.which("stunnel4") or shutil.which("stunnel")
    common = "foreground = yes\npid =\n"
    out = common + f"""[out]
client = yes
accept = 127.0.0.1:{PORTS['stunnel-out']}
connect = 127.0.0.1:{PORTS['stunnel-in']}
cert = {c['cc']}
key = {c['ck']}
CAfile = {c['ca']}
verifyChain = yes
checkHost = {SERVER_DNS}
sslVersionMin = TLSv1.3
"""
    inb = common + f"""[in]
accept = 127.0.0.1:{PORTS['stunnel-in']}
connect = 127.0.0.1:{PORTS['redis']}
cert = {c['sc']}
key = {c['sk']}
CAfile = {c['ca']}
verifyChain = yes
requireCert = yes
sslVersionMin = TLSv1.3
"""
    for side, text in (("in", inb), ("out", out)):
        path = write(os.path.join(tmp, f"stunnel-{side}.conf"), text)
        procs.start(f"stunnel-{side}", [stunnel, path])
    procs.wait_port("stunnel-in", PORTS["stunnel-in"])
    procs.wait_port("stunnel-out", PORTS["stunnel-out"])


def start_meshguard_pair(procs, tmp, c, binary, only):
    """One inbound (h2c app + a TCP port) and one outbound (h2c-capable
    listener, plus a TCP route to redis), both with one worker."""
    inbound = f"""identity: {{cert: {c['sc']}, key: {c['sk']}, bundle: {c['ca']}}}
inbound:
  listen: 127.0.0.1:{PORTS['meshguard-in']}
  app: 127.0.0.1:{PORTS['backend']}
  tcp_ports: [{PORTS['redis']}]
admin: {{listen: 127.0.0.1:{PORTS['meshguard-admin-in']}}}
runtime: {{workers: 1}}
"""
    outbound = f"""identity: {{cert: {c['cc']}, key: {c['ck']}, bundle: {c['ca']}}}
outbound:
  routes:
    - listen: 127.0.0.1:{PORTS['meshguard-out']}
      peer: 127.0.0.1:{PORTS['meshguard-in']}
      identity: {SERVER_ID}
  tcp_routes:
    - listen: 127.0.0.1:{PORTS['meshguard-tcp-out']}
      peer: 127.0.0.1:{PORTS['meshguard-in']}
      identity: {SERVER_ID}
      port: {PORTS['redis']}
admin: {{listen: 127.0.0.1:{PORTS['meshguard-admin-out']}}}
runtime: {{workers: 1}}
"""
    env = dict(os.environ, MESHGUARD_LOG=os.environ.get("MESHGUARD_LOG", "warn"))
    for side, text in (("in", inbound), ("out", outbound)):
        path = write(os.path.join(tmp, f"meshguard-{side}.yaml"), text)
        procs.start(f"meshguard-{side}", [binary, "--log-format", "json", "run", "--config", path], env)
    for side in ("in", "out"):
        url = f"http://127.0.0.1:{PORTS[f'meshguard-admin-{side}']}/ready"
        for _ in range(100):
            try:
                if urllib.request.urlopen(url, timeout=1).status == 200:
                    break
            except OSError:
                pass
            if procs.pids[f"meshguard-{side}"].poll() is not None:
                break
            time.sleep(0.1)
        else:
            sys.exit(f"meshguard-{side} not ready; see {tmp}/meshguard-{side}.log")


# ---------------------------------------------------------------- load


def h2load(port, duration, clients, streams):
    cmd = ["h2load", "-c", str(clients), "-m", str(streams), "-t", "1", "-D", str(duration),
           "--warm-up-time", "1", f"http://127.0.0.1:{port}/"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60).stdout
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    rps = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    if not m or not rps:
        raise RuntimeError(f"h2load gave no result: {out[-400:]}")
    done, ok = int(m.group(3)), int(m.group(4))
    status = re.search(r"status codes: (\d+) 2xx", out)
    return {"requests": done, "succeeded": ok, "rps": float(rps.group(1)),
            "ok_2xx": int(status.group(1)) if status else 0}


def redis_bench(port, requests, clients):
    """GET of 64-byte values, a fixed number of requests (redis-benchmark has
    no duration flag); the rate is the one redis-benchmark reports."""
    cmd = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-c", str(clients), "-n", str(requests),
           "-t", "get", "-d", "64", "-r", "100000", "-q", "--csv"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600).stdout
    m = re.search(r'^"GET","([\d.]+)"', out, re.M)
    if not m:
        raise RuntimeError(f"redis-benchmark gave no result: {out[-400:]}")
    return {"requests": requests, "succeeded": requests, "rps": float(m.group(1))}


def measure(procs, names, fn):
    pids = procs.pids_of(*names) if names else []
    t0, c0 = time.monotonic(), cpu_ticks(pids)
    result = fn()
    wall, ticks = time.monotonic() - t0, cpu_ticks(pids) - c0
    result["proxy_cpu_s"] = ticks / HZ
    result["wall_s"] = wall
    result["cpu_us_per_req"] = (ticks / HZ) * 1e6 / max(1, result["requests"]) if names else None
    result["rss_peak_mib"] = {n: round((proc_status(procs.pids[n].pid, "VmHWM") or 0) / 2**20, 1) for n in names}
    return result


def run(args, procs, tmp):
    h2c_pairs = {"direct": ("backend", []), "meshguard": ("meshguard-out", ["meshguard-out", "meshguard-in"]),
                 "nginx": ("nginx-out", ["nginx-out", "nginx-in"]),
                 "haproxy": ("haproxy-out", ["haproxy-out", "haproxy-in"])}
    tcp_pairs = {"direct": ("redis", []), "meshguard": ("meshguard-tcp-out", ["meshguard-out", "meshguard-in"]),
                 "stunnel": ("stunnel-out", ["stunnel-out", "stunnel-in"])}
    results = {"h2c": {}, "tcp": {}}
    for rnd in range(args.rounds):
        for test, pairs in (("h2c", h2c_pairs), ("tcp", tcp_pairs)):
            if test not in args.only:
                continue
            order = [p for p in pairs if p in args.pairs]
            order = order[rnd % len(order):] + order[:rnd % len(order)]
            for name in order:
                port_name, proxies = pairs[name]
                if test == "h2c":
                    fn = lambda: h2load(PORTS[port_name], args.duration, args.clients, args.streams)  # noqa: E731
                else:
                    fn = lambda: redis_bench(PORTS[port_name], args.tcp_requests, 50)  # noqa: E731
                r = measure(procs, proxies, fn)
                results[test].setdefault(name, []).append(r)
                cpu = f"{r['cpu_us_per_req']:.1f} us/req" if r["cpu_us_per_req"] else "-"
                log(f"round {rnd + 1} {test} {name}: {r['rps']:.0f} req/s, proxies {cpu}")
    return results


def summarise(results):
    out = {}
    for test, pairs in results.items():
        rows = {}
        for name, runs in pairs.items():
            cpu = [r["cpu_us_per_req"] for r in runs if r["cpu_us_per_req"]]
            rows[name] = {"rps": statistics.median(r["rps"] for r in runs),
                          "cpu_us_per_req": statistics.median(cpu) if cpu else None,
                          "failed": sum(r["requests"] - r["succeeded"] for r in runs),
                          "rss_peak_mib": runs[-1]["rss_peak_mib"]}
        peers = [n for n in rows if n not in ("direct", "meshguard")]
        if "meshguard" in rows and peers:
            best_rps = max(rows[p]["rps"] for p in peers)
            best_cpu = min(rows[p]["cpu_us_per_req"] for p in peers)
            rows["meshguard"]["throughput_vs_best_peer"] = rows["meshguard"]["rps"] / best_rps
            rows["meshguard"]["cpu_vs_best_peer"] = rows["meshguard"]["cpu_us_per_req"] / best_cpu
        out[test] = rows
    return out


def report_md(summary, meta):
    lines = [f"# Protocols benchmark {meta['when']}", "",
             f"{meta['rounds']} rounds x {meta['duration']} s; h2load -c {meta['clients']} -m {meta['streams']}; "
             f"redis-benchmark -c 50 GET 64 B; meshguard {meta['meshguard']}", ""]
    for test, rows in summary.items():
        if not rows:
            continue
        lines += [f"## {test}", "", "| pair | req/s (median) | proxies' CPU us/req | failed | peak RSS MiB |",
                  "|---|---:|---:|---:|---|"]
        for name, r in rows.items():
            cpu = f"{r['cpu_us_per_req']:.1f}" if r["cpu_us_per_req"] else "-"
            rss = ", ".join(f"{k} {v}" for k, v in r["rss_peak_mib"].items()) or "-"
            lines.append(f"| {name} | {r['rps']:.0f} | {cpu} | {r['failed']} | {rss} |")
        mg = rows.get("meshguard", {})
        if "throughput_vs_best_peer" in mg:
            lines += ["", f"meshguard: throughput {mg['throughput_vs_best_peer']:.2f}x the best peer, "
                          f"CPU per request {mg['cpu_vs_best_peer']:.2f}x the best peer's."]
        lines.append("")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--streams", type=int, default=32)
    ap.add_argument("--tcp-requests", type=int, default=1000000)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--only", default="h2c,tcp")
    ap.add_argument("--pairs", default="direct,meshguard,nginx,haproxy,stunnel")
    args = ap.parse_args()
    args.only = set(args.only.split(","))
    args.pairs = set(args.pairs.split(","))
    if args.quick:
        args.rounds, args.duration, args.tcp_requests = 1, 3, 200000
    ensure_packages()
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
    binary = os.environ.get("MESHGUARD_BIN", os.path.join(target, "release", "meshguard"))
    if not args.no_build:
        log("cargo build --release")
        subprocess.run(["cargo", "build", "--release"], cwd=REPO, check=True)
    tmp = tempfile.mkdtemp(prefix="meshguard-protocols.")
    procs = Procs(tmp)
    try:
        subprocess.run([binary, "certs", "dev", "--out", f"{tmp}/certs", "--workload", "default/client",
                        "--workload", "default/server"], check=True, capture_output=True)
        d = f"{tmp}/certs/default"
        c = {"ca": f"{tmp}/certs/ca.crt", "cc": f"{d}/client/tls.crt", "ck": f"{d}/client/tls.key",
             "sc": f"{d}/server/tls.crt", "sk": f"{d}/server/tls.key"}
        c["client_pem"] = write(f"{tmp}/certs/client.pem", open(c["cc"]).read() + open(c["ck"]).read())
        c["server_pem"] = write(f"{tmp}/certs/server.pem", open(c["sc"]).read() + open(c["sk"]).read())
        start_backends(procs, tmp, c, args.only)
        if "h2c" in args.only and "nginx" in args.pairs:
            start_nginx_pair(procs, tmp, c)
        if "h2c" in args.only and "haproxy" in args.pairs:
            start_haproxy_pair(procs, tmp, c)
        if "tcp" in args.only and "stunnel" in args.pairs:
            start_stunnel_pair(procs, tmp, c)
        if "meshguard" in args.pairs:
            start_meshguard_pair(procs, tmp, c, binary, args.only)
        results = run(args, procs, tmp)
    finally:
        procs.stop()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    meta = {"when": when, "rounds": args.rounds, "duration": args.duration, "clients": args.clients,
            "streams": args.streams, "meshguard": git}
    summary = summarise(results)
    os.makedirs(os.path.join(REPO, "benches", "results"), exist_ok=True)
    base = os.path.join(REPO, "benches", "results", f"protocols-{when}")
    with open(base + ".json", "w") as f:
        json.dump({"meta": meta, "summary": summary, "runs": results}, f, indent=1)
    md = report_md(summary, meta)
    write(base + ".md", md)
    print(md)


if __name__ == "__main__":
    main()
