#!/usr/bin/env bash
# Builds the container image (deploy/image/build.sh) and checks it from its
# unpacked root filesystem, the way a pod would run it: the labels and
# config, no shell, `meshguard --version`, `meshguard init-iptables` as root
# in a throwaway network namespace, then a sidecar with dev certificates in
# that namespace, as the non-root proxy UID, serving /ready 200. Reports
# the compressed and unpacked sizes. As root (buildah, umoci, chroot,
# ip netns). Usage: bash tests/image.sh   (MESHGUARD_BIN: see build.sh)
# Exits non-zero on any failure; the last line is `image: N passed, N failed`.
set -uo pipefail
cd "$(dirname "$0")/.."
. tests/prereqs.sh

pass=0
fail=0
ok() { echo "ok: $*"; pass=$((pass + 1)); }
bad() { echo "FAIL: $*" >&2; fail=$((fail + 1)); }
# jq -e as a check: true or false, without printing it.
jqt() { jq -e "$@" >/dev/null; }
check() {
    local what=$1
    shift
    if "$@"; then ok "$what"; else bad "$what"; fi
}
finish() {
    echo "image: $pass passed, $fail failed"
    [ "$fail" -eq 0 ]
    exit
}

version="$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n1)"
repo="$(sed -n 's/.*DEFAULT_IMAGE.*concat!("\([^"]*\):".*/\1/p' src/kube/inject/mod.rs)"
uid="$(sed -n 's/^pub const PROXY_UID: u32 = \([0-9]*\);.*/\1/p' src/kube/contract.rs)"
tag="$repo:$version"
archive="target/image/meshguard-$version.oci.tar"
sbom="target/image/meshguard-$version.sbom.json"
work="$(mktemp -d)"
ns="mg-image-$$"
sidecar=""
cleanup() {
    if [ -n "$sidecar" ]; then kill "$sidecar" 2>/dev/null; wait "$sidecar" 2>/dev/null; fi
    ip netns del "$ns" 2>/dev/null
    umount "$work/bundle/rootfs/proc" "$work/bundle/rootfs/dev" 2>/dev/null
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT

if [ "$(id -u)" != 0 ]; then
    bad "tests/image.sh needs root (buildah, umoci, chroot, ip netns): run it as root"
    finish
fi
install_packages buildah umoci iproute2 iptables curl jq binutils file
rm -f "$archive" "$sbom"
check "build.sh builds the image and the SBOM" bash deploy/image/build.sh
if [ ! -f "$archive" ]; then finish; fi
check "the SBOM is CycloneDX and lists the crates" \
    jqt '.bomFormat == "CycloneDX" and ([.components[].name] | index("rustls") != null)' "$sbom"

# The OCI layout in the archive: index -> manifest -> config.
layout="$work/layout"
mkdir -p "$layout"
tar -xf "$archive" -C "$layout"
blob() { echo "$layout/blobs/${1%%:*}/${1#*:}"; }
manifest="$(blob "$(jq -r '.manifests[0].digest' "$layout/index.json")")"
config="$(blob "$(jq -r '.config.digest' "$manifest")")"
check "the image is tagged $tag" \
    jqt --arg t "$tag" '.manifests[0].annotations["org.opencontainers.image.ref.name"] == $t' "$layout/index.json"
check "entrypoint meshguard, user $uid:$uid" \
    jqt --arg u "$uid:$uid" '.config.Entrypoint == ["/usr/local/bin/meshguard"] and .config.User == $u' "$config"
check "OCI labels: title, version, revision, source, licenses" \
    jqt --arg v "$version" --arg r "$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
    '.config.Labels | .["org.opencontainers.image.title"] == "meshguard"
        and .["org.opencontainers.image.version"] == $v
        and .["org.opencontainers.image.revision"] == $r
        and .["org.opencontainers.image.licenses"] == "Apache-2.0"
        and (.["org.opencontainers.image.source"] | length > 0)' "$config"

bundle="$work/bundle"
check "umoci unpacks the image" umoci --log error unpack --image "$layout:$tag" "$bundle"
rootfs="$bundle/rootfs"
if [ ! -x "$rootfs/usr/local/bin/meshguard" ]; then finish; fi
unpacked="$(du -sbx "$rootfs" | cut -f1)"
check "the layers are gzip-compressed" \
    jqt '[.layers[].mediaType] | all(. == "application/vnd.oci.image.layer.v1.tar+gzip")' "$manifest"
check "no shell in the image" test -z "$(find "$rootfs" -name sh -o -name bash -o -name dash)"
check "the binary is stripped" sh -c "! file -L '$rootfs/usr/local/bin/meshguard' | grep -q 'not stripped'"
# What a container runtime provides: /proc (init-iptables reads
# /proc/net/if_inet6) and a tmpfs /dev with the usual nodes (Command needs
# /dev/null).
mount -t proc proc "$rootfs/proc"
mount -t tmpfs -o size=64k,mode=0755 tmpfs "$rootfs/dev"
mknod -m 0666 "$rootfs/dev/null" c 1 3
mknod -m 0666 "$rootfs/dev/zero" c 1 5
mknod -m 0666 "$rootfs/dev/urandom" c 1 9
image_env=(env -i "$(jq -r '.config.Env[] | select(startswith("PATH="))' "$config")")
got="$("${image_env[@]}" chroot "$rootfs" /usr/local/bin/meshguard --version 2>&1)"
check "chroot meshguard --version prints 'meshguard $version' (got '$got')" test "$got" = "meshguard $version"

capture_rules() {
    grep -q -- "--uid-owner $uid -j RETURN" <<<"$1" && grep -q -- "--to-ports 15001" <<<"$1"
}

# The tag is what injection writes for both containers by default.
pod='apiVersion: v1
kind: Pod
metadata:
  name: p
  annotations:
    meshguard.io/config-map: p-meshguard
spec:
  containers:
  - name: app
    image: busybox'
images="$("${image_env[@]}" chroot "$rootfs" meshguard inject <<<"$pod" 2>/dev/null | grep -c "image: $tag\$")"
check "meshguard inject names this image for the init container and the sidecar ($images)" test "$images" = 2

# Capture first, as the pod's init container does: root, in the pod's
# (here a throwaway) network namespace, with the image's iptables.
ip netns add "$ns" && ip netns exec "$ns" ip link set lo up
check "meshguard init-iptables in a network namespace" \
    ip netns exec "$ns" "${image_env[@]}" chroot "$rootfs" meshguard init-iptables
for family in iptables ip6tables; do
    rules="$(ip netns exec "$ns" "${image_env[@]}" chroot "$rootfs" "$family" -t nat -S 2>&1)"
    check "$family rules skip UID $uid and redirect to 15001" capture_rules "$rules"
done

# The sidecar, as injection runs it (no ConfigMap: cert/key/bundle flags).
"$rootfs/usr/local/bin/meshguard" certs dev --out "$work/certs" --workload demo/server >/dev/null
mkdir -p "$rootfs/certs"
cp "$work/certs/demo/server/"* "$rootfs/certs/"
chown -R "$uid:$uid" "$rootfs/certs"
ip netns exec "$ns" "${image_env[@]}" chroot --userspec="$uid:$uid" "$rootfs" meshguard run \
    --cert /certs/tls.crt --key /certs/tls.key --bundle /certs/ca.crt \
    --inbound '[::]:15006' --app 127.0.0.1:8080 --admin '[::]:15000' >"$work/sidecar.log" 2>&1 &
sidecar=$!
code=000
for _ in $(seq 1 50); do
    code="$(ip netns exec "$ns" curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:15000/ready)"
    [ "$code" = 200 ] && break
    sleep 0.2
done
check "the sidecar serves /ready 200 (got $code)" test "$code" = 200
check "the process is meshguard itself" test "$(cat "/proc/$sidecar/comm" 2>/dev/null)" = meshguard
uids="$(awk '/^Uid:/ { print $2, $3, $4, $5 }' "/proc/$sidecar/status" 2>/dev/null)"
check "the sidecar runs as UID $uid (Uid: $uids)" test "$uids" = "$uid $uid $uid $uid"
if [ "$fail" -gt 0 ]; then sed 's/^/  sidecar: /' "$work/sidecar.log" >&2; fi

# Sizes: what a node pulls (the gzip layers) and what it unpacks.
compressed="$(jq '[.layers[].size] | add' "$manifest")"
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
echo "size: compressed $(mib "$compressed") ($compressed bytes, $(jq '.layers | length' "$manifest") layer), unpacked $(mib "$unpacked") ($unpacked bytes)"
finish
