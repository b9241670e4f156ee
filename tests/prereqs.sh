# Shared by deploy/demo.sh, tests/run.sh and .ci/run (sourced, not run):
# what a fresh Debian machine needs before cargo can build meshguard.

# Runs a command as root: directly when we are root (CI, containers), with
# sudo otherwise. Minimal Debian has no sudo, so say what to do instead of
# failing with "sudo: command not found".
as_root() {
    if [ "$(id -u)" = 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "meshguard: '$*' needs root; run this script as root or install sudo" >&2
        return 1
    fi
}

# Installs the Debian packages given that are not installed yet, so a warm
# machine starts at once.
install_packages() {
    local missing=() p
    for p in "$@"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing Debian packages: ${missing[*]}" >&2
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    fi
}

# Fails unless cargo is there and at least the rust-version Cargo.toml
# declares (the toolchain comes from rustup, not from Debian).
require_cargo() {
    local root need have
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    need="$(sed -n 's/^rust-version *= *"\(.*\)"/\1/p' "$root/Cargo.toml")"
    if ! command -v cargo >/dev/null 2>&1; then
        echo "meshguard: cargo not found: install the Rust toolchain $need or newer with rustup (https://rustup.rs)" >&2
        return 1
    fi
    have="$(cargo --version | awk '{print $2}')"
    if [ "$(printf '%s\n%s\n' "$need" "${have%%-*}" | sort -V | head -n1)" != "$need" ]; then
        echo "meshguard: cargo $have is older than the rust-version $need that Cargo.toml declares; run 'rustup update'" >&2
        return 1
    fi
}

# rustfmt and clippy come with rustup's default profile; a minimal profile
# lacks them and the lint gates cannot run.
require_components() {
    local c component
    for c in "$@"; do
        component=$c
        [ "$c" = fmt ] && component=rustfmt
        if ! cargo "$c" --version >/dev/null 2>&1; then
            rustup component add "$component" >/dev/null 2>&1 || {
                echo "meshguard: cargo $c is missing: run 'rustup component add $component'" >&2
                return 1
            }
        fi
    done
}
