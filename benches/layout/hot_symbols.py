"""Functions of the meshguard binary that ran in callgrind profiles, by phase.

Usage: hot_symbols.py BINARY --keepalive KA.cg... --serving SERVING.cg...
                             --startup STARTUP.cg...
       (profiles made with --demangle=no; collect.sh makes them)

The kernel maps a binary's file pages in 64 KiB windows around each page
touched, so what stays resident is every window that holds code the process
runs. The list therefore puts together the code a proxy runs in steady state
and keeps apart what it runs rarely:

1. keep-alive serving, grouped by which of the KA profiles ran it (all of
   them first, then those of fewer profiles, the earlier profiles' first), so
   that one proxy (one direction, one protocol) runs a few contiguous runs of
   the list rather than a scattering over all of it; within a group, dearest
   first;
2. every variant of aws-lc's AES-GCM code: it picks one at run time by CPU
   feature, and valgrind's CPU is not the machine's;
3. the rest of serving (handshakes, metrics, refusals), dearest first;
4. what only start-up ran: the sidecar drops those pages when it becomes ready
   (src/sidecar/resident.rs), and they do not fault back in.
"""
import collections
import re
import subprocess
import sys

NAMED = re.compile(r"\((\d+)\)(?: (.*))?")
CYCLE = re.compile(r"'\d+$")  # callgrind's mark of a call cycle


def costs(paths):
    """Self cost per function of the meshguard binary, over the profiles."""
    cost = collections.Counter()
    for path in paths:
        objects, functions = {}, {}
        obj = current = None
        after_call = False
        with open(path) as f:
            for line in f:
                key, _, rest = line.partition("=")
                if key in ("ob", "cob", "fn", "cfn") and rest:
                    m = NAMED.match(rest.strip())
                    table = objects if key.endswith("ob") else functions
                    if m.group(2):
                        table[m.group(1)] = m.group(2)
                    if key == "ob":
                        obj = objects.get(m.group(1), "")
                    elif key == "fn":
                        mine = obj.endswith("/meshguard")
                        current = functions.get(m.group(1)) if mine else None
                        if current:
                            current = CYCLE.sub("", current)
                            cost[current] += 0
                    continue
                if key == "calls":
                    after_call = True
                    continue
                if line[:1].isdigit() or line[:1] in "+-*":
                    if after_call:  # the inclusive cost of a call, not self cost
                        after_call = False
                        continue
                    fields = line.split()
                    if current and len(fields) >= 2:
                        cost[current] += int(fields[1])
    return cost


def append(names, hot, seen):
    """Appends, in order, the names not yet listed that the linker can place."""
    for name in names:
        if not name.startswith(("0x", "(")) and name not in seen:
            hot.append(name)
            seen.add(name)


def by_cost(cost):
    return sorted(cost, key=lambda name: -cost[name])


def by_profiles(tables):
    """The functions of the keep-alive profiles, grouped by which of them ran
    each one (more profiles first), dearest first within a group."""
    ran = collections.defaultdict(set)
    total = collections.Counter()
    for i, table in enumerate(tables):
        for name, cost in table.items():
            ran[name].add(i)
            total[name] += cost

    def key(name):
        group = sorted(ran[name])
        return (-len(group), group, -total[name])

    return sorted(ran, key=key)


def aes_variants(binary):
    nm = subprocess.run(["nm", binary], capture_output=True, text=True, check=True).stdout
    for line in nm.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[1] in "tT":
            if re.search(r"aws_lc_.*(aes_gcm|aes_hw|gcm_|ghash|aesni|vaes)", fields[2]):
                yield fields[2]


def phases(args):
    """{"--keepalive": [paths], ...} from the command line after BINARY."""
    found, current = {}, None
    for arg in args:
        if arg.startswith("--"):
            current = found.setdefault(arg, [])
        elif current is None:
            sys.exit(f"hot_symbols.py: {arg}: a profile before --keepalive, --serving or --startup")
        else:
            current.append(arg)
    return found


def main():
    binary, given = sys.argv[1], phases(sys.argv[2:])
    hot, seen = [], set()
    append(by_profiles([costs([p]) for p in given.get("--keepalive", [])]), hot, seen)
    append(aes_variants(binary), hot, seen)
    append(by_cost(costs(given.get("--serving", []))), hot, seen)
    append(by_cost(costs(given.get("--startup", []))), hot, seen)
    print("\n".join(hot))


if __name__ == "__main__":
    main()
