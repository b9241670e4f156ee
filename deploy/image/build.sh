#!/usr/bin/env bash
# Builds meshguard's container image without a Docker daemon (Debian's
# buildah, vfs storage, as root) and its SBOM:
#
#   bash deploy/image/build.sh
#
# Writes target/image/meshguard-<version>.oci.tar (an OCI archive tagged
# ghcr.io/meshguard/meshguard:<version>, the injector's default image) and
# target/image/meshguard-<version>.sbom.json (CycloneDX, the crates in the
# binary). Load it with e.g. `skopeo copy oci-archive:<tar> docker://...`.
#
# One image serves both containers injection adds: the sidecar (`meshguard
# run`, as the non-root proxy UID) and the init container (`meshguard
# init-iptables`, as root with NET_ADMIN), so it carries iptables too; see
# deploy/README.md for why.
#
# Environment:
#   MESHGUARD_BIN  use this meshguard binary instead of building one
#                  (it is still stripped; for trying the script quickly)
#   IMAGE_SOURCE   the org.opencontainers.image.source label (default: the
#                  git remote `origin`, else the repository the image name
#                  implies)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
. tests/prereqs.sh

# Everything the image is named or run as comes from the source, so the
# injector's defaults and the image cannot drift apart.
version="$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n1)"
repo="$(sed -n 's/.*DEFAULT_IMAGE.*concat!("\([^"]*\):".*/\1/p' src/kube/inject/mod.rs)"
uid="$(sed -n 's/^pub const PROXY_UID: u32 = \([0-9]*\);.*/\1/p' src/kube/contract.rs)"
if [ -z "$version" ] || [ -z "$repo" ] || [ -z "$uid" ]; then
    echo "build.sh: cannot read the version, image name or PROXY_UID from the source" >&2
    exit 1
fi
tag="$repo:$version"
out="$root/target/image"
archive="$out/meshguard-$version.oci.tar"
sbom="$out/meshguard-$version.sbom.json"
# What init-iptables adds to the nat table: -p tcp, -m owner, -j REDIRECT
# and RETURN/chain jumps (libxt_standard). iptables loads these at run time
# (dlopen), so ldd cannot find them.
XT_EXTENSIONS="standard tcp owner REDIRECT"

build_binary() {
    if [ -n "${MESHGUARD_BIN:-}" ]; then
        bin="$MESHGUARD_BIN"
        return
    fi
    require_cargo
    cargo build --release --locked --bin meshguard
    bin="$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)/release/meshguard"
}

# Copies a host path into the rootfs at the same place, keeping symlinks as
# symlinks (and copying what they point to), so the loader, sonames and
# iptables' multi-call names resolve exactly as on the build host.
copy_path() {
    local src=$1 dir name dest target
    dir="$(realpath "$(dirname "$src")")"
    name="$(basename "$src")"
    dest="$rootfs$dir/$name"
    if [ -e "$dest" ] || [ -L "$dest" ]; then
        return 0
    fi
    install -d -m 0755 "$rootfs$dir"
    if [ -L "$dir/$name" ]; then
        target="$(readlink "$dir/$name")"
        ln -s "$target" "$dest"
        case $target in
            /*) copy_path "$target" ;;
            *) copy_path "$dir/$target" ;;
        esac
    else
        cp --preserve=mode "$dir/$name" "$dest"
    fi
}

# Copies the shared libraries (and the dynamic loader) an ELF file links.
copy_libs() {
    local lib
    if ldd "$1" | grep -q 'not found'; then
        echo "build.sh: $1 links a library that is not installed:" >&2
        ldd "$1" >&2
        return 1
    fi
    for lib in $(ldd "$1" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
        copy_path "$lib"
    done
}

# The image's root filesystem: the stripped binary, iptables, the libraries
# they link, users and name-service config. No shell, no package manager.
stage_rootfs() {
    local d xt xtdir ext
    # /proc, /dev and /sys are mount points the runtime fills.
    install -d -m 0755 "$rootfs"/{etc,usr/local/bin,usr/sbin,run,proc,dev,sys}
    install -d -m 1777 "$rootfs/tmp"
    # The same merged-/usr layout as the build host (/lib -> usr/lib...).
    for d in bin sbin lib lib64; do
        if [ -L "/$d" ]; then ln -s "$(readlink "/$d")" "$rootfs/$d"; fi
    done
    strip --strip-all -o "$rootfs/usr/local/bin/meshguard" "$bin"
    chmod 0755 "$rootfs/usr/local/bin/meshguard"
    copy_libs "$bin"

    # iptables-nft (Debian's default backend): one multi-call binary that
    # acts on the name it is called by; no /etc/alternatives in the image.
    xt="$(realpath "$(command -v xtables-nft-multi)")"
    copy_path "$xt"
    copy_libs "$xt"
    ln -s "$(basename "$xt")" "$rootfs$(dirname "$xt")/iptables"
    ln -s "$(basename "$xt")" "$rootfs$(dirname "$xt")/ip6tables"
    xtdir="$(dirname "$(dpkg -L iptables | grep '/xtables/libxt_owner\.so$')")"
    for ext in $XT_EXTENSIONS; do
        copy_path "$xtdir/libxt_$ext.so"
        copy_libs "$xtdir/libxt_$ext.so"
    done

    printf 'root:x:0:0:root:/root:/sbin/nologin\nmeshguard:x:%s:%s:meshguard:/nonexistent:/sbin/nologin\n' \
        "$uid" "$uid" >"$rootfs/etc/passwd"
    printf 'root:x:0:\nmeshguard:x:%s:\n' "$uid" >"$rootfs/etc/group"
    # Without this file glibc asks DNS before /etc/hosts.
    printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
    # Reproducible content: every file gets the commit's time.
    find "$rootfs" -exec touch -h -d "@$epoch" {} +
}

# buildah from scratch, fill, configure, commit straight to an OCI archive.
build_image() {
    local ctr mnt source sb=(buildah --storage-driver vfs)
    source="${IMAGE_SOURCE:-$(git remote get-url origin 2>/dev/null || echo "https://github.com/${repo#ghcr.io/}")}"
    ctr="$("${sb[@]}" from --name "meshguard-image-$$" scratch)"
    # shellcheck disable=SC2064 # the container name is fixed now
    trap "${sb[*]} rm $ctr >/dev/null 2>&1 || true; rm -rf '$work'" EXIT
    mnt="$("${sb[@]}" mount "$ctr")"
    cp -a "$rootfs/." "$mnt/"
    "${sb[@]}" config \
        --entrypoint '["/usr/local/bin/meshguard"]' \
        --user "$uid:$uid" \
        --env PATH=/usr/local/bin:/usr/sbin:/usr/bin \
        --workingdir / \
        --created-by "deploy/image/build.sh" \
        --os linux --arch "$(dpkg --print-architecture)" \
        --port 15000/tcp --port 15001/tcp --port 15006/tcp --port 15020/tcp \
        --label org.opencontainers.image.title=meshguard \
        --label "org.opencontainers.image.description=$(sed -n 's/^description *= *"\(.*\)"/\1/p' Cargo.toml)" \
        --label "org.opencontainers.image.version=$version" \
        --label "org.opencontainers.image.revision=$revision" \
        --label "org.opencontainers.image.source=$source" \
        --label org.opencontainers.image.licenses=Apache-2.0 \
        --label "org.opencontainers.image.created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)" \
        "$ctr"
    rm -f "$archive"
    "${sb[@]}" commit --quiet --format oci --timestamp "$epoch" --identity-label=false \
        --disable-compression=false \
        --rm "$ctr" "oci-archive:$archive:$tag" >/dev/null
}

# CycloneDX SBOM of the crates linked into the binary (normal dependencies
# for this target; build scripts, proc macros and dev-dependencies are not
# in it), made by cargo-cyclonedx from crates.io.
make_sbom() {
    local tmp
    if ! cargo cyclonedx --version >/dev/null 2>&1; then
        cargo install --locked cargo-cyclonedx
    fi
    tmp="meshguard-sbom-$$"
    cargo cyclonedx --quiet --format json --spec-version 1.5 --no-build-deps \
        --target "$(rustc -vV | sed -n 's/^host: //p')" --override-filename "$tmp"
    mv "$tmp.json" "$sbom"
}

install_packages buildah binutils jq iptables
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"
revision="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
epoch="$(git log -1 --format=%ct 2>/dev/null || echo 0)"
build_binary
mkdir -p "$out"
stage_rootfs
build_image
make_sbom
echo "built $tag"
echo "  image: $archive"
echo "  sbom:  $sbom"
