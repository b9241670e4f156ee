"""Functions of the meshguard binary that ran in callgrind profiles, hottest first.

Usage: hot_symbols.py BINARY PROFILE.cg...  (profiles made with --demangle=no)

Also lists every variant of aws-lc's AES-GCM code: it picks one at run time by
CPU feature, and valgrind's CPU is not the machine's.
"""
import collections
import re
import subprocess
import sys

NAMED = re.compile(r"\((\d+)\)(?: (.*))?")


def costs(paths):
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


def main():
    binary, profiles = sys.argv[1], sys.argv[2:]
    cost = costs(profiles)
    hot, seen = [], set()
    for name, _ in sorted(cost.items(), key=lambda x: -x[1]):
        name = re.sub(r"'\d+$", "", name)  # callgrind's mark of a call cycle
        if not name.startswith(("0x", "(")) and name not in seen:
            hot.append(name)
            seen.add(name)
    nm = subprocess.run(["nm", binary], capture_output=True, text=True, check=True).stdout
    for line in nm.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[1] in "tT" and fields[2] not in seen:
            if re.search(r"aws_lc_.*(aes_gcm|aes_hw|gcm_|ghash|aesni|vaes)", fields[2]):
                hot.append(fields[2])
                seen.add(fields[2])
    print("\n".join(hot))


if __name__ == "__main__":
    main()
