#!/usr/bin/env bash
# Build the Debian package (`make deb`): ./synguard_<version>_<arch>.deb.
# dpkg-buildpackage runs in a clean copy of the checkout (build/deb/src: the files git
# knows or would add, so no .venv, caches or stale build output), because it writes
# into debian/ and puts its results in the parent directory.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
die() { echo "deb: error: $*" >&2; exit 1; }

ver="$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' synguard/__init__.py)"
deb_ver="$(dpkg-parsechangelog -S Version)"
[ -n "$ver" ] || die "no __version__ in synguard/__init__.py"
[ "$ver" = "$deb_ver" ] || die "synguard/__init__.py is $ver but debian/changelog is $deb_ver: add a changelog entry (dch -v $ver)"

out="$ROOT/build/deb"
rm -rf "$out"
mkdir -p "$out/src"
git ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done \
    | tar --null -T - -cf - | tar -xf - -C "$out/src"

# Reproducible: the man page date and file times come from the changelog.
export SOURCE_DATE_EPOCH="$(dpkg-parsechangelog -S Timestamp)"
(cd "$out/src" && dpkg-buildpackage -b -us -uc --no-sign) > "$out/build.log" 2>&1 \
    || { tail -n 40 "$out/build.log" >&2; die "dpkg-buildpackage failed (full log: $out/build.log)"; }
deb="synguard_${ver}_$(dpkg --print-architecture).deb"
rm -f "$ROOT"/synguard_*.deb
cp "$out/$deb" "$ROOT/"
echo "deb: $ROOT/$deb (log: $out/build.log)"
echo "deb: install with: apt install ./$deb"
