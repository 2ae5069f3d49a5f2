#!/usr/bin/env bash
# Portico demo: installs what is missing, builds, then runs scripts/demo.py
# (two Dovecot backends + Portico + one client session). Extra arguments go
# to demo.py, e.g. `scripts/demo.sh --once` or `scripts/demo.sh --lookup http`
# (logins routed by a small nginx-style auth service) or `scripts/demo.sh --fleet`
# (three nodes behind HAProxy sharing drains and holds through Redis).
set -e
cd "$(dirname "$0")/.."
scripts/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build build -j2
exec /usr/bin/python3 scripts/demo.py "$@"
