# Sourced by install/deps.sh, install/stacks.sh and bench/gpu/make_carry.sh: apt-get against
# any Debian suite (trixie, sid, experimental, bookworm, ...) in a private work dir. The
# system's apt sources, lists, caches, preferences and installed packages are not touched:
# the work dir has its own sources.list, lists, package cache, preferences and an empty dpkg
# status (so apt resolves a suite's dependency closure as on an empty machine).
DEBIAN_MIRROR=${DEBIAN_MIRROR:-${TRIXIE_MIRROR:-http://deb.debian.org/debian}}
TRIXIE_MIRROR=${TRIXIE_MIRROR:-$DEBIAN_MIRROR}

# debian_suite_begin SUITE [SRC...]: a work dir ($SUITE_WORK) with SUITE's package lists;
# $SUITE_APT holds the apt options that point apt-get and apt-cache at it. experimental is not
# installable alone: its work dir also has sid, and the source packages SRC... (e.g. criu) are
# pinned to experimental, everything else (libc6, ...) comes from sid. For other suites SRC...
# are pinned to SUITE, which changes nothing.
debian_suite_begin() {
  local suite=$1; shift
  SUITE_WORK=$(mktemp -d); chmod 755 "$SUITE_WORK"
  mkdir -p "$SUITE_WORK/lists/partial" "$SUITE_WORK/archives/partial" "$SUITE_WORK/cache"
  : > "$SUITE_WORK/status"
  echo "$suite" > "$SUITE_WORK/suite"
  echo "deb $DEBIAN_MIRROR $suite main" > "$SUITE_WORK/sources.list"
  [ "$suite" != experimental ] || echo "deb $DEBIAN_MIRROR sid main" >> "$SUITE_WORK/sources.list"
  debian_suite_use "$SUITE_WORK"
  debian_suite_pin "$@"
  apt-get "${SUITE_APT[@]}" update -qq
}

# debian_suite_use WORK: make the work dir WORK of an earlier debian_suite_begin the current one
# (several suites can be open at once; each debian_suite_end removes the current one).
debian_suite_use() {
  SUITE_WORK=$1; SUITE_NAME=$(cat "$SUITE_WORK/suite")
  SUITE_APT=(-o "Dir::Etc::SourceList=$SUITE_WORK/sources.list" -o Dir::Etc::SourceParts=/dev/null
             -o "Dir::Etc::Preferences=$SUITE_WORK/preferences" -o Dir::Etc::PreferencesParts=/dev/null
             -o "Dir::State::Lists=$SUITE_WORK/lists" -o "Dir::State::status=$SUITE_WORK/status"
             -o "Dir::Cache=$SUITE_WORK/cache" -o "Dir::Cache::archives=$SUITE_WORK/archives"
             -o APT::Architecture=amd64 -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
}

# debian_suite_pin SRC...: from now on, the binary packages of the source packages SRC... come
# from the current suite (only matters for experimental; replaces the previous pins).
debian_suite_pin() {
  local src
  : > "$SUITE_WORK/preferences"
  for src in "$@"; do
    printf 'Package: src:%s\nPin: release a=%s\nPin-Priority: 990\n\n' "$src" "$SUITE_NAME" >> "$SUITE_WORK/preferences"
  done
}

debian_suite_end() { [ -z "${SUITE_WORK:-}" ] || rm -rf "$SUITE_WORK"; SUITE_WORK=; }

# debian_suite_version PKG: the version apt would take from the begun suite ("" if none).
debian_suite_version() {
  apt-cache "${SUITE_APT[@]}" policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: *//p' | grep -v '^(none)$' || true
}

# debian_suite_source PKG: PKG's source package name in the begun suite.
debian_suite_source() {
  local s
  s=$(apt-cache "${SUITE_APT[@]}" show "$1=$(debian_suite_version "$1")" 2>/dev/null |
        sed -n 's/^Source: *\([^ ]*\).*/\1/p' | head -1)
  echo "${s:-$1}"
}

# debian_suite_closure DIR PKG...: download PKG... and their Depends/Pre-Depends closure (no
# Recommends), as apt resolves it in the begun suite, into DIR.
debian_suite_closure() {
  local dir=$1; shift
  apt-get "${SUITE_APT[@]}" install --download-only --no-install-recommends -y -qq "$@" >/dev/null
  mkdir -p "$dir"
  mv "$SUITE_WORK"/archives/*.deb "$dir/"
}

# debian_suite_fetch SUITE DIR PKG...: download the .debs of PKG... (not their dependencies)
# from SUITE into DIR.
debian_suite_fetch() {
  local suite=$1 dir=$2 rc=0; shift 2
  ( trap debian_suite_end EXIT
    debian_suite_begin "$suite" 2>/dev/null &&
    cd "$dir" && apt-get "${SUITE_APT[@]}" download "$@" >/dev/null 2>&1 ) || rc=1
  return $rc
}

# debian_suite_unpack SUITE DEST PKG...: fetch PKG... from SUITE and unpack them under DEST
# (dpkg -x, no install).
debian_suite_unpack() {
  local suite=$1 dest=$2 debs d rc=0; shift 2
  debs=$(mktemp -d)
  if debian_suite_fetch "$suite" "$debs" "$@"; then
    mkdir -p "$dest"
    for d in "$debs"/*.deb; do dpkg -x "$d" "$dest"; done
  else
    rc=1
  fi
  rm -rf "$debs"
  return $rc
}

# The Debian 13 (trixie) names install/deps.sh and bench/gpu/make_carry.sh use.
# trixie_begin: a work dir ($TRIXIE_WORK) with trixie's package lists; $TRIXIE_APT holds the
# apt options that point apt-get and apt-cache at it.
trixie_begin() {
  local m=$DEBIAN_MIRROR
  DEBIAN_MIRROR=$TRIXIE_MIRROR
  debian_suite_begin trixie
  DEBIAN_MIRROR=$m
  TRIXIE_WORK=$SUITE_WORK; TRIXIE_APT=("${SUITE_APT[@]}"); SUITE_WORK=
}

trixie_end() { rm -rf "$TRIXIE_WORK"; }

# trixie_fetch DIR PKG...: download the .debs of PKG... (not their dependencies) into DIR.
trixie_fetch() { DEBIAN_MIRROR=$TRIXIE_MIRROR debian_suite_fetch trixie "$@"; }

# trixie_unpack DEST PKG...: fetch PKG... and unpack them under DEST (dpkg -x, no install).
trixie_unpack() { DEBIAN_MIRROR=$TRIXIE_MIRROR debian_suite_unpack trixie "$@"; }
