#!/usr/bin/env bash
# The kernel matrix (`make test-kernels`): the data-path tests marked `kernel`
# (tests/test_kernel_matrix.py) on each kernel of KERNELS, each Debian kernel booted in
# a QEMU guest with virtme-ng on a copy-on-write view of this machine; "host" runs the
# same selection on the running kernel directly (no guest: it is that kernel).
#
#   scripts/kernels.sh matrix KVER...        run the selection on each; print the table; exit 1 if any failed
#   scripts/kernels.sh prepare KVER...       only install/fetch what the guests need
#   scripts/kernels.sh run KVER -- COMMAND   COMMAND in a guest booted with KVER (exit status: COMMAND's)
#
# KVER: a Debian kernel flavour version (linux-image-KVER), e.g. 6.1.0-50-amd64, or "host".
# Root, Debian 12. Nothing is installed on the host but qemu-system-x86 (apt): the kernel,
# its headers (BCC compiles against them in the guest) and a static busybox (virtme-ng's
# initramfs) are `apt-get download`ed and extracted into the cache; virtme-ng (pinned) lives
# in its own venv there.
#
# Environment:
#   SYNGUARD_KCACHE  the cache (default /var/tmp/synguard-kernels; about 0.5 GB a kernel).
#                    Must be a root-owned directory nobody else can write.
#   KMX_ACCEL        kvm | tcg | auto (default auto: TCG when /dev/kvm is missing or is the
#                    paravirtual kvm_pvm, whose emulator cannot boot stock Debian kernels)
#   KMX_MEM, KMX_CPUS guest memory and vCPUs (default 3G, 2)
#   KMX_TIMEOUT      seconds one guest may run (default 1500)
#   KMX_OUT          results directory (default build/kernels): one JSON per kernel,
#                    written by the tests (shared read-write with the guest)
#   KMX_PYTEST       pytest arguments (default: -m kernel tests/test_kernel_matrix.py)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VNG_VERSION=1.42
KCACHE="${SYNGUARD_KCACHE:-/var/tmp/synguard-kernels}"
VENV="$KCACHE/vng-venv"
BB="$KCACHE/tools/busybox/bin/busybox"
OUT="${KMX_OUT:-$ROOT/build/kernels}"
PYTEST_ARGS="${KMX_PYTEST:--m kernel tests/test_kernel_matrix.py}"

say() { echo "kernels: $*" >&2; }
die() { echo "kernels: error: $*" >&2; exit 2; }

[ "$(id -u)" -eq 0 ] || die "run as root (apt-get download, QEMU, XDP in the guest)"
export DEBIAN_FRONTEND=noninteractive

# The cache holds kernels a guest boots as root: it must be ours alone.
trusted_dir() {
    local d="$1"
    if [ ! -e "$d" ]; then
        (umask 022; mkdir -p "$d")
    fi
    [ ! -L "$d" ] && [ -d "$d" ] || die "$d is not a directory"
    [ "$(stat -c %u "$d")" = 0 ] || die "$d is not owned by root"
    case "$(stat -c %A "$d")" in
        ?????w????|????????w?) die "$d is group- or world-writable" ;;
    esac
}

apt_updated=0
apt_fetch() {   # apt_fetch DIR PKG...: apt-get download into DIR (apt-get update once if apt does not know them)
    local dir="$1"; shift
    if ! (cd "$dir" && apt-get download -q "$@" >/dev/null 2>"$dir/.err"); then
        if [ "$apt_updated" = 0 ]; then
            apt_updated=1; say "apt-get update"
            apt-get update -q -o DPkg::Lock::Timeout=300 >/dev/null
            (cd "$dir" && apt-get download -q "$@" >/dev/null 2>"$dir/.err") && return 0
        fi
        cat "$dir/.err" >&2; return 1
    fi
}

prepare_tools() {
    trusted_dir "$KCACHE"
    if ! command -v qemu-system-x86_64 >/dev/null; then
        say "installing qemu-system-x86"
        apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=300 qemu-system-x86 >/dev/null \
            || { apt-get update -q -o DPkg::Lock::Timeout=300 >/dev/null; apt_updated=1
                 apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=300 qemu-system-x86 >/dev/null; }
    fi
    if [ "$("$VENV/bin/vng" --version 2>/dev/null | awk '{print $NF}')" != "$VNG_VERSION" ]; then
        say "installing virtme-ng $VNG_VERSION into $VENV"
        rm -rf "$VENV"
        /usr/bin/python3 -m venv "$VENV"
        "$VENV/bin/pip" install -q --disable-pip-version-check "virtme-ng==$VNG_VERSION" >&2
    fi
    if [ ! -x "$BB" ]; then
        say "fetching busybox-static (virtme-ng's initramfs)"
        local d; d="$(mktemp -d "$KCACHE/.dl.XXXXXX")"
        apt_fetch "$d" busybox-static || die "apt-get download busybox-static failed"
        rm -rf "$KCACHE/tools/busybox"; mkdir -p "$KCACHE/tools/busybox"
        dpkg-deb -x "$d"/busybox-static_*.deb "$KCACHE/tools/busybox"; rm -rf "$d"
        [ -x "$BB" ] || die "no bin/busybox in busybox-static"
    fi
}

# prepare_kernel KVER: $KCACHE/KVER/root holds boot/vmlinuz-KVER, lib/modules/KVER (with
# modules.dep and build/source links relative to root) and usr/src/linux-headers-KVER*.
prepare_kernel() {
    local kver="$1" kdir="$KCACHE/$1" root="$KCACHE/$1/root"
    [ -f "$kdir/.ready" ] && return 0
    say "fetching and extracting $kver (linux-image, linux-headers; never installed)"
    rm -rf "$kdir"; mkdir -p "$root"
    local d; d="$(mktemp -d "$KCACHE/.dl.XXXXXX")"
    local pkgs=("linux-image-$kver" "linux-headers-$kver")
    # linux-headers-KVER depends on its -common headers and on linux-kbuild-*
    while read -r dep; do pkgs+=("$dep"); done < <(apt-cache depends "linux-headers-$kver" 2>/dev/null \
        | awk '/Depends: (linux-headers-.*-common|linux-kbuild-)/ {print $2}' | sort -u)
    [ "${#pkgs[@]}" -gt 2 ] || { apt-get update -q -o DPkg::Lock::Timeout=300 >/dev/null; apt_updated=1
        while read -r dep; do pkgs+=("$dep"); done < <(apt-cache depends "linux-headers-$kver" 2>/dev/null \
            | awk '/Depends: (linux-headers-.*-common|linux-kbuild-)/ {print $2}' | sort -u); }
    apt_fetch "$d" "${pkgs[@]}" || { rm -rf "$d" "$kdir"; die "apt-get download ${pkgs[*]} failed"; }
    local deb; for deb in "$d"/*.deb; do dpkg-deb -x "$deb" "$root"; done
    rm -rf "$d"
    [ -f "$root/boot/vmlinuz-$kver" ] || die "no boot/vmlinuz-$kver in linux-image-$kver"
    depmod -b "$root" "$kver"   # Debian's .debs ship no modules.dep
    # The packages' build/source links are absolute (/usr/src/...): dangling in the guest.
    local mdir="$root/lib/modules/$kver" common
    [ -d "$root/usr/src/linux-headers-$kver/include" ] || die "linux-headers-$kver has no include/"
    ln -sfnT "../../../usr/src/linux-headers-$kver" "$mdir/build"
    common="$(cd "$root/usr/src" && ls -d linux-headers-*-common 2>/dev/null | head -n1 || true)"
    [ -n "$common" ] && ln -sfnT "../../../usr/src/$common" "$mdir/source"
    touch "$kdir/.ready"
}

accel() {
    local a="${KMX_ACCEL:-auto}"
    if [ "$a" = auto ]; then
        if [ ! -w /dev/kvm ]; then a=tcg
        elif [ -d /sys/module/kvm_pvm ]; then a=tcg   # PVM: stock kernels spin or hit "INTERNAL_ERROR in batch emul"
        else a=kvm; fi
    fi
    echo "$a"
}

# boot KVER COMMAND: run COMMAND (a shell string) in the guest, in $ROOT, with $OUT shared.
boot() {
    local kver="$1" cmd="$2" a opts=()
    a="$(accel)"
    case "$a" in tcg) opts=(--disable-kvm) ;; kvm) ;; *) die "KMX_ACCEL: kvm, tcg or auto" ;; esac
    mkdir -p "$OUT"
    # /var/tmp is a tmpfs in the guest: the cache (modules, headers) is re-exported read-only.
    local inner
    inner="export KMX_KVER=$(printf %q "$kver") KMX_OUT=$(printf %q "$OUT") KMX_ACCEL=$a; cd $(printf %q "$ROOT") && { $cmd ; }"
    say "booting $kver ($a, ${KMX_CPUS:-2} vCPU, ${KMX_MEM:-3G}): $cmd"
    local rc
    set +e
    # Through a pipe: QEMU reopens /dev/stdout, which would truncate a log file we write to.
    # timeout without --foreground: at the limit it signals vng's whole process group (QEMU too).
    PATH="$VENV/bin:$PATH" timeout -k 10 "${KMX_TIMEOUT:-1500}" "$VENV/bin/vng" \
        --busybox "$BB" --run "$KCACHE/$kver/root/boot/vmlinuz-$kver" \
        --memory "${KMX_MEM:-3G}" --cpus "${KMX_CPUS:-2}" "${opts[@]}" \
        --rodir "$KCACHE=$KCACHE" --overlay-rwdir "$ROOT" --rwdir "$OUT=$OUT" --cwd "$ROOT" \
        --exec "$inner" </dev/null 2>&1 | cat
    rc="${PIPESTATUS[0]}"
    set -e
    [ "$rc" -eq 124 ] && say "$kver: the guest timed out after ${KMX_TIMEOUT:-1500} s"
    return "$rc"
}

# What runs on the kernel under test (in the guest, or on the host for "host").
selection() {
    # A guest has no bpffs mounted; a machine running synguard has (setup.sh mounts it).
    if ! awk '$2 == "/sys/fs/bpf" && $3 == "bpf" {f=1} END {exit !f}' /proc/mounts; then
        mount -t bpf -o mode=0700 bpf /sys/fs/bpf
    fi
    echo "kernels: $(uname -r): .venv/bin/python -m pytest $PYTEST_ARGS"
    # shellcheck disable=SC2086
    .venv/bin/python -m pytest -q -rA -p no:cacheprovider $PYTEST_ARGS
}

matrix() {
    local kver rc failed=() t0 t i=0
    prepare_tools
    for kver in "$@"; do [ "$kver" = host ] || prepare_kernel "$kver"; done
    rm -rf "$OUT"; mkdir -p "$OUT"
    for kver in "$@"; do
        t0=$(date +%s); rc=0
        echo "=== kernel $kver: $PYTEST_ARGS"
        if [ "$kver" = host ]; then
            KMX_KVER=host KMX_OUT="$OUT" KMX_ACCEL=none selection || rc=$?
        else
            boot "$kver" "bash scripts/kernels.sh selection" || rc=$?
        fi
        t=$(( $(date +%s) - t0 ))
        echo "=== kernel $kver: exit $rc after $t s"
        i=$((i + 1))
        printf '{"kernel": "%s", "order": %d, "exit": %d, "wall_s": %d}\n' "$kver" "$i" "$rc" "$t" > "$OUT/run-$kver.json"
        [ "$rc" -eq 0 ] || failed+=("$kver")
    done
    "$ROOT/.venv/bin/python" -m synguard_lab.kernelmatrix "$OUT" || true
    if [ "${#failed[@]}" -gt 0 ]; then
        say "FAILED on: ${failed[*]}"
        return 1
    fi
}

sub="${1:-}"; shift || true
case "$sub" in
    matrix) [ $# -ge 1 ] || die "usage: $0 matrix KVER..."; matrix "$@" ;;
    prepare) prepare_tools; for k in "$@"; do [ "$k" = host ] || prepare_kernel "$k"; done ;;
    run)
        [ $# -ge 2 ] || die "usage: $0 run KVER -- COMMAND"
        k="$1"; shift; [ "${1:-}" = "--" ] && shift
        prepare_tools; prepare_kernel "$k"; boot "$k" "$*" ;;
    selection) selection ;;   # inside a guest (matrix calls it)
    *) sed -n '2,27p' "$0" >&2; exit 2 ;;
esac
