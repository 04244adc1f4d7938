# Sourced by install/deps.sh and bench/gpu/make_carry.sh: apt-get against Debian 13 (trixie)
# in a private work dir. The system's apt sources, lists and cache are not touched.
TRIXIE_MIRROR=${TRIXIE_MIRROR:-http://deb.debian.org/debian}

# trixie_begin: a work dir ($TRIXIE_WORK) with trixie's package lists; $TRIXIE_APT holds the
# apt options that point apt-get and apt-cache at it.
trixie_begin() {
  TRIXIE_WORK=$(mktemp -d); chmod 755 "$TRIXIE_WORK"
  mkdir -p "$TRIXIE_WORK/lists/partial" "$TRIXIE_WORK/archives/partial"
  echo "deb $TRIXIE_MIRROR trixie main" > "$TRIXIE_WORK/sources.list"
  TRIXIE_APT=(-o "Dir::Etc::SourceList=$TRIXIE_WORK/sources.list" -o Dir::Etc::SourceParts=/dev/null
              -o "Dir::State::Lists=$TRIXIE_WORK/lists" -o "Dir::Cache::archives=$TRIXIE_WORK/archives"
              -o APT::Architecture=amd64 -o Debug::NoLocking=1)
  apt-get "${TRIXIE_APT[@]}" update -qq
}

trixie_end() { rm -rf "$TRIXIE_WORK"; }

# trixie_fetch DIR PKG...: download the .debs of PKG... (not their dependencies) into DIR.
trixie_fetch() {
  local dir=$1 rc=0; shift
  trixie_begin 2>/dev/null && (cd "$dir" && apt-get "${TRIXIE_APT[@]}" download "$@" >/dev/null 2>&1) || rc=1
  trixie_end
  return $rc
}

# trixie_unpack DEST PKG...: fetch PKG... and unpack them under DEST (dpkg -x, no install).
trixie_unpack() {
  local dest=$1 debs rc=0; shift
  debs=$(mktemp -d)
  if trixie_fetch "$debs" "$@"; then
    mkdir -p "$dest"
    for d in "$debs"/*.deb; do dpkg -x "$d" "$dest"; done
  else
    rc=1
  fi
  rm -rf "$debs"
  return $rc
}
