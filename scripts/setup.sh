#!/usr/bin/env bash
# Installs, idempotently, everything Portico's build, tests and demo need,
# from Debian's packages. Safe to run again: it installs only what is missing.
#
# llhttp: Debian 12 (bookworm) does not package it. Where the distribution
# has libllhttp-dev we use it. Otherwise (documented fallback) we take the two
# packages libllhttp-dev and libllhttp9.2 by name from Debian's *stable* suite:
# a temporary source list for that suite, restricted to [arch=amd64], is
# written, used for one `apt-get update` + `apt-get download`, then deleted,
# and apt's lists refreshed again before anything is installed. The system's
# own source lists are never edited.
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build pkg-config git
  libuv1-dev libssl-dev libjemalloc-dev libgtest-dev libgmock-dev libbenchmark-dev
  libtomlplusplus-dev nlohmann-json3-dev libfmt-dev libcli11-dev
  clang-14 libclang-rt-14-dev libfuzzer-14-dev clang-format
  dovecot-imapd python3 python3-pytest curl openssl procps
  libsystemd-dev systemd dpkg-dev groff-base man-db bash-completion
)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

have_llhttp() {
  dpkg-query -W -f='${Status}' libllhttp-dev 2>/dev/null | grep -q "install ok installed"
}

updated=0
apt_update() {
  if [ "$updated" -eq 0 ]; then
    $SUDO apt-get update -qq
    updated=1
  fi
}

if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  apt_update
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! have_llhttp; then
  apt_update
  if apt-cache show libllhttp-dev >/dev/null 2>&1; then
    echo "setup: installing libllhttp-dev from the distribution"
    $SUDO apt-get install -y -qq --no-install-recommends libllhttp-dev
  else
    echo "setup: libllhttp-dev is not in this distribution; fetching it from Debian stable"
    tmpdir=$(mktemp -d)
    list=/etc/apt/sources.list.d/portico-llhttp-stable.list
    cleanup() {
      $SUDO rm -f "$list"
      rm -rf "$tmpdir"
    }
    trap cleanup EXIT
    echo "deb [arch=amd64] http://deb.debian.org/debian stable main" | $SUDO tee "$list" >/dev/null
    $SUDO apt-get update -qq
    (cd "$tmpdir" && apt-get download libllhttp-dev libllhttp9.2)
    $SUDO rm -f "$list"
    $SUDO apt-get update -qq
    $SUDO dpkg -i "$tmpdir"/libllhttp9.2_*.deb "$tmpdir"/libllhttp-dev_*.deb
    cleanup
    trap - EXIT
  fi
fi
echo "setup: all dependencies present"
