#!/usr/bin/env bash
# Sets up what is missing, builds, and runs every test: the GoogleTest unit
# tests (ctest) and the integration tests against real Dovecot (pytest).
# PORTICO_WERROR=ON turns warnings into errors (CI sets it).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DPORTICO_WERROR="${PORTICO_WERROR:-OFF}" >/dev/null
cmake --build build -j2

echo "== unit tests (ctest) =="
ctest --test-dir build --output-on-failure -j2

echo "== integration tests (pytest, real Dovecot) =="
PORTICO_BIN="$PWD/build/proxy/portico" /usr/bin/python3 -m pytest tests/integration -q -p no:cacheprovider
