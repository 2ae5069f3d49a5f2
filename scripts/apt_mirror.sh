# shellcheck shell=bash
# Sourced by scripts/setup.sh (and tests/scripts/test_apt_mirror.sh): finds
# the Debian archive mirror that this machine's own apt configuration uses,
# so that setup's temporary stable-suite source list goes through the same
# mirror (a local mirror or proxy in data centres and build farms) instead of
# an address written into the script.
#
#   portico_apt_mirror_line [SUITE]
#
# prints one apt source line, e.g.
#   deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] URI stable main
# where URI and signed-by come from the first Debian main-archive entry found,
# in apt's order, in $APT_ROOT/etc/apt/sources.list (one-line entries) and
# $APT_ROOT/etc/apt/sources.list.d/*.list and *.sources (deb822). SUITE
# defaults to "stable". It prints nothing and returns 1, with a message on
# stderr that names every file it read, when no such entry exists.
#
# A Debian main-archive entry: type "deb" (not deb-src), component "main", a
# URI (scheme:...) that is not cdrom:, not disabled (deb822 "Enabled: no"),
# and a suite that is one of Debian's symbolic suites (stable, testing,
# unstable, ...) or, where $APT_ROOT/etc/os-release says ID=debian, the
# release codename (bookworm).
# That leaves out -security, -updates and -backports suites and third-party
# repositories (their suites are their own names: "nodistro", "cloud-sdk-...").
#
# Environment: APT_ROOT (default /) is the root the apt files are read under;
# PORTICO_APT_ARCH (default: `dpkg --print-architecture`) the arch= option.
# The standard file locations are read; a Dir::Etc::SourceList/SourceParts
# moved elsewhere in apt.conf is not followed.
#
# deb822 Signed-By may hold a key inline (an armoured block) rather than a
# keyring path; a one-line entry cannot carry that, so such an entry is used
# only when no other Debian entry exists, then without signed-by= (apt checks
# it against its trusted keyrings, /etc/apt/trusted.gpg.d) and with a note.

# Fields of the candidate entries, filled by the parsers below.
_portico_apt_uri=()
_portico_apt_signed_by=() # "" none, "-" inline key, else a comma-separated list
_portico_apt_suites=""    # space-separated suites that count as Debian's archive

_portico_apt_is_debian_suite() { # suite
  case " $_portico_apt_suites " in *" $1 "*) return 0 ;; esac
  return 1
}

_portico_apt_has_deb() { # types...
  local t
  for t in "$@"; do [ "$t" = deb ] && return 0; done
  return 1
}

_portico_apt_has_main() { # components...
  local c
  for c in "$@"; do [ "$c" = main ] && return 0; done
  return 1
}

# One-line format: `deb [ opt=val ... ] URI suite component...`, "#" starts
# a comment. Options may be written inside the brackets with spaces.
_portico_apt_read_list() { # file
  local line type uri suite opts o signed tok
  local -a words optw
  while IFS= read -r line || [ -n "$line" ]; do
    line=${line%%#*}
    read -r -a words <<<"$line"
    [ "${#words[@]}" -ge 3 ] || continue
    type=${words[0]}
    words=("${words[@]:1}")
    [ "$type" = deb ] || continue
    opts=""
    if [[ ${words[0]} == '['* ]]; then
      # Gather the bracketed options, whether written "[a=b]" or "[ a=b ]".
      while [ "${#words[@]}" -gt 0 ]; do
        tok=${words[0]}
        words=("${words[@]:1}")
        opts+=" $tok"
        [[ $tok == *']' ]] && break
      done
      opts=${opts//[\[\]]/ }
    fi
    [ "${#words[@]}" -ge 3 ] || continue
    uri=${words[0]} suite=${words[1]}
    [[ $uri == *:* && $uri != cdrom:* ]] || continue
    _portico_apt_is_debian_suite "$suite" || continue
    _portico_apt_has_main "${words[@]:2}" || continue
    signed=""
    read -r -a optw <<<"$opts"
    for o in "${optw[@]}"; do
      case "$o" in signed-by=*) signed=${o#signed-by=} ;; esac
    done
    _portico_apt_uri+=("$uri")
    _portico_apt_signed_by+=("$signed")
  done <"$1"
}

# Called at the end of each deb822 stanza with the fields in _s_* variables.
_portico_apt_take_stanza() {
  local u s uri="" debian=0 signed=""
  local -a types uris suites comps keys
  read -r -a types <<<"$_s_types"
  read -r -a uris <<<"$_s_uris"
  read -r -a suites <<<"$_s_suites"
  read -r -a comps <<<"$_s_components"
  read -r -a keys <<<"${_s_signed//,/ }"
  _portico_apt_has_deb "${types[@]}" || return 0
  local enabled=${_s_enabled,,}
  enabled=${enabled//[[:space:]]/}
  case "$enabled" in no | false | off | 0) return 0 ;; esac
  _portico_apt_has_main "${comps[@]}" || return 0
  for s in "${suites[@]}"; do
    if _portico_apt_is_debian_suite "$s"; then debian=1; fi
  done
  [ "$debian" -eq 1 ] || return 0
  for u in "${uris[@]}"; do
    # A cdrom: URI is "cdrom:[label with spaces]/": none of its words counts.
    if [[ $u == *:* && $u != cdrom:* ]]; then
      uri=$u
      break
    fi
  done
  [ -n "$uri" ] || return 0
  if [[ $_s_signed == *"BEGIN PGP"* ]]; then
    signed="-"
  elif [ "${#keys[@]}" -gt 0 ]; then
    signed=$(IFS=,; echo "${keys[*]}")
  fi
  _portico_apt_uri+=("$uri")
  _portico_apt_signed_by+=("$signed")
}

# deb822 format: stanzas of "Field: value" separated by blank lines; a line
# starting with space or tab continues the field before it; "#" lines are
# comments. Field names are case-insensitive.
_portico_apt_read_sources() { # file
  local line field="" value
  local _s_types="" _s_uris="" _s_suites="" _s_components="" _s_signed="" _s_enabled=""
  while IFS= read -r line || [ -n "$line" ]; do
    [[ $line == \#* ]] && continue
    if [[ $line =~ ^[[:space:]]*$ ]]; then
      _portico_apt_take_stanza
      _s_types="" _s_uris="" _s_suites="" _s_components="" _s_signed="" _s_enabled=""
      field=""
      continue
    fi
    if [[ $line == [[:space:]]* ]]; then
      value=$line # continuation of $field
    elif [[ $line == *:* ]]; then
      field=${line%%:*}
      field=${field,,}
      value=${line#*:}
    else
      continue
    fi
    case "$field" in
      types) _s_types+=" $value" ;;
      uris) _s_uris+=" $value" ;;
      suites) _s_suites+=" $value" ;;
      components) _s_components+=" $value" ;;
      signed-by) _s_signed+=" $value" ;;
      enabled) _s_enabled+=" $value" ;;
    esac
  done <"$1"
  _portico_apt_take_stanza
}

portico_apt_mirror_line() { # [suite]
  local suite=${1:-stable}
  local root=${APT_ROOT:-/}
  root=${root%/}
  local etc=$root/etc/apt
  local arch=${PORTICO_APT_ARCH-$(dpkg --print-architecture 2>/dev/null || true)}
  local -a read_files=()
  local f line key val id="" codename="" i pick=-1 opts

  _portico_apt_uri=()
  _portico_apt_signed_by=()
  _portico_apt_suites="stable oldstable oldoldstable testing unstable sid"
  for f in "$root/etc/os-release" "$root/usr/lib/os-release"; do
    [ -r "$f" ] || continue
    while IFS='=' read -r key val; do
      val=${val#[\"\']} val=${val%[\"\']}
      case "$key" in ID) id=$val ;; VERSION_CODENAME) codename=$val ;; esac
    done <"$f"
    break
  done
  if [ "$id" = debian ] && [ -n "$codename" ]; then
    _portico_apt_suites+=" $codename"
  fi

  # apt's order: sources.list, then sources.list.d/ by file name.
  if [ -f "$etc/sources.list" ]; then
    read_files+=("$etc/sources.list")
    _portico_apt_read_list "$etc/sources.list"
  fi
  if [ -d "$etc/sources.list.d" ]; then
    while IFS= read -r f; do
      read_files+=("$f")
      case "$f" in
        *.list) _portico_apt_read_list "$f" ;;
        *.sources) _portico_apt_read_sources "$f" ;;
      esac
    done < <(find "$etc/sources.list.d" -maxdepth 1 -type f \( -name '*.list' -o -name '*.sources' \) |
      LC_ALL=C sort)
  fi

  for i in "${!_portico_apt_uri[@]}"; do
    if [ "${_portico_apt_signed_by[$i]}" != "-" ]; then
      pick=$i
      break
    fi
  done
  if [ "$pick" -lt 0 ] && [ "${#_portico_apt_uri[@]}" -gt 0 ]; then
    pick=0
    echo "note: the Debian entry for ${_portico_apt_uri[0]} has its Signed-By key inline;" \
      "the temporary list goes without signed-by= (apt's trusted keyrings verify it)" >&2
    _portico_apt_signed_by[0]=""
  fi
  if [ "$pick" -lt 0 ]; then
    local what="none of $etc/sources.list, $etc/sources.list.d/*.list, *.sources exists"
    if [ "${#read_files[@]}" -gt 0 ]; then
      what="read ${read_files[*]}"
    fi
    echo "no Debian archive mirror is configured for apt (a 'deb' entry with component" \
      "'main' and suite one of: $_portico_apt_suites); $what" >&2
    return 1
  fi

  opts=""
  [ -n "$arch" ] && opts+=" arch=$arch"
  [ -n "${_portico_apt_signed_by[$pick]}" ] && opts+=" signed-by=${_portico_apt_signed_by[$pick]}"
  line="deb"
  [ -n "$opts" ] && line+=" [${opts# }]"
  echo "$line ${_portico_apt_uri[$pick]} $suite main"
}
