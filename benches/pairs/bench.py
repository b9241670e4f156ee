#!/usr/bin/env python3
"""Measurement driver of the mTLS pairs benchmark (started by run.sh).

run.sh starts the backend and every proxy and writes a spec (JSON) naming the
pairs, their URLs and the pids of their processes. This program runs wrk
against each pair in rotating order, reads per-process CPU time and peak RSS
from /proc, watches the rest of the machine (steal, CPU of processes that are
not under test), and writes the raw results as JSON plus a Markdown report.

    bench.py run  --spec spec.json --out-json F --out-md F [--rounds N ...]
    bench.py soak --spec spec.json --pair meshguard --seconds 600 ...
"""

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report  # noqa: E402

HZ = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1
# keep-alive at --conns, one request in flight, keep-alive at --lat-conns (latency
# under load: issue 21 asks for p50 and p99 at c1 and at c32), new connections.
TESTS = ("ka", "lat", "l32", "nc")


# ---------------------------------------------------------------- /proc


def proc_stat(pid):
    """(ppid, utime+stime, utime, stime) in ticks of one process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rindex(")") + 2 :].split()
    # rest[0] = state (field 3), so field n is rest[n - 3].
    u, s = int(rest[11]), int(rest[12])
    return int(rest[1]), u + s, u, s


def proc_status(pid, key):
    """A kB field of /proc/<pid>/status (VmHWM, VmRSS) in bytes, or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def proc_comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def all_pids():
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def tree(root):
    """root and every descendant process (nginx master + worker, ...)."""
    children = {}
    for pid in all_pids():
        st = proc_stat(pid)
        if st:
            children.setdefault(st[0], []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cpu_ticks(pids):
    """Sum of utime+stime (ticks) of the processes in pids that still exist."""
    total = 0
    for pid in pids:
        st = proc_stat(pid)
        if st:
            total += st[1]
    return total


def cpu_split(pids):
    """(utime, stime) ticks summed over the processes in pids."""
    u = s = 0
    for pid in pids:
        st = proc_stat(pid)
        if st:
            u, s = u + st[2], s + st[3]
    return u, s


def machine_ticks():
    """Busy and steal ticks of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = v[:8]
    return {"busy": user + nice + system + irq + softirq, "steal": steal}


def all_proc_ticks():
    """utime+stime of every process (to name the biggest foreign consumers)."""
    out = {}
    for pid in all_pids():
        st = proc_stat(pid)
        if st:
            out[pid] = st[1]
    return out


# ---------------------------------------------------------------- wrk


def run_wrk(lua, url, duration, conns, close=False, timeout_s=5):
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{duration}s", f"--timeout={timeout_s}s", "-s", lua]
    if close:
        cmd += ["-H", "Connection: close"]
    cmd.append(url)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=duration + 60)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    # communicate() reaped the child; its rusage is in RUSAGE_CHILDREN.
    result = None
    for line in out.splitlines():
        if line.startswith("WRKJSON "):
            result = json.loads(line[len("WRKJSON ") :])
    if result is None:
        raise RuntimeError(f"wrk gave no result (rc={proc.returncode}): {err.strip()} {out.strip()}")
    return result, cmd


def children_cpu_s():
    r = os.times()
    return r.children_user + r.children_system


def self_cpu_s():
    r = os.times()
    return r.user + r.system


# ---------------------------------------------------------------- measuring


class Bench:
    def __init__(self, spec, args):
        self.spec = spec
        self.args = args
        self.pairs = {p["name"]: p for p in spec["pairs"]}
        # Every process we started (any pair, the backend): not "foreign".
        self.ours_roots = list(spec.get("backend_pids", []))
        for p in spec["pairs"]:
            self.ours_roots.extend(p.get("proxies", {}).values())

    def lua(self, pair):
        """The wrk script of a pair: its own (extra request headers) or the shared one."""
        return self.pairs[pair].get("lua") or self.args.lua

    def proxy_trees(self, pair):
        return {role: tree(pid) for role, pid in self.pairs[pair].get("proxies", {}).items()}

    def alive(self, pair):
        return all(proc_stat(pid) is not None for pid in self.pairs[pair].get("proxies", {}).values())

    def measure(self, pair, test, duration, phase, round_no):
        p = self.pairs[pair]
        trees = self.proxy_trees(pair)
        ours = set()
        for root in self.ours_roots:
            ours.update(tree(root))
        conns = {"lat": 1, "l32": self.args.lat_conns}.get(test, self.args.conns)
        m0, ours0, self0, ch0 = machine_ticks(), cpu_ticks(ours), self_cpu_s(), children_cpu_s()
        role0 = {r: cpu_split(t) for r, t in trees.items()}
        everyone0 = all_proc_ticks()
        t0 = time.monotonic()
        wrk, cmd = run_wrk(self.lua(pair), p["url"], duration, conns, close=(test == "nc"))
        wall = time.monotonic() - t0
        role1 = {r: cpu_split(t) for r, t in trees.items()}
        m1, ours1, self1, ch1 = machine_ticks(), cpu_ticks(ours), self_cpu_s(), children_cpu_s()
        everyone1 = all_proc_ticks()

        req = wrk["requests"]
        secs = wrk["duration_us"] / 1e6
        proxy_cpu = {r: (sum(role1[r]) - sum(role0[r])) / HZ for r in trees}
        proxy_user = {r: (role1[r][0] - role0[r][0]) / HZ for r in trees}
        wrk_cpu = ch1 - ch0
        ours_cpu = (ours1 - ours0) / HZ + wrk_cpu + (self1 - self0)
        busy = (m1["busy"] - m0["busy"]) / HZ
        steal = (m1["steal"] - m0["steal"]) / HZ
        foreign = max(0.0, busy - ours_cpu)
        top = []
        for pid, ticks in everyone1.items():
            d = ticks - everyone0.get(pid, ticks)
            if d > 0 and pid not in ours and pid != os.getpid():
                top.append((d / HZ, pid, proc_comm(pid)))
        top.sort(reverse=True)
        disturbed = []
        if foreign / wall > self.args.max_foreign:
            disturbed.append(f"foreign {foreign / wall:.2f} cores")
        if steal / wall > self.args.max_steal:
            disturbed.append(f"steal {steal / wall:.2f} cores")
        errors = sum(wrk["errors"].values())
        rec = {
            "phase": phase,
            "round": round_no,
            "pair": pair,
            "test": test,
            "connections": conns,
            "duration_s": duration,
            "wall_s": round(wall, 3),
            "wrk_cmd": cmd,
            "wrk": wrk,
            "rps": req / secs if secs else 0.0,
            "proxy_cpu_s": proxy_cpu,
            "proxy_user_cpu_s": proxy_user,
            "proxy_cpu_us_per_req": (sum(proxy_cpu.values()) / req * 1e6) if req and trees else None,
            "wrk_cpu_s": round(wrk_cpu, 3),
            "machine_busy_s": round(busy, 3),
            # Share of the machine's CPU time nobody used during the measurement
            # (issue 21: a pipeline that waits leaves the machine idle).
            "machine_idle_share": round(max(0.0, 1 - busy / (wall * NCPU)), 4) if wall else None,
            "ours_cpu_s": round(ours_cpu, 3),
            "foreign_cpu_s": round(foreign, 3),
            "foreign_cores": round(foreign / wall, 3),
            "steal_s": round(steal, 3),
            "steal_cores": round(steal / wall, 3),
            "top_foreign": [{"cpu_s": round(c, 2), "pid": pid, "comm": comm} for c, pid, comm in top[:5]],
            "disturbed": disturbed,
            "errors": errors,
            "proxies_alive": self.alive(pair),
        }
        return rec

    def syscalls(self, pair, duration):
        """Syscalls and context switches per request of each proxy, counted by
        perf (raw_syscalls:sys_enter tracepoint) over one keep-alive run.
        Run apart from the timed rounds: counting adds a little overhead."""
        trees = self.proxy_trees(pair)
        if not trees:
            return None
        perfs = {}
        for role, pids in trees.items():
            out = f"/tmp/meshguard-pairs-perf-{os.getpid()}-{pair}-{role}.csv"
            cmd = ["perf", "stat", "-x", ",", "-o", out, "-e", "raw_syscalls:sys_enter,context-switches",
                   "-p", ",".join(map(str, pids))]
            perfs[role] = (subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), out)
        time.sleep(0.5)
        try:
            wrk, _ = run_wrk(self.lua(pair), self.pairs[pair]["url"], duration, self.args.conns)
        finally:
            time.sleep(0.3)
            for proc, _ in perfs.values():
                proc.send_signal(2)
            for proc, _ in perfs.values():
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        req = wrk["requests"]
        res = {"requests": req, "rps": req / (wrk["duration_us"] / 1e6)}
        for role, (_, out) in perfs.items():
            counts = {}
            try:
                with open(out) as f:
                    for line in f:
                        parts = line.strip().split(",")
                        if len(parts) > 2 and parts[0].replace(".", "").isdigit():
                            counts[parts[2]] = float(parts[0])
                os.unlink(out)
            except OSError:
                pass
            res[role] = {
                "syscalls": counts.get("raw_syscalls:sys_enter"),
                "context_switches": counts.get("context-switches"),
                "syscalls_per_req": counts["raw_syscalls:sys_enter"] / req if req and "raw_syscalls:sys_enter" in counts else None,
                "cs_per_req": counts["context-switches"] / req if req and "context-switches" in counts else None,
            }
        return res

    def peak_rss(self):
        out = {}
        for name, p in self.pairs.items():
            for role, root in p.get("proxies", {}).items():
                procs = []
                for pid in tree(root):
                    procs.append(
                        {
                            "pid": pid,
                            "comm": proc_comm(pid),
                            "vm_hwm": proc_status(pid, "VmHWM"),
                            "vm_rss": proc_status(pid, "VmRSS"),
                        }
                    )
                hwms = [x["vm_hwm"] or 0 for x in procs]
                out.setdefault(name, {})[role] = {
                    "peak_rss_max": max(hwms) if hwms else None,
                    "peak_rss_sum": sum(hwms),
                    "processes": procs,
                }
        return out


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def fmt_rec(r):
    cpu = r["proxy_cpu_us_per_req"]
    extra = f" cpu={cpu:.1f}µs/req" if cpu is not None else ""
    lat = r["wrk"]["latency_us"]
    d = " DISTURBED(" + ", ".join(r["disturbed"]) + ")" if r["disturbed"] else ""
    e = f" errors={r['errors']}" if r["errors"] else ""
    return (
        f"  {r['phase']:<6} r{r['round']} {r['pair']:<16} {r['test']:<3} {r['rps']:>9.0f} req/s "
        f"p50={lat['p50']}µs p99={lat['p99']}µs{extra} foreign={r['foreign_cores']:.2f} "
        f"steal={r['steal_cores']:.2f}{e}{d}"
    )


def cmd_run(args):
    with open(args.spec) as f:
        spec = json.load(f)
    b = Bench(spec, args)
    names = [p["name"] for p in spec["pairs"]]
    records = []
    started = datetime.datetime.now(datetime.timezone.utc)
    log(f"warm-up: {args.warmup}s per pair and test")
    if args.warmup > 0:
        for name in names:
            for test in TESTS:
                r = b.measure(name, test, args.warmup, "warmup", 0)
                records.append(r)
                log(fmt_rec(r))
    for rnd in range(1, args.rounds + 1):
        k = (rnd - 1) % len(names)
        order = names[k:] + names[:k]
        log(f"round {rnd}/{args.rounds}: order {' → '.join(order)}")
        for name in order:
            for test in TESTS:
                r = b.measure(name, test, args.duration, "round", rnd)
                records.append(r)
                log(fmt_rec(r))
                if not r["proxies_alive"]:
                    raise SystemExit(f"a proxy of pair {name} died during the {test} test")
    sysc = {}
    if args.perf:
        log(f"syscall counts (perf stat, keep-alive -c{args.conns}, {args.duration}s per pair; not timed)")
        for name in names:
            try:
                r = b.syscalls(name, args.duration)
            except Exception as e:  # perf missing or not permitted: the rest stands
                log(f"  {name}: perf stat failed: {e}")
                continue
            if r:
                sysc[name] = r
                log("  " + name + " " + " ".join(
                    f"{role}: {v['syscalls_per_req'] or 0:.2f} syscalls/req, {v['cs_per_req'] or 0:.2f} cs/req"
                    for role, v in r.items() if isinstance(v, dict)))
    rss = b.peak_rss()
    finished = datetime.datetime.now(datetime.timezone.utc)
    result = {
        "kind": "meshguard-pairs-benchmark",
        "started": started.isoformat(timespec="seconds"),
        "finished": finished.isoformat(timespec="seconds"),
        "params": {
            "rounds": args.rounds,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "connections": args.conns,
            "workers": spec.get("workers", 1),
            "max_foreign_cores": args.max_foreign,
            "max_steal_cores": args.max_steal,
            "tests": {
                "ka": f"wrk -t1 -c{args.conns}, keep-alive",
                "lat": "wrk -t1 -c1, keep-alive",
                "l32": f"wrk -t1 -c{args.lat_conns}, keep-alive (latency under load)",
                "nc": f"wrk -t1 -c{args.conns} -H 'Connection: close'",
            },
        },
        "machine": spec.get("machine", {}),
        "versions": spec.get("versions", {}),
        "pairs": spec["pairs"],
        "checks": spec.get("checks", []),
        "peak_rss": rss,
        "syscalls": sysc,
        "records": records,
    }
    result["summary"] = report.summarize(result)
    md = report.render(result)
    with open(args.out_json, "w") as f:
        json.dump(result, f, indent=1)
    with open(args.out_md, "w") as f:
        f.write(md)
    print(md)


def cmd_soak(args):
    with open(args.spec) as f:
        spec = json.load(f)
    b = Bench(spec, args)
    pair = b.pairs[args.pair]
    roles = pair["proxies"]
    cmd = ["wrk", "-t1", f"-c{args.conns}", f"-d{args.seconds}s", "--timeout=5s", "-s", b.lua(args.pair), pair["url"]]
    log(f"soak: {' '.join(cmd)}; sampling RSS every {args.interval}s")
    samples = []
    t0 = time.monotonic()
    m0 = machine_ticks()
    cpu0 = {r: cpu_ticks(tree(p)) for r, p in roles.items()}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while proc.poll() is None:
            t = time.monotonic() - t0
            m = machine_ticks()
            s = {"t_s": round(t, 1)}
            for r, p in roles.items():
                s[f"{r}_rss"] = proc_status(p, "VmRSS")
                s[f"{r}_hwm"] = proc_status(p, "VmHWM")
                s[f"{r}_anon"] = proc_status(p, "RssAnon")
                s[f"{r}_cpu_s"] = (cpu_ticks(tree(p)) - cpu0[r]) / HZ
            s["steal_s"] = (m["steal"] - m0["steal"]) / HZ
            samples.append(s)
            log(
                f"  t={t:6.1f}s "
                + " ".join(f"{r} rss={(s[f'{r}_rss'] or 0) / 2**20:.2f}MiB" for r in roles)
            )
            deadline = time.monotonic() + args.interval
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
        out, err = proc.communicate()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    wrk = None
    for line in out.splitlines():
        if line.startswith("WRKJSON "):
            wrk = json.loads(line[len("WRKJSON ") :])
    final = {r: {"rss": proc_status(p, "VmRSS"), "hwm": proc_status(p, "VmHWM")} for r, p in roles.items()}
    result = {
        "kind": "meshguard-pairs-soak",
        "pair": args.pair,
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seconds": args.seconds,
        "interval_s": args.interval,
        "connections": args.conns,
        "machine": spec.get("machine", {}),
        "versions": spec.get("versions", {}),
        "wrk": wrk,
        "samples": samples,
        "final": final,
        "alive": b.alive(args.pair),
    }
    md = report.render_soak(result)
    with open(args.out_json, "w") as f:
        json.dump(result, f, indent=1)
    with open(args.out_md, "w") as f:
        f.write(md)
    print(md)


def main():
    # run.sh stops us with SIGTERM: exit through the finally blocks (they kill wrk).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("run", "soak"):
        s = sub.add_parser(name)
        s.add_argument("--spec", required=True)
        s.add_argument("--lua", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "wrk-json.lua"))
        s.add_argument("--conns", type=int, default=50)
        s.add_argument("--out-json", required=True)
        s.add_argument("--out-md", required=True)
        s.add_argument("--max-foreign", type=float, default=0.10, help="cores of foreign CPU that mark a run disturbed")
        s.add_argument("--max-steal", type=float, default=0.05, help="cores of steal that mark a run disturbed")
    r = sub.choices["run"]
    r.add_argument("--rounds", type=int, default=3)
    r.add_argument("--duration", type=int, default=10)
    r.add_argument("--warmup", type=int, default=3)
    r.add_argument("--lat-conns", type=int, default=32, help="connections of the latency-under-load test")
    r.add_argument("--perf", action=argparse.BooleanOptionalAction, default=True,
                   help="count syscalls and context switches per request with perf stat (after the rounds)")
    s = sub.choices["soak"]
    s.add_argument("--pair", default="meshguard")
    s.add_argument("--seconds", type=int, default=600)
    s.add_argument("--interval", type=float, default=5)
    args = ap.parse_args()
    {"run": cmd_run, "soak": cmd_soak}[args.cmd](args)


if __name__ == "__main__":
    main()
