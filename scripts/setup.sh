#!/usr/bin/env bash
# synguard machine + venv setup (Debian 12, root). Idempotent; fast on re-run:
#  - apt is skipped entirely when every package and kernel headers are present;
#  - pip is skipped when pyproject.toml is unchanged since the last install.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

say()  { echo "setup: $*"; }
warn() { echo "setup: warning: $*" >&2; }
die()  { echo "setup: error: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (apt, bpffs, XDP); try: sudo $0"

# Debian's python (BCC's python3-bpfcc is built for it). Never the pyenv python3 on PATH.
SYS_PY=/usr/bin/python3
VENV="$ROOT/.venv"
STAMP="$VENV/.synguard-setup"
KREL="$(uname -r)"
KBUILD="/lib/modules/$KREL/build"
KSOURCE="/lib/modules/$KREL/source"

PKGS=(python3-bpfcc bpfcc-tools python3-venv python3-pip iproute2 ethtool tcpdump
      hping3 procps kmod ca-certificates make
      nftables conntrack   # tests/test_clients.py: client firewalls, NAT routers (nft), evidence (conntrack)
      clang-14 libbpf-dev bpftool   # tc program (ebpf/synguard_tc.bpf.c): clang + libbpf headers; bpftool for BTF checks
      prometheus)   # promtool + prometheus: tests/test_deploy_monitoring.py

export DEBIAN_FRONTEND=noninteractive
APT_OPTS=(-y -q --no-install-recommends -o DPkg::Lock::Timeout=300)
# make deb + tests/test_deb.py: build tools, lintian, and the package's runtime dependencies
# from Debian (the venv's pip-installed versions shadow them; the installed package uses them).
PKGS+=(debhelper dh-python dpkg-dev lintian clang-14 libbpf-dev man-db
       python3-prometheus-client python3-pyroute2 python3-yaml libbpf1)

is_installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}

apt_updated=0
apt_update_once() {
    if [ "$apt_updated" -eq 0 ]; then
        say "apt-get update"
        apt-get update -q -o DPkg::Lock::Timeout=300 >/dev/null
        apt_updated=1
    fi
}

# apt candidate version of a package, empty when apt does not know it.
apt_candidate() {
    local c
    c="$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2; exit}')"
    [ "$c" != "(none)" ] && echo "$c" || true
}

# ---------------------------------------------------------------- packages
missing=()
for p in "${PKGS[@]}"; do
    is_installed "$p" || missing+=("$p")
done

# ---------------------------------------------------------------- kernel headers
headers_needed=0
[ -d "$KBUILD/include" ] || headers_needed=1

if [ "${#missing[@]}" -gt 0 ] || [ "$headers_needed" -eq 1 ]; then
    command -v apt-get >/dev/null || die "apt-get not found (this script targets Debian 12)"
    apt_update_once
fi

if [ "${#missing[@]}" -gt 0 ]; then
    say "installing: ${missing[*]}"
    apt-get install "${APT_OPTS[@]}" "${missing[@]}" >/dev/null
    # Debian starts prometheus.service on install; the tests start their own, on 127.0.0.1 only.
    if printf '%s\n' "${missing[@]}" | grep -qx prometheus && [ -d /run/systemd/system ]; then
        systemctl disable --now prometheus >/dev/null 2>&1 || true
    fi
fi

if [ "$headers_needed" -eq 1 ]; then
    if [ -n "$(apt_candidate "linux-headers-$KREL")" ]; then
        say "installing matching kernel headers linux-headers-$KREL"
        apt-get install "${APT_OPTS[@]}" "linux-headers-$KREL" >/dev/null
    else
        arch="$(dpkg --print-architecture)"
        pkg="$(apt-cache search --names-only '^linux-headers-[0-9]' \
                | awk '{print $1}' \
                | grep -E -- "^linux-headers-[0-9][^ ]*-${arch}\$" \
                | grep -v -e '-rt-' -e '-cloud-' \
                | sort -V | tail -n 1 || true)"
        [ -n "$pkg" ] || die "no linux-headers-$KREL and no linux-headers-*-$arch package in apt; BCC needs kernel headers at $KBUILD"
        ver="${pkg#linux-headers-}"; ver="${ver%-"$arch"}"
        if ! is_installed "$pkg"; then
            apt-get install "${APT_OPTS[@]}" "$pkg" >/dev/null
        fi
        hdr_arch="/usr/src/linux-headers-${ver}-${arch}"
        hdr_common="/usr/src/linux-headers-${ver}-common"
        [ -d "$hdr_arch/include" ] || die "$pkg installed but $hdr_arch/include is missing"
        [ -d "$hdr_common" ] || die "$pkg installed but $hdr_common is missing"
        mkdir -p "/lib/modules/$KREL"
        # -T: refuse to descend into an existing real directory
        ln -sfnT "$hdr_arch" "$KBUILD"
        ln -sfnT "$hdr_common" "$KSOURCE"
        headers_linked="$pkg"
    fi
fi
[ -d "$KBUILD/include" ] || die "kernel headers still missing at $KBUILD/include"

# One notice line whenever BCC compiles against headers of another kernel.
build_target="$(readlink -f "$KBUILD")"
case "$build_target" in
    *"$KREL"*) : ;;
    *) say "notice: kernel $KREL has no headers package; BCC uses ${headers_linked:-$(basename "$build_target")} ($build_target), which does NOT match the running kernel (fine: the XDP program uses only UAPI structs)" ;;
esac

# ---------------------------------------------------------------- bpffs
if ! awk '$2 == "/sys/fs/bpf" && $3 == "bpf" {found=1} END {exit !found}' /proc/mounts; then
    if mkdir -p /sys/fs/bpf 2>/dev/null && mount -t bpf -o mode=0700 bpf /sys/fs/bpf 2>/dev/null; then
        say "mounted bpffs at /sys/fs/bpf"
    else
        warn "could not mount bpffs at /sys/fs/bpf (pinning will be unavailable)"
    fi
fi

# ---------------------------------------------------------------- venv
[ -x "$SYS_PY" ] || die "$SYS_PY not found (install python3)"

venv_ok() {
    [ -x "$VENV/bin/python" ] && [ -f "$VENV/pyvenv.cfg" ] \
        && grep -qx 'home = /usr/bin' "$VENV/pyvenv.cfg" \
        && grep -qx 'include-system-site-packages = true' "$VENV/pyvenv.cfg" \
        && "$VENV/bin/python" -c '' 2>/dev/null
}

if [ -e "$VENV" ] && ! venv_ok; then
    warn "$VENV was not made by '$SYS_PY -m venv --system-site-packages' (or is broken); recreating"
    rm -rf "$VENV"
fi
if [ ! -e "$VENV" ]; then
    say "creating $VENV with $SYS_PY (--system-site-packages, for BCC)"
    "$SYS_PY" -m venv --system-site-packages "$VENV"
fi

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
pip_install() {
    say "pip install -e '.[test]'"
    rm -f "$STAMP"
    "$VENV/bin/pip" install -q -e '.[test]'
    sha256sum pyproject.toml > "$STAMP"
}

pip_done=0
if [ ! -f "$STAMP" ] || ! sha256sum --status -c "$STAMP" 2>/dev/null; then
    pip_install
    pip_done=1
fi

# ---------------------------------------------------------------- verify
verify() { "$VENV/bin/python" -c 'import bcc, synguard' 2>&1; }
if ! err="$(verify)"; then
    if [ "$pip_done" -eq 0 ]; then
        warn "import check failed with an up-to-date stamp; reinstalling"
        pip_install
        err="$(verify)" || true
    fi
    if ! "$VENV/bin/python" -c 'import bcc, synguard' >/dev/null 2>&1; then
        echo "$err" | tail -n 5 >&2
        die "'$VENV/bin/python -c \"import bcc, synguard\"' failed. bcc must come from Debian's python3-bpfcc (never 'pip install bcc': that is an unrelated PyPI package) and the venv must be made by $SYS_PY with --system-site-packages."
    fi
fi
say "ok ($VENV ready; kernel headers: $build_target)"
