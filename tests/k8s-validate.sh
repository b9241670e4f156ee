#!/usr/bin/env bash
# Validates every Kubernetes manifest in deploy/ and every golden output of
# `meshguard inject` (tests/golden/inject/*.out.yaml) against the Kubernetes
# OpenAPI schemas, offline, with a pinned kubernetes-validate in a venv
# under target/ (made once, reused). Strict: unknown fields are errors.
# Each file is checked against Kubernetes 1.29 (the first release with
# native sidecars on by default) and 1.37 (the newest schemas bundled).
# Items of `kind: List` documents are checked one by one, since there is
# no schema for List itself.
# A kind with no schema is an error when its API group is one Kubernetes
# serves itself (a wrong or removed apiVersion: apps/v2, batch/v1beta1);
# in other groups it is a custom resource and only warned about, except
# cert-manager's (deploy/webhook/10-cert-manager.yaml), which are checked
# against the subset of cert-manager's v1 CRD schemas that meshguard's
# manifests use: required fields, enums, no unknown fields.
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
    if ! out=$("$venv/bin/kubernetes-validate" --strict --quiet -k "$v" "${files[@]}" "${items[@]}" 2>&1); then
        status=1
    fi
    if [ -n "$out" ]; then printf '%s\n' "$out"; fi
    while read -r kind api; do
        group=${api%/*}
        if [ "$group" = "$api" ]; then group=""; fi
        case "$group" in
            "") if [ "$kind" = List ]; then continue; fi ;;
            apps | batch | autoscaling | policy | *.k8s.io) ;;
            *) continue ;;
        esac
        echo "ERROR: no $kind in $api in Kubernetes $v: wrong or removed apiVersion" >&2
        status=1
    done < <(printf '%s\n' "$out" | sed -nE "s/.*Couldn't find schema for kind ([^ ]+) with api version ([^ ]+) .*/\1 \2/p")
done

if ! "$venv/bin/python" - "${files[@]}" <<'PY'
import sys, yaml, jsonschema

def obj(props, required=(), **kw):
    return {"type": "object", "properties": props, "required": list(required),
            "additionalProperties": False, **kw}

s = {"type": "string"}
strings = {"type": "array", "items": s}
duration = {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"}
usages = {"type": "array", "items": {"enum": [
    "signing", "digital signature", "content commitment", "key encipherment",
    "key agreement", "data encipherment", "cert sign", "crl sign", "encipher only",
    "decipher only", "any", "server auth", "client auth", "code signing",
    "email protection", "s/mime", "ipsec end system", "ipsec tunnel", "ipsec user",
    "timestamping", "ocsp signing", "microsoft sgc", "netscape sgc"]}}
issuer_ref = obj({"name": s, "kind": s, "group": s}, ["name"])
private_key = obj({"algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
                   "encoding": {"enum": ["PKCS1", "PKCS8"]},
                   "rotationPolicy": {"enum": ["Never", "Always"]},
                   "size": {"type": "integer"}})
certificate = obj({
    "secretName": s, "issuerRef": issuer_ref, "commonName": s, "dnsNames": strings,
    "ipAddresses": strings, "uris": strings, "emailAddresses": strings,
    "duration": duration, "renewBefore": duration,
    "renewBeforePercentage": {"type": "integer"}, "isCA": {"type": "boolean"},
    "usages": usages, "privateKey": private_key, "subject": {"type": "object"},
    "literalSubject": s, "secretTemplate": {"type": "object"},
    "revisionHistoryLimit": {"type": "integer"}, "signatureAlgorithm": s,
    "encodeUsagesInRequest": {"type": "boolean"}, "keystores": {"type": "object"},
    "nameConstraints": {"type": "object"}, "otherNames": {"type": "array"},
    "additionalOutputFormats": {"type": "array"},
}, ["secretName", "issuerRef"])
crl = {"crlDistributionPoints": strings}
issuer = obj({
    "selfSigned": obj(crl),
    "ca": obj({**crl, "secretName": s, "issuingCertificateURLs": strings,
               "ocspServers": strings}, ["secretName"]),
    "acme": {"type": "object"}, "vault": {"type": "object"}, "venafi": {"type": "object"},
}, minProperties=1, maxProperties=1)
meta = {"type": "object", "required": ["name"],
        "properties": {"name": s, "namespace": s, "labels": {"type": "object"},
                       "annotations": {"type": "object"}}}
def resource(spec):
    return obj({"apiVersion": s, "kind": s, "metadata": meta, "spec": spec},
               ["metadata", "spec"])
schemas = {"Certificate": resource(certificate), "Issuer": resource(issuer),
           "ClusterIssuer": resource(issuer)}

failed = False
for name in sys.argv[1:]:
    with open(name) as f:
        docs = [d for d in yaml.safe_load_all(f) if isinstance(d, dict)]
    for d in docs:
        api = str(d.get("apiVersion", ""))
        if not api.startswith("cert-manager.io/"):
            continue
        kind = d.get("kind")
        if api != "cert-manager.io/v1" or kind not in schemas:
            print(f"ERROR {name}: {kind} {api}: not a cert-manager v1 kind checked here")
            failed = True
            continue
        for e in jsonschema.Draft7Validator(schemas[kind]).iter_errors(d):
            where = "/".join(str(p) for p in e.absolute_path)
            print(f"ERROR {name}: {kind} {d['metadata'].get('name')}: {where}: {e.message}")
            failed = True
sys.exit(1 if failed else 0)
PY
then
    status=1
fi
if [ "$status" = 0 ]; then
    echo "k8s-validate: ${#files[@]} files (+${#items[@]} List expansions) valid for Kubernetes ${versions[*]}"
fi
exit "$status"
