#!/usr/bin/env bash
# Validates every Kubernetes manifest in deploy/ and every golden output of
# `meshguard inject` (tests/golden/inject/*.out.yaml) against the Kubernetes
# OpenAPI schemas, offline, with a pinned kubernetes-validate in a venv
# under target/ (made once, reused). Strict: unknown fields are errors.
# Each file is checked against Kubernetes 1.29 (the first release with
# native sidecars on by default) and 1.37 (the newest schemas bundled).
# Items of `kind: List` documents are checked one by one, since there is
# no schema for List itself.
#
# Usage: bash tests/k8s-validate.sh [FILE...]   (default: all of the above)
# Exit status: 0 when everything validates.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

venv=target/k8s-validate/venv
requirements=tests/k8s-validate-requirements.txt
versions=(1.29 1.37)

# (Re)build the venv when it is missing or the pins changed.
if [ ! -x "$venv/bin/kubernetes-validate" ] || ! cmp -s "$requirements" "$venv/requirements.txt"; then
    if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv
    fi
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-input -r "$requirements"
    cp "$requirements" "$venv/requirements.txt"
fi

if [ $# -gt 0 ]; then
    files=("$@")
else
    # Every YAML file in deploy/ that holds Kubernetes objects (not the
    # sidecar config example), and every golden output.
    mapfile -t files < <(
        { grep -rlE '^(- )?apiVersion:' deploy --include='*.yaml' || true; } | sort
        ls tests/golden/inject/*.out.yaml
    )
fi

# List items, written out as documents of their own.
lists=target/k8s-validate/list-items
rm -rf "$lists"
mkdir -p "$lists"
mapfile -t items < <("$venv/bin/python" - "$lists" "${files[@]}" <<'PY'
import pathlib, sys, yaml
out = pathlib.Path(sys.argv[1])
for name in sys.argv[2:]:
    with open(name) as f:
        docs = list(yaml.safe_load_all(f))
    items = [i for d in docs if isinstance(d, dict) and d.get("kind") == "List"
             for i in (d.get("items") or [])]
    if items:
        target = out / (name.replace("/", "__") + ".items.yaml")
        target.write_text(yaml.safe_dump_all(items))
        print(target)
PY
)

status=0
for v in "${versions[@]}"; do
    if ! "$venv/bin/kubernetes-validate" --strict --quiet -k "$v" "${files[@]}" "${items[@]}"; then
        status=1
    fi
done
if [ "$status" = 0 ]; then
    echo "k8s-validate: ${#files[@]} files (+${#items[@]} List expansions) valid for Kubernetes ${versions[*]}"
fi
exit "$status"
