#!/usr/bin/env bash
# Installs, idempotently, everything Portico's build, tests and demo need,
# from Debian's packages. Safe to run again: it installs only what is missing.
#
# llhttp: Debian 12 (bookworm) does not package it. Where the distribution
# has libllhttp-dev we use it. Otherwise (documented fallback) we take the two
# packages libllhttp-dev and libllhttp9.2 by name from Debian's *stable* suite,
# through the Debian mirror this machine's own apt configuration already uses
# (scripts/apt_mirror.sh finds it, with its Signed-By keyring): a temporary
# source list for that suite, restricted to the machine's dpkg architecture,
# is written, used for one `apt-get update` + `apt-get download`, then
# deleted, and apt's lists refreshed again before anything is installed. The
# system's own source lists are never edited. With no Debian mirror in the apt
# configuration it stops with an error naming the files it read.
#
#   scripts/setup.sh                        install what is missing
#   scripts/setup.sh --download-llhttp DIR  only run that fallback, even where
#                                           llhttp is installed, and leave the
#                                           two .debs in DIR uninstalled
set -euo pipefail
# shellcheck source=scripts/apt_mirror.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt_mirror.sh"

download_dir=""
if [ "${1:-}" = --download-llhttp ]; then
  download_dir=${2:?"usage: $0 --download-llhttp DIR"}
  [ -d "$download_dir" ] || { echo "setup: $download_dir is not a directory" >&2; exit 2; }
  download_dir=$(cd "$download_dir" && pwd)
elif [ "$#" -gt 0 ]; then
  echo "usage: $0 [--download-llhttp DIR]" >&2
  exit 2
fi

PACKAGES=(
  build-essential cmake ninja-build pkg-config git
  libuv1-dev libssl-dev libjemalloc-dev libgtest-dev libgmock-dev libbenchmark-dev
  libtomlplusplus-dev nlohmann-json3-dev libfmt-dev libcli11-dev
  clang-14 libclang-rt-14-dev libfuzzer-14-dev clang-format
  dovecot-imapd python3 python3-pytest curl openssl procps
  chromium fonts-dejavu-core python3-prometheus-client
  libsystemd-dev systemd dpkg-dev groff-base man-db bash-completion
  libhiredis-dev zlib1g-dev redis-server nginx libnginx-mod-mail
  haproxy
)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive

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

# Downloads libllhttp-dev and libllhttp9.2 from Debian stable into $1 through
# a temporary source list on the machine's own Debian mirror.
# On any exit while the list exists, apt's lists are refreshed without it, so
# that no stable-suite package lists stay behind for a later upgrade.
list=/etc/apt/sources.list.d/portico-llhttp-stable.list
tmpdir=""
cleanup() {
  if [ -e "$list" ]; then
    $SUDO rm -f "$list"
    $SUDO apt-get update -qq || true
  fi
  if [ -n "$tmpdir" ]; then rm -rf "$tmpdir"; fi
}
download_llhttp_from_stable() { # dir
  local line
  if ! line=$(portico_apt_mirror_line stable); then
    echo "setup: cannot fetch llhttp from Debian stable: no Debian mirror to take it from;" \
      "add one to apt's sources, or install libllhttp-dev yourself" >&2
    exit 1
  fi
  echo "setup: temporary source list $list: $line"
  trap cleanup EXIT
  echo "$line" | $SUDO tee "$list" >/dev/null
  $SUDO apt-get update -qq
  (cd "$1" && apt-get download libllhttp-dev libllhttp9.2)
  $SUDO rm -f "$list"
  $SUDO apt-get update -qq
}

if [ -n "$download_dir" ]; then
  download_llhttp_from_stable "$download_dir"
  cleanup
  trap - EXIT
  echo "setup: downloaded to $download_dir (not installed)"
  exit 0
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  apt_update
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
  # The lookup and fleet tests start their own nginx, redis-server and
  # haproxy on loopback ports. The system services these packages just
  # installed are not wanted (nginx's default site listens on port 80 of
  # every address), so they are stopped and disabled where systemd started
  # them. Services that were installed before this run are left alone.
  for service in nginx redis-server haproxy; do
    if [[ " ${missing[*]} " == *" $service "* ]] && command -v systemctl >/dev/null 2>&1 &&
      systemctl is-enabled --quiet "$service" 2>/dev/null; then
      echo "setup: disabling the $service system service (tests start their own)"
      $SUDO systemctl disable --now "$service" || true
    fi
  done
fi

if ! have_llhttp; then
  apt_update
  if apt-cache show libllhttp-dev >/dev/null 2>&1; then
    echo "setup: installing libllhttp-dev from the distribution"
    $SUDO apt-get install -y -qq --no-install-recommends libllhttp-dev
  else
    echo "setup: libllhttp-dev is not in this distribution; fetching it from Debian stable"
    tmpdir=$(mktemp -d)
    download_llhttp_from_stable "$tmpdir"
    $SUDO dpkg -i "$tmpdir"/libllhttp9.2_*.deb "$tmpdir"/libllhttp-dev_*.deb
    cleanup
    trap - EXIT
  fi
fi
echo "setup: all dependencies present"
