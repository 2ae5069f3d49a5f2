#!/usr/bin/env bash
# Installs the Debian package on this machine and checks it as an operator
# would meet it, then purges it again (CI runs this; run it as root).
#   - apt-get install ./portico_*.deb (Depends must be satisfiable here)
#   - portico --check-config /etc/portico/portico.toml passes as installed
#   - systemd-analyze verify on the installed unit, no warnings
#   - the three man pages render with groff without a warning, and man finds them
#   - bash completion for porticoctl completes its commands
#   - apt-get purge leaves no /etc/portico
#
#   scripts/check_package.sh build/portico_0.1.0_amd64.deb
set -euo pipefail
deb=$(realpath "${1:?usage: check_package.sh PACKAGE.deb}")
export DEBIAN_FRONTEND=noninteractive

purge() { apt-get purge -y -qq portico >/dev/null 2>&1 || true; }
trap purge EXIT
if dpkg-query -W -f='${Status}' portico 2>/dev/null | grep -q "install ok installed"; then
  echo "check_package: portico is already installed here; refusing to replace it" >&2
  trap - EXIT
  exit 1
fi

apt-get install -y -qq "$deb" >/dev/null
echo "installed: $(dpkg-query -W -f='${Package} ${Version}' portico)"
test -x /usr/sbin/portico && test -x /usr/bin/porticoctl
grep -qx /etc/portico/portico.toml /var/lib/dpkg/info/portico.conffiles
getent passwd portico >/dev/null

/usr/sbin/portico --check-config /etc/portico/portico.toml

out=$(systemd-analyze verify --man=no /lib/systemd/system/portico.service 2>&1)
if [ -n "$out" ]; then
  echo "systemd-analyze verify: $out" >&2
  exit 1
fi
echo "systemd-analyze verify: ok"

for page in portico porticoctl portico.toml; do
  file=$(man -w "$page")
  warnings=$(zcat "$file" | groff -man -Tutf8 -ww -z 2>&1)
  if [ -n "$warnings" ]; then
    echo "man $page: $warnings" >&2
    exit 1
  fi
  MANWIDTH=80 man "$page" 2>/dev/null | grep -q "^NAME"
  echo "man $page: renders ($file)"
done

got=$(bash -c 'source /usr/share/bash-completion/completions/porticoctl
  COMP_WORDS=(porticoctl monitor ""); COMP_CWORD=2; _porticoctl; echo "${COMPREPLY[*]}"')
[ "$got" = "disable repairing enable override" ] || { echo "completion: got '$got'" >&2; exit 1; }
echo "bash completion: porticoctl monitor <TAB> -> $got"

purge
trap - EXIT
if [ -e /etc/portico ] || [ -e /usr/sbin/portico ]; then
  echo "purge left files behind" >&2
  exit 1
fi
echo "purged: ok"
