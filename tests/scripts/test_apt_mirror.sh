#!/usr/bin/env bash
# Tests scripts/apt_mirror.sh, the mirror detection behind setup's llhttp
# fallback: each case builds an apt configuration under a temporary root
# (APT_ROOT) and asserts the source line it generates, or its failure and
# message. Run by ctest (tests/CMakeLists.txt) and directly:
#   bash tests/scripts/test_apt_mirror.sh
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/apt_mirror.sh
source "$here/../../scripts/apt_mirror.sh"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0
cases=0
KEY=/usr/share/keyrings/debian-archive-keyring.gpg

# new_root NAME [os-release ID] [codename]: an empty machine; prints its path.
new_root() {
  local r=$work/$1
  mkdir -p "$r/etc/apt/sources.list.d"
  if [ -n "${2:-}" ]; then
    printf 'PRETTY_NAME="test"\nID=%s\nVERSION_CODENAME=%s\n' "$2" "${3:-}" >"$r/etc/os-release"
  fi
  echo "$r"
}

# expect_line NAME ROOT EXPECTED [SUITE]: detection succeeds with EXPECTED.
expect_line() {
  local name=$1 root=$2 want=$3 got rc
  cases=$((cases + 1))
  got=$(APT_ROOT=$root portico_apt_mirror_line ${4:+"$4"} 2>"$work/stderr")
  rc=$?
  if [ "$rc" -ne 0 ] || [ "$got" != "$want" ]; then
    echo "FAIL $name: exit $rc"
    echo "  want: $want"
    echo "  got:  $got"
    sed 's/^/  stderr: /' "$work/stderr"
    failures=$((failures + 1))
  else
    echo "ok   $name"
  fi
}

# expect_error NAME ROOT TEXT...: detection fails (exit 1), prints nothing on
# stdout, and its message contains every TEXT.
expect_error() {
  local name=$1 root=$2 got rc t bad=""
  shift 2
  cases=$((cases + 1))
  got=$(APT_ROOT=$root portico_apt_mirror_line 2>"$work/stderr")
  rc=$?
  [ "$rc" -eq 1 ] || bad+=" exit $rc (want 1);"
  [ -z "$got" ] || bad+=" stdout '$got';"
  for t in "$@"; do
    grep -qF -- "$t" "$work/stderr" || bad+=" message lacks '$t';"
  done
  if [ -n "$bad" ]; then
    echo "FAIL $name:$bad"
    sed 's/^/  stderr: /' "$work/stderr"
    failures=$((failures + 1))
  else
    echo "ok   $name"
  fi
}

export PORTICO_APT_ARCH=arm64

# --- one-line sources.list -------------------------------------------------
r=$(new_root oneline-plain debian bookworm)
cat >"$r/etc/apt/sources.list" <<'EOF'
# deb http://commented.example.org/debian bookworm main
deb cdrom:[Debian GNU/Linux 12.5.0 _Bookworm_ - Official amd64 DVD]/ bookworm main
deb cdrom:[Debian_12]/ bookworm main
deb-src http://src.example.org/debian bookworm main
deb http://security.example.org/debian-security bookworm-security main
deb http://mirror.example.org/debian bookworm-updates main
deb http://thirdparty.example.com/apt nodistro main
deb http://mirror.example.org/debian bookworm contrib
deb http://mirror.example.org/debian/ bookworm main contrib non-free-firmware   # the archive
deb http://later.example.org/debian bookworm main
EOF
expect_line "one-line: first Debian main entry, no signed-by" "$r" \
  "deb [arch=arm64] http://mirror.example.org/debian/ stable main"
expect_line "one-line: the suite asked for" "$r" \
  "deb [arch=arm64] http://mirror.example.org/debian/ trixie main" trixie

r=$(new_root oneline-signed debian bookworm)
cat >"$r/etc/apt/sources.list" <<EOF
deb [signed-by=$KEY] http://security.example.org/debian-security bookworm-security main
deb [arch=amd64,i386 signed-by=$KEY] http://mirror.example.org/debian bookworm main
EOF
expect_line "one-line: [signed-by=...] copied, arch from the machine" "$r" \
  "deb [arch=arm64 signed-by=$KEY] http://mirror.example.org/debian stable main"

r=$(new_root oneline-spaced debian bookworm)
cat >"$r/etc/apt/sources.list" <<'EOF'
	deb  [ trusted=no signed-by=/etc/apt/keyrings/local.gpg ]  http://proxy.example.org:3142/debian   stable  main
EOF
expect_line "one-line: spaced [ options ] and suite 'stable'" "$r" \
  "deb [arch=arm64 signed-by=/etc/apt/keyrings/local.gpg] http://proxy.example.org:3142/debian stable main"

r=$(new_root oneline-no-os-release)
cat >"$r/etc/apt/sources.list" <<'EOF'
deb http://mirror.example.org/debian bookworm main
deb http://mirror.example.org/debian testing main
EOF
expect_line "one-line: no os-release, so only symbolic suites count" "$r" \
  "deb [arch=arm64] http://mirror.example.org/debian stable main"

r=$(new_root oneline-parts debian trixie)
cat >"$r/etc/apt/sources.list.d/mirror.list" <<'EOF'
deb [signed-by=/a.gpg] file:/srv/mirror/debian trixie main
EOF
expect_line "one-line: a .list in sources.list.d, file: URI" "$r" \
  "deb [arch=arm64 signed-by=/a.gpg] file:/srv/mirror/debian stable main"

# --- deb822 .sources --------------------------------------------------------
r=$(new_root deb822 debian bookworm)
cat >"$r/etc/apt/sources.list.d/debian.sources" <<EOF
# the security archive first, as some installers write it
Types: deb
URIs: http://security.example.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: $KEY

Types: deb-src
URIs: http://src.example.org/debian
Suites: bookworm
Components: main

Enabled: no
Types: deb
URIs: http://disabled.example.org/debian
Suites: bookworm
Components: main

Types: deb
URIs: cdrom:[Debian GNU/Linux 12.5.0 _Bookworm_ - Official amd64 DVD]/
Suites: bookworm
Components: main

types: deb deb-src
# a comment inside the stanza
uris: http://mirror.example.org/debian
 http://second.example.org/debian
suites: bookworm-updates
 bookworm
components: contrib main
signed-by: $KEY
EOF
expect_line "deb822: multiple URIs/Suites, Signed-By path, skips security/deb-src/disabled/cdrom" "$r" \
  "deb [arch=arm64 signed-by=$KEY] http://mirror.example.org/debian stable main"

r=$(new_root deb822-thirdparty debian bookworm)
cat >"$r/etc/apt/sources.list.d/a-nodesource.sources" <<'EOF'
Types: deb
URIs: https://thirdparty.example.com/node_20.x
Suites: nodistro
Components: main
Signed-By: /usr/share/keyrings/nodesource.gpg
EOF
cat >"$r/etc/apt/sources.list.d/b-debian.sources" <<'EOF'
Types: deb
URIs: http://mirror.example.org/debian
Suites: stable
Components: main
Signed-By: /k1.gpg
  /k2.gpg, 0123456789ABCDEF0123456789ABCDEF01234567
EOF
expect_line "deb822: third-party file skipped, several Signed-By joined with commas" "$r" \
  "deb [arch=arm64 signed-by=/k1.gpg,/k2.gpg,0123456789ABCDEF0123456789ABCDEF01234567] http://mirror.example.org/debian stable main"

r=$(new_root deb822-inline debian bookworm)
cat >"$r/etc/apt/sources.list.d/a-inline.sources" <<'EOF'
Types: deb
URIs: http://inline.example.org/debian
Suites: bookworm
Components: main
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 mDMEY2xhbGFsYWxhbGFsYWxhbGFsYWxhbGFsYWxhbGFsYWxhbA==
 -----END PGP PUBLIC KEY BLOCK-----
EOF
cp -r "$r" "$work/deb822-inline-only"
cat >"$r/etc/apt/sources.list.d/b-debian.sources" <<'EOF'
Types: deb
URIs: http://mirror.example.org/debian
Suites: bookworm
Components: main
Signed-By: /k.gpg
EOF
expect_line "deb822: an entry with an inline key yields to one with a keyring path" "$r" \
  "deb [arch=arm64 signed-by=/k.gpg] http://mirror.example.org/debian stable main"
expect_line "deb822: inline key only: the entry, without signed-by" "$work/deb822-inline-only" \
  "deb [arch=arm64] http://inline.example.org/debian stable main"
cases=$((cases + 1))
if grep -q "inline" "$work/stderr"; then
  echo "ok   deb822: inline key only: a note says so"
else
  echo "FAIL deb822: inline key only: no note on stderr"
  failures=$((failures + 1))
fi

# --- both formats -----------------------------------------------------------
r=$(new_root both debian bookworm)
cat >"$r/etc/apt/sources.list" <<'EOF'
deb http://security.example.org/debian-security bookworm-security main
EOF
cat >"$r/etc/apt/sources.list.d/debian.sources" <<'EOF'
Types: deb
URIs: http://mirror.example.org/debian
Suites: bookworm
Components: main
Signed-By: /k.gpg
EOF
expect_line "both: sources.list has no archive entry, debian.sources does" "$r" \
  "deb [arch=arm64 signed-by=/k.gpg] http://mirror.example.org/debian stable main"
echo "deb http://first.example.org/debian bookworm main" >>"$r/etc/apt/sources.list"
expect_line "both: sources.list comes first, as in apt" "$r" \
  "deb [arch=arm64] http://first.example.org/debian stable main"

r=$(new_root parts-order debian bookworm)
printf 'Types: deb\nURIs: http://second.example.org/debian\nSuites: bookworm\nComponents: main\n' \
  >"$r/etc/apt/sources.list.d/20-second.sources"
echo "deb http://first.example.org/debian bookworm main" >"$r/etc/apt/sources.list.d/10-first.list"
expect_line "both: sources.list.d is read in file-name order" "$r" \
  "deb [arch=arm64] http://first.example.org/debian stable main"

r=$(new_root noarch debian bookworm)
echo "deb http://mirror.example.org/debian bookworm main" >"$r/etc/apt/sources.list"
PORTICO_APT_ARCH="" expect_line "no arch known: no options at all" "$r" \
  "deb http://mirror.example.org/debian stable main"
if command -v dpkg >/dev/null; then
  arch=$(dpkg --print-architecture)
  before=$failures
  (
    unset PORTICO_APT_ARCH
    expect_line "arch defaults to dpkg's architecture" "$r" \
      "deb [arch=$arch] http://mirror.example.org/debian stable main"
    [ "$failures" -eq "$before" ]
  ) || failures=$((failures + 1))
  cases=$((cases + 1))
fi

# --- no Debian mirror -------------------------------------------------------
r=$(new_root empty debian bookworm)
expect_error "none: no source files at all" "$r" \
  "$r/etc/apt/sources.list" "$r/etc/apt/sources.list.d/*.list" "*.sources" "none of"

r=$(new_root foreign debian bookworm)
cat >"$r/etc/apt/sources.list" <<'EOF'
deb-src http://mirror.example.org/debian bookworm main
deb http://security.example.org/debian-security bookworm-security main
EOF
cat >"$r/etc/apt/sources.list.d/vendor.sources" <<'EOF'
Types: deb
URIs: https://thirdparty.example.com/apt
Suites: cloud-sdk-bookworm
Components: main
EOF
# apt reads only *.list and *.sources; neither should this.
echo "deb http://ignored.example.org/debian bookworm main" \
  >"$r/etc/apt/sources.list.d/debian.list.disabled"
expect_error "none: only deb-src, security and third-party entries; names the files read" "$r" \
  "read $r/etc/apt/sources.list $r/etc/apt/sources.list.d/vendor.sources" \
  "suite one of: stable oldstable oldoldstable testing unstable sid bookworm"
cases=$((cases + 1))
if grep -q "disabled" "$work/stderr"; then
  echo "FAIL none: a file apt ignores was read"
  failures=$((failures + 1))
else
  echo "ok   none: a file apt ignores is not read"
fi

r=$(new_root other-distro ubuntu jammy)
echo "deb http://archive.example.org/ubuntu jammy main restricted" >"$r/etc/apt/sources.list"
expect_error "none: another distribution's codename is not Debian's" "$r" \
  "read $r/etc/apt/sources.list"

echo "$cases cases, $failures failed"
[ "$failures" -eq 0 ]
