#!/usr/bin/env bash
# Install synguard system-wide (Debian 12, root): `make install`.
#   /opt/synguard                      venv (Debian's python3 + python3-bpfcc) with the package
#   /usr/local/bin/synguard            -> /opt/synguard/bin/synguard
#   /etc/synguard/synguard.yaml        documented example (kept if it exists)
#   /etc/systemd/system/synguard.service
#   /usr/local/share/doc/synguard/     README, alert rules, Grafana dashboard
# DESTDIR=/some/root installs into a staging root (used by the tests).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
D="${DESTDIR:-}"
VENV="$D/opt/synguard"

[ "$(id -u)" -eq 0 ] || { echo "install: must run as root" >&2; exit 1; }
/usr/bin/python3 -m venv --system-site-packages "$VENV"
PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/pip" install -q "$ROOT"
install -d "$D/usr/local/bin" "$D/etc/synguard" "$D/etc/systemd/system" "$D/usr/local/share/doc/synguard"
ln -sfn /opt/synguard/bin/synguard "$D/usr/local/bin/synguard"
if [ ! -e "$D/etc/synguard/synguard.yaml" ]; then
    install -m 0644 "$ROOT/config/synguard.yaml" "$D/etc/synguard/synguard.yaml"
else
    echo "install: keeping existing /etc/synguard/synguard.yaml"
fi
install -m 0644 "$ROOT/deploy/synguard.service" "$D/etc/systemd/system/synguard.service"
install -m 0644 "$ROOT/README.md" "$D/usr/local/share/doc/synguard/README.md"
cp -r "$ROOT/deploy/." "$D/usr/local/share/doc/synguard/deploy/" 2>/dev/null || {
    install -d "$D/usr/local/share/doc/synguard/deploy"; cp -r "$ROOT/deploy/." "$D/usr/local/share/doc/synguard/deploy/"; }
if [ -z "$D" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
fi
echo "install: done. Edit /etc/synguard/synguard.yaml (interfaces, mode, ports), then:"
echo "  synguard check-config /etc/synguard/synguard.yaml && systemctl enable --now synguard"
