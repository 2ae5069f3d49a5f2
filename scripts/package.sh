#!/usr/bin/env bash
# Builds the Debian package portico_<version>_<arch>.deb with CPack from an
# existing build directory (default build/, as scripts/test.sh leaves it;
# configured here if missing). Binaries are stripped into the package;
# Depends come from dpkg-shlibdeps. Prints the package's path on stdout
# (and nothing else: CI reads it), progress on stderr.
#
#   scripts/package.sh [BUILD_DIR]
#   apt-get install ./build/portico_*.deb
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}

if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >&2
fi
cmake --build "$build" -j2 --target portico porticoctl portico_man >&2
rm -f "$build"/portico_*.deb
(cd "$build" && cpack -G DEB >/dev/null)
deb=$(ls "$build"/portico_*.deb)
dpkg-deb --field "$deb" Package Version Depends >&2
echo "$deb"
