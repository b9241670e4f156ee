#!/usr/bin/env python3
"""Turns the raw JSON of the pairs benchmark into Markdown tables.

    report.py benches/results/pairs-<date>.json   # re-render a saved run
"""

import json
import statistics
import sys

PEERS = ("nginx", "haproxy", "stunnel")
# The peers that proxy HTTP (stunnel only tunnels bytes): issue 21's latency
# targets are against the best of these.
HTTP_PEERS = ("nginx", "haproxy")
MIB = 2**20

# The feature variants of the meshguard pair (run.sh), each set against the
# plain `meshguard` pair of the same rounds: (pair, what it adds, the bound of
# its issue on the CPU per request it adds, as ("us", µs) or ("pct", %)).
VARIANTS = {
    "meshguard-policy": ("a policy of seven rules (issue 21: the figure with a policy)", None),
    "meshguard-jwt": ("a `jwt:` rule, repeated RS256 token, and a per-caller rate limit "
                      "(issue 15: within 10 %)", ("pct", 10.0)),
    "meshguard-assert": ("the identity assertion, default HMAC mode (issue 16: at most +3 µs)", ("us", 3.0)),
    "meshguard-mc": ("several multiplexed HTTP/2 connections per peer (`outbound.h2_connections_per_peer`, "
                     "issue 21's pipeline candidate)", None),
}

# Targets of issue 8, as ratios against the best peer pair of the same run.
TARGETS = [
    # key, label, comparison, bound
    ("ka_x_best", "keep-alive throughput ≥ 1.5× best peer", ">=", 1.5),
    ("cpu_x_best", "proxy CPU per request ≤ 0.6× best peer (primary)", "<=", 0.6),
    ("p99_x_best", "p99 latency ≤ best peer's", "<=", 1.0),
    ("added_x_best", "added p50 ≤ 0.5× best peer's", "<=", 0.5),
    ("nc_x_best", "new-connection rate ≥ best peer's", ">=", 1.0),
    ("rss_mib", "peak RSS ≤ 8 MiB per proxy", "<=", 8.0),
]


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def idle_share(rec, nproc):
    """Share of all cores' time nobody used during one measurement."""
    if rec.get("machine_idle_share") is not None:
        return rec["machine_idle_share"]
    if rec.get("machine_busy_s") is None or not rec.get("wall_s") or not nproc:
        return None
    return max(0.0, 1 - rec["machine_busy_s"] / (rec["wall_s"] * nproc))


def summarize(result):
    recs = [r for r in result["records"] if r["phase"] == "round"]
    nproc = result.get("machine", {}).get("nproc")
    pairs = [p["name"] for p in result["pairs"]]
    s = {}
    for name in pairs:
        mine = [r for r in recs if r["pair"] == name]
        by = {t: [r for r in mine if r["test"] == t] for t in ("ka", "lat", "l32", "nc")}
        rss = result.get("peak_rss", {}).get(name, {})
        row = {
            "ka_rps": med([r["rps"] for r in by["ka"]]),
            "ka_rps_all": [round(r["rps"]) for r in by["ka"]],
            "cpu_us": med([r["proxy_cpu_us_per_req"] for r in by["ka"]]),
            "cpu_us_all": [
                None if r["proxy_cpu_us_per_req"] is None else round(r["proxy_cpu_us_per_req"], 1)
                for r in by["ka"]
            ],
            "cpu_us_by_role": {
                role: med([r["proxy_cpu_s"][role] / r["wrk"]["requests"] * 1e6 for r in by["ka"] if r["wrk"]["requests"]])
                for role in (by["ka"][0]["proxy_cpu_s"] if by["ka"] else {})
            },
            "user_share": med([
                sum(r["proxy_user_cpu_s"].values()) / sum(r["proxy_cpu_s"].values())
                for r in by["ka"] if r.get("proxy_user_cpu_s") and sum(r["proxy_cpu_s"].values()) > 0
            ]),
            "p50": med([r["wrk"]["latency_us"]["p50"] for r in by["lat"]]),
            "p99": med([r["wrk"]["latency_us"]["p99"] for r in by["lat"]]),
            "p999": med([r["wrk"]["latency_us"]["p999"] for r in by["lat"]]),
            "c1_rps": med([r["rps"] for r in by["lat"]]),
            "c1_cpu_us": med([r["proxy_cpu_us_per_req"] for r in by["lat"]]),
            "ka_p99": med([r["wrk"]["latency_us"]["p99"] for r in by["ka"]]),
            "c32_p50": med([r["wrk"]["latency_us"]["p50"] for r in by["l32"]]),
            "c32_p99": med([r["wrk"]["latency_us"]["p99"] for r in by["l32"]]),
            "nc_rps": med([r["rps"] for r in by["nc"]]),
            "nc_cpu_us": med([r["proxy_cpu_us_per_req"] for r in by["nc"]]),
            "rss_out": (rss.get("out") or {}).get("peak_rss_max"),
            "rss_in": (rss.get("in") or {}).get("peak_rss_max"),
            "measurements": len(mine),
            "disturbed": sum(1 for r in mine if r["disturbed"]),
            "foreign_cores": med([r["foreign_cores"] for r in mine]),
            "steal_cores": med([r["steal_cores"] for r in mine]),
            "errors": sum(r["errors"] for r in mine),
            # Machine idle share per phase (for older result files, from busy
            # time, wall time and the machine's CPU count).
            "idle": {t: med([x for x in (idle_share(r, nproc) for r in by[t]) if x is not None])
                     for t in ("ka", "nc", "lat")},
        }
        row["cpu_us_by_round"] = {
            r["round"]: r["proxy_cpu_us_per_req"] for r in by["ka"] if r["proxy_cpu_us_per_req"] is not None
        }
        rs = [x for x in (row["rss_out"], row["rss_in"]) if x]
        row["rss_max"] = max(rs) if rs else None
        s[name] = row
    direct = s.get("direct", {})
    for name, row in s.items():
        row["p50_added"] = added(row.get("p50"), direct.get("p50"))
        row["c32_added"] = added(row.get("c32_p50"), direct.get("c32_p50"))
    peers = [n for n in PEERS if n in s]

    def best(key, fn):
        vals = [(s[n][key], n) for n in peers if s[n].get(key) is not None]
        return fn(vals) if vals else (None, None)

    bests = {
        "ka_rps": best("ka_rps", max),
        "nc_rps": best("nc_rps", max),
        "cpu_us": best("cpu_us", min),
        "p50": best("p50", min),
        "p99": best("p99", min),
        "p50_added": best("p50_added", min),
        "rss_max": best("rss_max", min),
    }
    for name, row in s.items():
        row["ka_x_direct"] = ratio(row["ka_rps"], direct.get("ka_rps"))
        row["nc_x_direct"] = ratio(row["nc_rps"], direct.get("nc_rps"))
        row["ka_x_best"] = ratio(row["ka_rps"], bests["ka_rps"][0])
        row["nc_x_best"] = ratio(row["nc_rps"], bests["nc_rps"][0])
        row["cpu_x_best"] = ratio(row["cpu_us"], bests["cpu_us"][0])
        row["p99_x_best"] = ratio(row["p99"], bests["p99"][0])
        b = bests["p50_added"][0]
        row["added_x_best"] = ratio(row["p50_added"], b) if b and b > 0 else None
        row["rss_x_best"] = ratio(row["rss_max"], bests["rss_max"][0])
        row["rss_mib"] = row["rss_max"] / MIB if row["rss_max"] else None
    http_latency(s)
    for name in VARIANTS:
        if name in s:
            s[name]["vs_meshguard"] = variant_delta(s[name], s.get("meshguard"))
            if name == "meshguard-jwt" and "meshguard-policy" in s:
                s[name]["vs_meshguard_policy"] = variant_delta(s[name], s["meshguard-policy"])
    total = sum(r["measurements"] for r in s.values())
    dist = sum(r["disturbed"] for r in s.values())
    return {
        "pairs": s,
        "best_peer": {k: {"value": v, "pair": n} for k, (v, n) in bests.items()},
        "measurements": total,
        "disturbed": dist,
    }


def added(p50, direct_p50):
    """What a pair adds to the direct path's median latency."""
    return None if p50 is None or direct_p50 is None else p50 - direct_p50


# Issue 21's latency figures, each against the best HTTP peer of the run.
HTTP_LATENCY = (
    ("p50_added", "added p50 at c1", 0.8),
    ("p99", "p99 at c1", 1.0),
    ("c32_added", "added p50 at c32", 0.8),
    ("c32_p99", "p99 at c32", 1.0),
)


def http_latency(s):
    """Sets `<key>_x_http` on every row: its latency over the best HTTP peer's."""
    for key, _, _ in HTTP_LATENCY:
        vals = [s[n][key] for n in HTTP_PEERS if n in s and s[n].get(key) is not None]
        best = min(vals) if vals else None
        for row in s.values():
            # An added latency can be 0 or below for the best peer itself.
            row[f"{key}_x_http"] = ratio(row.get(key), best) if best and best > 0 else None


def variant_delta(row, base):
    """CPU per request of a variant against a base pair of the same run: the
    difference of the medians, and the median of the per-round differences
    (both ran in every round, so a round's load moves both)."""
    if not base or row.get("cpu_us") is None or base.get("cpu_us") is None:
        return None
    a, b = row.get("cpu_us_by_round", {}), base.get("cpu_us_by_round", {})
    rounds = sorted(set(a) & set(b))
    per_round = [a[k] - b[k] for k in rounds]
    d = row["cpu_us"] - base["cpu_us"]
    return {
        "base_cpu_us": base["cpu_us"],
        "delta_us": d,
        "delta_pct": 100 * d / base["cpu_us"] if base["cpu_us"] else None,
        "per_round_delta_us": [round(x, 1) for x in per_round],
        "median_round_delta_us": med(per_round),
        "ka_ratio": ratio(row.get("ka_rps"), base.get("ka_rps")),
    }


def render_variants(s):
    """One line per variant: what it costs per request against meshguard."""
    out = []
    present = [n for n in VARIANTS if n in s]
    if not present:
        return out
    out.append("Feature variants of the meshguard pair, each against the plain `meshguard` pair of the same rounds:\n")
    for name in present:
        what, bound = VARIANTS[name]
        r = s[name]
        bases = [("meshguard", r.get("vs_meshguard"))]
        if r.get("vs_meshguard_policy"):
            bases.append(("meshguard-policy", r["vs_meshguard_policy"]))
        for base_name, v in bases:
            if v is None:
                out.append(f"- **{name}** — {what}. CPU/request vs {base_name}: – (no {base_name} pair in this run)")
                continue
            rounds = ", ".join(f"{x:+.1f}" for x in v["per_round_delta_us"]) or "–"
            met = ""
            if bound and base_name == "meshguard":
                kind, limit = bound
                value = v["delta_pct"] if kind == "pct" else v["delta_us"]
                unit = " %" if kind == "pct" else " µs"
                if value is not None:
                    met = f"; bound +{limit:g}{unit}: {'met' if value <= limit else 'NOT met'}"
            ka = "–" if v["ka_ratio"] is None else f"{v['ka_ratio']:.2f}×"
            out.append(
                f"- **{name}** — {what}. CPU/request vs {base_name}: {v['delta_us']:+.1f} µs "
                f"({v['delta_pct']:+.1f} %) ({r['cpu_us']:.1f} against {v['base_cpu_us']:.1f} µs; per round "
                f"{rounds} µs; keep-alive throughput {ka}){met}"
            )
    out.append("")
    return out


def f0(x):
    return "–" if x is None else f"{x:,.0f}"


def f1(x):
    return "–" if x is None else f"{x:.1f}"


def f2(x):
    return "–" if x is None else f"{x:.2f}"


def fx(x):
    return "–" if x is None else f"{x:.2f}×"


def fsigned(x):
    return "–" if x is None else f"{x:+.0f}"


def fmib(x):
    return "–" if x is None else f"{x / MIB:.1f}"


def workers_note(n):
    if n == 1:
        return ""
    return (f"; {n} workers per proxy: meshguard `runtime.workers: {n}`, nginx `worker_processes {n}`, "
            f"haproxy `nbthread {n}`; stunnel, bare and the backend unchanged")


def render(result):
    summ = result.get("summary") or summarize(result)
    s, bp = summ["pairs"], summ["best_peer"]
    p = result["params"]
    m = result.get("machine", {})
    out = []
    out.append(
        f"### Pairs benchmark, {result['started']} "
        f"({p['rounds']} rounds × {p['duration_s']} s, warm-up {p['warmup_s']} s, medians"
        f"{workers_note(p.get('workers', 1))})\n"
    )
    out.append(
        f"Machine: {m.get('nproc', '?')} × {m.get('cpu_model', '?')}, kernel {m.get('kernel', '?')}, "
        f"load before start {m.get('loadavg', '?')}. "
        + ", ".join(f"{k} {v}" for k, v in result.get("versions", {}).items())
        + ".\n"
    )
    checks = result.get("checks") or []
    if checks:
        ok = sum(1 for c in checks if c.startswith("ok"))
        out.append(
            f"mTLS checks before measuring: {ok}/{len(checks)} passed (per inbound: TLS 1.3 + client SVID gets the "
            "backend body; no client cert, a cert from another CA, or TLS 1.2 does not; the pair returns the body).\n"
        )
    if summ["disturbed"]:
        out.append(
            f"**Disturbed:** {summ['disturbed']} of {summ['measurements']} measurements had foreign CPU "
            f"> {p['max_foreign_cores']} cores or steal > {p['max_steal_cores']} cores; absolute numbers "
            f"are unreliable, compare ratios (and CPU per request) only.\n"
        )
    else:
        out.append(f"Undisturbed: all {summ['measurements']} measurements under the foreign-CPU and steal thresholds.\n")
    out.append(
        "| pair | keep-alive req/s | new-conn req/s | p50 µs (c1) | p99 µs (c1) | p50 added µs "
        "| proxy CPU µs/req (out+in) | user % | CPU per round | CPU µs/req new-conn | peak RSS MiB out / in | disturbed (foreign cores) |"
    )
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---|---|")
    for name, r in s.items():
        roles = r["cpu_us_by_role"]
        split = f" ({f1(roles.get('out'))}+{f1(roles.get('in'))})" if roles else ""
        per_round = ", ".join("–" if x is None else f"{x}" for x in r["cpu_us_all"]) if r["cpu_us"] is not None else "–"
        rss = "–" if r["rss_out"] is None else f"{fmib(r['rss_out'])} / {fmib(r['rss_in'])}"
        err = f", {r['errors']} errors" if r["errors"] else ""
        user = "–" if r["user_share"] is None else f"{100 * r['user_share']:.0f}"
        out.append(
            f"| {name} | {f0(r['ka_rps'])} | {f0(r['nc_rps'])} | {f0(r['p50'])} | {f0(r['p99'])} "
            f"| {fsigned(r['p50_added']) if name != 'direct' else '0'} | {f1(r['cpu_us'])}{split} "
            f"| {user} | {per_round} "
            f"| {f1(r['nc_cpu_us'])} | {rss} | {r['disturbed']}/{r['measurements']} ({r['foreign_cores']:.2f}){err} |"
        )
    out.append("")
    if any(r["idle"]["ka"] is not None for r in s.values()):
        out.append("Machine idle during each phase (share of all cores' time nobody used, median of the rounds; "
                   "a proxy pair whose pipeline waits leaves the machine idle while its peers keep it busy):\n")
        out.append("| pair | idle % keep-alive (c50) | idle % new connections | idle % one request in flight (c1) |")
        out.append("|---|---:|---:|---:|")
        pct = lambda x: "–" if x is None else f"{100 * x:.0f}"
        for name, r in s.items():
            out.append(f"| {name} | {pct(r['idle']['ka'])} | {pct(r['idle']['nc'])} | {pct(r['idle']['lat'])} |")
        out.append("")
    out.append(
        "| pair | keep-alive × direct | keep-alive × best peer | new-conn × direct | new-conn × best peer "
        "| CPU/req × best peer | p99 × best peer | p50 added × best peer | peak RSS × best peer |"
    )
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    out.extend(proxy_rows(s, lambda r: [fx(r[k]) for k in (
        "ka_x_direct", "ka_x_best", "nc_x_direct", "nc_x_best", "cpu_x_best", "p99_x_best", "added_x_best",
        "rss_x_best")]))
    out.append("")
    out.extend(render_http_latency(s))
    names = {
        "ka_rps": "keep-alive",
        "nc_rps": "new-conn",
        "cpu_us": "CPU/req",
        "p99": "p99",
        "p50_added": "p50 added",
        "rss_max": "peak RSS",
    }
    fmt = {"rss_max": lambda v: f"{v / MIB:.1f} MiB", "cpu_us": lambda v: f"{v:.1f} µs"}
    parts = []
    for k, label in names.items():
        b = bp.get(k) or {}
        if b.get("pair"):
            v = fmt.get(k, lambda v: f"{v:,.0f}")(b["value"])
            parts.append(f"{label} {b['pair']} ({v})")
    if parts:
        out.append("Best peer per metric: " + "; ".join(parts) + ".\n")
    out.extend(render_variants(s))
    sysc = result.get("syscalls") or {}
    if sysc:
        out.append(
            f"Syscalls and context switches per request per proxy (perf stat, one extra keep-alive run of "
            f"{p['duration_s']} s per pair, -c{p['connections']}; not part of the timed rounds):\n"
        )
        out.append("| pair | syscalls/req out | syscalls/req in | context switches/req out | context switches/req in |")
        out.append("|---|---:|---:|---:|---:|")
        for name, r in sysc.items():
            o, i = r.get("out") or {}, r.get("in") or {}
            out.append(
                f"| {name} | {f2(o.get('syscalls_per_req'))} | {f2(i.get('syscalls_per_req'))} "
                f"| {f2(o.get('cs_per_req'))} | {f2(i.get('cs_per_req'))} |"
            )
        out.append("")
    for mg_name in [n for n in s if n.startswith("meshguard") and n not in VARIANTS]:
        mg = s[mg_name]
        out.append(f"| {mg_name} vs issue 8 target | value | met |")
        out.append("|---|---:|---|")
        for key, label, op, bound in TARGETS:
            v = mg.get(key)
            if v is None:
                out.append(f"| {label} | – | ? |")
                continue
            if key == "rss_mib":
                met = mg["rss_out"] / MIB <= bound and mg["rss_in"] / MIB <= bound
                shown = f"{mg['rss_out'] / MIB:.1f} / {mg['rss_in'] / MIB:.1f} MiB"
            else:
                met = v >= bound if op == ">=" else v <= bound
                shown = f"{v:.3f}×"
            out.append(f"| {label} | {shown} | {'yes' if met else 'no'} |")
        bare = s.get("bare", {})
        if bare.get("cpu_us") and mg.get("cpu_us"):
            # The calibration pair (benches/bare/): the stack without meshguard's features.
            r = mg["cpu_us"] / bare["cpu_us"]
            out.append(f"| proxy CPU per request ≤ 0.9× the bare tokio+hyper+rustls pair (issue 21) "
                       f"| {r:.3f}× | {'yes' if r <= 0.9 else 'no'} |")
        for key, label, bound in HTTP_LATENCY:
            v = mg.get(f"{key}_x_http")
            if v is not None:
                out.append(f"| {label} ≤ {bound}× the best HTTP peer's (issue 21) | {v:.3f}× "
                           f"| {'yes' if v <= bound else 'no'} |")
        if bare.get("ka_rps") and mg.get("ka_rps"):
            out.append(f"| keep-alive throughput × the bare pair (information) | {mg['ka_rps'] / bare['ka_rps']:.3f}× | – |")
        out.append("")
    return "\n".join(out) + "\n"


def render_http_latency(s):
    """Issue 21's latency table: c1 and c32, against the best HTTP peer."""
    if not any(r.get("c32_p50") is not None for r in s.values()):
        return []  # a result file from before the c32 test
    out = ["Latency at one request in flight (c1) and under load (c32, keep-alive), medians of the rounds; "
           "× is against the best HTTP peer (nginx or haproxy) for that figure:\n",
           "| pair | added p50 c1 µs | p99 c1 µs | p50 c32 µs | added p50 c32 µs | p99 c32 µs "
           "| added p50 c1 × | p99 c1 × | added p50 c32 × | p99 c32 × |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    out.extend(proxy_rows(s, lambda r: [
        fsigned(r["p50_added"]), f0(r["p99"]), f0(r["c32_p50"]), fsigned(r["c32_added"]), f0(r["c32_p99"]),
        *(fx(r[f"{key}_x_http"]) for key, _, _ in HTTP_LATENCY)]))
    out.append("")
    return out


def proxy_rows(s, cells):
    """One table row per pair but the direct path: its name, then `cells(row)`."""
    return [f"| {name} | " + " | ".join(cells(r)) + " |" for name, r in s.items() if name != "direct"]


def render_soak(result):
    out = []
    samples = result["samples"]
    roles = sorted({k[: -len("_rss")] for s in samples for k in s if k.endswith("_rss")})
    wrk = result.get("wrk") or {}
    rps = wrk.get("requests", 0) / (wrk.get("duration_us", 1) / 1e6) if wrk else 0
    out.append(
        f"### Soak of the {result['pair']} pair, {result['finished']}: {result['seconds']} s at "
        f"wrk -c{result['connections']} ({rps:,.0f} req/s, {wrk.get('requests', 0):,} requests, "
        f"{sum((wrk.get('errors') or {}).values())} errors), RSS sampled every {result['interval_s']} s\n"
    )
    out.append("| t (s) | " + " | ".join(f"{r} RSS MiB | {r} anon MiB | {r} CPU s" for r in roles) + " |")
    out.append("|---:|" + "---:|---:|---:|" * len(roles))
    step = max(1, len(samples) // 40)
    shown = samples[::step]
    if samples and shown[-1] is not samples[-1]:
        shown.append(samples[-1])
    for smp in shown:
        cells = []
        for r in roles:
            rss = smp.get(f"{r}_rss")
            cells.append("–" if rss is None else f"{rss / MIB:.2f}")
            anon = smp.get(f"{r}_anon")
            cells.append("–" if anon is None else f"{anon / MIB:.2f}")
            cells.append(f"{smp.get(f'{r}_cpu_s', 0):.1f}")
        out.append(f"| {smp['t_s']:.0f} | " + " | ".join(cells) + " |")
    out.append("")
    for r in roles:
        for key, label in (("rss", "RSS"), ("anon", "anonymous RSS")):
            vals = [smp[f"{r}_{key}"] for smp in samples if smp.get(f"{r}_{key}")]
            if len(vals) < 4:
                continue
            q = max(1, len(vals) // 4)
            first = statistics.median(vals[q : 2 * q])  # skip the ramp-up quarter
            last = statistics.median(vals[-q:])
            out.append(
                f"- {r}: {label} median of the second quarter {first / MIB:.2f} MiB, of the last quarter "
                f"{last / MIB:.2f} MiB (change {(last - first) / MIB:+.2f} MiB)."
            )
        hwm = (result["final"].get(r) or {}).get("hwm") or 0
        out.append(f"- {r}: peak RSS (VmHWM) {hwm / MIB:.2f} MiB.")
    out.append(f"- proxies alive at the end: {result['alive']}")
    return "\n".join(out) + "\n"


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    with open(sys.argv[1]) as f:
        result = json.load(f)
    if result.get("kind") == "meshguard-pairs-soak":
        print(render_soak(result))
    else:
        result["summary"] = summarize(result)
        print(render(result))


if __name__ == "__main__":
    main()
