#!/usr/bin/env bash
# Install a named stack of container runtime tools from Debian suites into private prefixes:
#
#   RUNC_GRIT_STACK=<name> bash install/stacks.sh      or      bash install/stacks.sh <name>
#
# and print its bin dir (the only line on stdout). Put that dir first on PATH to select the
# whole stack: runc, criu, containerd, containerd-shim-runc-v2, ctr, crun. containerd finds the
# shim on PATH, the shim finds runc on PATH, and runc >= 1.2 ignores `--criu` and runs the
# `criu` on PATH, so the stack's PATH reaches every step.
#
#   stack     runc               criu               containerd (+shim, ctr)  crun (+libcriu)
#   debian12  system 1.1.5       deps.sh's 4.1.1    system 1.6.20            system 1.8.1 (no CRIU)
#   current   sid                sid                sid                      sid
#   next      experimental       experimental       sid                      sid (libcriu: experimental)
#   trixie    trixie             trixie             trixie                   trixie
#
# Versions are what the suites hold when the stack is first installed (the script prints
# them, and $STACKS/<name>/versions records them). Components can be chosen one by one, by
# suite or by upstream version (the suite holding it is found among bookworm, trixie, sid,
# experimental), on top of a named stack or alone:
#   RUNC_GRIT_RUNC=1.4.3 RUNC_GRIT_CRIU=4.2.1 bash install/stacks.sh           (stack runc1.4.3-criu4.2.1)
#   RUNC_GRIT_STACK=current RUNC_GRIT_CRIU=experimental bash install/stacks.sh (stack current+criu4.3)
# RUNC_GRIT_STACK_NAME names the stack dir instead.
#
# Layout (root: RUNC_GRIT_ROOT, default /opt/runc-grit):
#   pkgs/<suite>-<component>/   the component's packages and their whole Depends closure from
#                               the suite, libc6 included (dpkg -x, nothing installed);
#     grit-bin/<exe>            the executables, patchelf'd copies: interpreter = the suite's
#                               ld.so in that prefix, RPATH (not RUNPATH: it also applies to
#                               the libraries' own dependencies) = the prefix's lib dirs. Real
#                               ELF files, so /proc/self/exe re-execs (`runc init`, the shim's
#                               daemonising, runc's memfd clone) keep the suite's libc.
#   stacks/<name>/bin/<exe>     symlinks into pkgs/ (debian12: to the system's binaries)
#   stacks/<name>/versions      component, suite, Debian version, what the binary reports
# Static executables are linked as they are. Every executable's --version is checked against
# its package's upstream version, at each run.
#
# Idempotent: a component whose prefix is complete is not fetched again, and a second run only
# re-checks the versions (no apt, no network). RUNC_GRIT_STACK_UPDATE=1 asks the suites again
# and replaces a component whose version changed, in place: not while its containers run (a
# running shim or runc re-executes itself from its prefix).
# Nothing in the system's apt sources, lists, caches or installed packages is changed (see
# install/trixie.sh). patchelf: the system's if installed, else Debian 12's patchelf unpacked
# into pkgs/bookworm-patchelf.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$HERE/trixie.sh"
export DEBIAN_FRONTEND=noninteractive
ROOT=${RUNC_GRIT_ROOT:-/opt/runc-grit}
PKGS=$ROOT/pkgs
STACKS=$ROOT/stacks
UPDATE=${RUNC_GRIT_STACK_UPDATE:-0}
NAME=${1:-${RUNC_GRIT_STACK:-}}
COMPONENTS=(runc criu containerd crun)
SEARCH_SUITES=(bookworm trixie sid experimental)
T0=$(date +%s%N)

log() { printf '[stacks] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# --- what a stack and a component are --------------------------------------------------------

stack_spec() {   # NAME -> "component=suite ..."
  case $1 in
    current) echo "runc=sid criu=sid containerd=sid crun=sid" ;;
    next)    echo "runc=experimental criu=experimental containerd=sid crun=experimental" ;;
    trixie)  echo "runc=trixie criu=trixie containerd=trixie crun=trixie" ;;
    *) return 1 ;;
  esac
}

comp_pkgs() {    # the packages to resolve (their closure is unpacked)
  # criu: iproute2 is its Recommends: CRIU runs `ip` to dump a network namespace that has more
  # than a loopback (runc declares a loopback-only netns empty, crun does not)
  case $1 in crun) echo "crun libcriu2" ;; criu) echo "criu iproute2" ;; *) echo "$1" ;; esac
}
comp_srcs() {    # source packages pinned to the suite (experimental needs this)
  case $1 in crun) echo "crun criu" ;; *) echo "$1" ;; esac
}
comp_skip() {    # packages of the closure not unpacked: other components' executables
  case $1 in containerd) echo "runc" ;; crun) echo "criu libcompel1" ;; *) echo "" ;; esac
}
comp_exes() {    # path in the package:name on PATH
  case $1 in
    runc) echo "usr/sbin/runc:runc" ;;
    criu) echo "usr/sbin/criu:criu" ;;
    containerd) echo "usr/bin/containerd:containerd usr/bin/containerd-shim-runc-v2:containerd-shim-runc-v2 usr/bin/ctr:ctr" ;;
    crun) echo "usr/bin/crun:crun" ;;
  esac
}
comp_helpers() { # like comp_exes, patched into grit-bin but not put on the stack's PATH (the
  # host's own are used; make_carry.sh carries them for hosts that have none)
  case $1 in criu) echo "usr/bin/ip:ip" ;; *) echo "" ;; esac
}
exe_pkg() { case $1 in containerd*|ctr) echo containerd ;; *) echo "$1" ;; esac; }

# upstream version of a Debian version: 1:1.7.24~ds1-6+deb13u1 -> 1.7.24, 4.3-1~exp2 -> 4.3
upstream() { sed -e 's/^[0-9]*://' -e 's/-[^-]*$//' -e 's/[+~].*//' <<<"$1"; }

# what an executable says its version is
exe_version() {  # NAME PATH
  local out
  case $1 in
    runc) out=$("$2" --version 2>/dev/null | sed -n 's/^runc version *//p') ;;
    criu) out=$("$2" --version 2>/dev/null | sed -n 's/^Version: *//p') ;;
    containerd|ctr) out=$("$2" --version 2>/dev/null | awk 'NR==1{print $3}') ;;
    containerd-shim-runc-v2) out=$("$2" -v 2>/dev/null | sed -n 's/^ *Version: *//p') ;;
    crun) out=$("$2" --version 2>/dev/null | sed -n 's/^crun version *//p') ;;
  esac
  out=${out#v}; echo "${out%%[+~ ]*}"
}

# --- suites: one private apt work dir per suite, for this run ---------------------------------

declare -A SUITE_DIRS=()
cleanup() { local w; for w in "${SUITE_DIRS[@]}"; do rm -rf "$w"; done; }
trap cleanup EXIT

open_suite() {   # SUITE: make it the current apt suite (lists fetched once per run)
  local s=$1
  [ "$s" != unstable ] || s=sid
  if [ -n "${SUITE_DIRS[$s]:-}" ]; then
    debian_suite_use "${SUITE_DIRS[$s]}"
  else
    log "fetching the package lists of $s"
    debian_suite_begin "$s" || die "apt-get update for suite $s failed"
    SUITE_DIRS[$s]=$SUITE_WORK
  fi
}

# resolve_component COMP VALUE: $RESOLVED = the suite; VALUE is a suite name or an upstream
# version (1.4.3, or 1.4 for the first suite with a 1.4.x)
resolve_component() {
  local comp=$1 want=$2 s v seen=
  case $want in
    bookworm|trixie|forky|sid|unstable|experimental) RESOLVED=${want/unstable/sid}; return ;;
  esac
  if [ "$UPDATE" != 1 ]; then     # a prefix installed earlier that has it: no apt needed
    for s in "${SEARCH_SUITES[@]}"; do
      v=$(sed -n "s/^$comp=//p" "$PKGS/$s-$comp/.grit-stamp" 2>/dev/null || true)
      [ -n "$v" ] && stamp_ok "$PKGS/$s-$comp" "$comp" || continue
      v=$(upstream "$v")
      if [ "$v" = "$want" ] || [ "${v#"$want".}" != "$v" ]; then RESOLVED=$s; return; fi
    done
  fi
  for s in "${SEARCH_SUITES[@]}"; do
    open_suite "$s"
    # shellcheck disable=SC2046
    debian_suite_pin $(comp_srcs "$comp")
    v=$(debian_suite_version "$comp")
    [ -n "$v" ] || continue
    seen+=" $s:$v"
    v=$(upstream "$v")
    if [ "$v" = "$want" ] || [ "${v#"$want".}" != "$v" ]; then RESOLVED=$s; return; fi
  done
  die "no suite has $comp $want (found:$seen)"
}

# --- patchelf ---------------------------------------------------------------------------------

PATCHELF=
need_patchelf() {
  [ -z "$PATCHELF" ] || return 0
  if command -v patchelf >/dev/null 2>&1; then PATCHELF=$(command -v patchelf); return; fi
  local p=$PKGS/bookworm-patchelf
  if [ ! -x "$p/usr/bin/patchelf" ]; then
    log "fetching patchelf from Debian 12 into $p"
    debian_suite_unpack bookworm "$p" patchelf || die "could not fetch patchelf"
  fi
  PATCHELF=$p/usr/bin/patchelf
}

prefix_ld() {    # PREFIX -> its ld.so
  local c
  for c in usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 \
           usr/lib64/ld-linux-x86-64.so.2 lib64/ld-linux-x86-64.so.2; do
    [ -e "$1/$c" ] && { echo "$1/$c"; return; }
  done
  return 1
}

# --- one component ----------------------------------------------------------------------------

stamp_ok() {     # PREFIX COMP: installed completely (stamp written last)
  local e
  [ -f "$1/.grit-stamp" ] || return 1
  for e in $(comp_exes "$2") $(comp_helpers "$2"); do [ -e "$1/grit-bin/${e#*:}" ] || return 1; done
}

install_component() {   # COMP SUITE
  local comp=$1 suite=$2 prefix=$PKGS/$2-$1 top want have tmp d p e ld rpath skip
  top=${comp}
  if stamp_ok "$prefix" "$comp" && [ "$UPDATE" != 1 ]; then return 0; fi
  open_suite "$suite"
  debian_suite_pin $(comp_srcs "$comp")
  want=$(debian_suite_version "$top")
  [ -n "$want" ] || die "suite $suite has no package $top"
  if stamp_ok "$prefix" "$comp"; then
    have=$(sed -n "s/^$top=//p" "$prefix/.grit-stamp")
    if [ "$have" = "$want" ]; then log "$suite-$comp: $top $want, unchanged"; return 0; fi
    log "$suite-$comp: $top $have -> $want"
  fi
  log "$suite-$comp: fetching $top $want$(p=$(comp_pkgs "$comp"); [ "$p" = "$top" ] || echo " (with ${p#"$top" })"), with their dependencies"
  tmp=$(mktemp -d)
  # shellcheck disable=SC2046
  debian_suite_closure "$tmp" $(comp_pkgs "$comp") || { rm -rf "$tmp"; die "apt could not resolve $comp in $suite"; }
  rm -rf "$prefix"; mkdir -p "$prefix/grit-bin"
  skip=" $(comp_skip "$comp") "
  : > "$prefix/.grit-debs"
  for d in "$tmp"/*.deb; do
    p=$(dpkg-deb -f "$d" Package)
    [ "${skip/ $p /}" = "$skip" ] || continue
    dpkg -x "$d" "$prefix"
    echo "$p=$(dpkg-deb -f "$d" Version)" >> "$prefix/.grit-debs"
  done
  rm -rf "$tmp"
  ld=$(prefix_ld "$prefix") || die "$suite-$comp: no ld.so in the closure"
  rpath=$prefix/usr/lib/x86_64-linux-gnu:$prefix/lib/x86_64-linux-gnu
  need_patchelf
  for e in $(comp_exes "$comp") $(comp_helpers "$comp"); do
    local src=$prefix/${e%%:*} name=${e#*:}
    [ -x "$src" ] || die "$suite-$comp: $src missing from the package"
    if "$PATCHELF" --print-interpreter "$src" >/dev/null 2>&1; then
      cp "$src" "$prefix/grit-bin/$name.tmp"
      "$PATCHELF" --set-interpreter "$ld" --set-rpath "$rpath" --force-rpath "$prefix/grit-bin/$name.tmp"
      mv "$prefix/grit-bin/$name.tmp" "$prefix/grit-bin/$name"
    else             # static: as it is
      ln -sfn "../${e%%:*}" "$prefix/grit-bin/$name"
    fi
  done
  grep "^$top=" "$prefix/.grit-debs" > "$prefix/.grit-stamp" || die "$suite-$comp: $top not in its closure"
  log "$suite-$comp: installed into $prefix"
}

# --- the stack's bin dir ----------------------------------------------------------------------

link() {         # TARGET LINK: (re)point LINK only when it differs
  [ "$(readlink "$2" 2>/dev/null)" = "$1" ] || ln -sfn "$1" "$2"
}

write_if_changed() {    # FILE: stdin -> FILE, untouched when equal
  local t; t=$(mktemp)
  cat > "$t"
  if cmp -s "$t" "$1"; then rm -f "$t"; else chmod 644 "$t"; mv -f "$t" "$1"; fi
}

check() {        # NAME PATH WANT: "reported<TAB>ok" when the executable reports WANT
  local got; got=$(exe_version "$1" "$2")
  if [ "$got" = "$3" ]; then
    printf '%s\tok\n' "$got"
  else
    printf '%s\tMISMATCH(expected %s)\n' "${got:-?}" "$3"
  fi
}

build_debian12() {
  local bin=$STACKS/debian12/bin e p v st criu new
  mkdir -p "$bin"
  # deps.sh's CRIU wrapper (its bin dir), else the criu on PATH unless that is another stack's
  criu=${RUNC_GRIT_BIN_DIR:-/usr/local/sbin}/criu
  if [ ! -x "$criu" ]; then
    criu=$(command -v criu 2>/dev/null || true)
    case $(readlink -f "$criu") in "$PKGS"/*|"$STACKS"/*) criu= ;; esac
  fi
  [ -n "$criu" ] || die "no criu: run install/deps.sh first"
  declare -A src=([runc]=/usr/sbin/runc [criu]=$criu [containerd]=/usr/bin/containerd
                  [containerd-shim-runc-v2]=/usr/bin/containerd-shim-runc-v2 [ctr]=/usr/bin/ctr
                  [crun]=/usr/bin/crun)
  new=$(mktemp)
  {
    for e in runc criu containerd containerd-shim-runc-v2 ctr crun; do
      [ -x "${src[$e]}" ] || die "${src[$e]} missing: run install/deps.sh first"
      link "${src[$e]}" "$bin/$e"
      if [ "$e" = criu ]; then
        v=$(exe_version criu "$bin/criu"); p=-
        [ ! -f /opt/runc-grit/criu/usr/share/doc/criu/changelog.Debian.gz ] ||
          p=$(zcat /opt/runc-grit/criu/usr/share/doc/criu/changelog.Debian.gz | sed -n '1s/^criu (\([^)]*\)).*/\1/p')
        case $v in 4.[1-9]*|[5-9].*) st=ok ;; *) st="MISMATCH(need >= 4.1)" ;; esac
        printf '%s\t%s\t%s\t%s\t%s\n' criu "trixie(deps.sh)" "$p" "$v" "$st"
      else
        p=$(dpkg-query -W -f '${Version}' "$(exe_pkg "$e")" 2>/dev/null) || die "package $(exe_pkg "$e") not installed"
        printf '%s\t%s\t%s\t%s\n' "$e" bookworm "$p" "$(check "$e" "$bin/$e" "$(upstream "$p")")"
      fi
    done
  } > "$new"
  write_if_changed "$STACKS/debian12/versions" < "$new"
  rm -f "$new"
}

build_stack() {  # NAME "comp=suite ..."
  local name=$1 spec=$2 bin=$STACKS/$1/bin cs comp suite e prefix deb new
  mkdir -p "$bin"
  for cs in $spec; do install_component "${cs%%=*}" "${cs#*=}"; done
  local keep=" "
  new=$(mktemp)
  {
    for cs in $spec; do
      comp=${cs%%=*}; suite=${cs#*=}; prefix=$PKGS/$suite-$comp
      for e in $(comp_exes "$comp"); do
        e=${e#*:}; keep+="$e "
        link "$prefix/grit-bin/$e" "$bin/$e"
        deb=$(sed -n "s/^$comp=//p" "$prefix/.grit-stamp")
        printf '%s\t%s\t%s\t%s\n' "$e" "$suite" "$deb" "$(check "$e" "$bin/$e" "$(upstream "$deb")")"
      done
    done
  } > "$new"
  for e in "$bin"/*; do     # links of components no longer in the stack
    [ -L "$e" ] && [ "${keep/ ${e##*/} /}" = "$keep" ] && rm -f "$e"
  done
  write_if_changed "$STACKS/$name/versions" < "$new"
  rm -f "$new"
}

# --- main -------------------------------------------------------------------------------------

[ "$(id -u)" = 0 ] || die "run as root"
mkdir -p "$PKGS" "$STACKS"
exec 9<"$STACKS"; flock 9     # one run at a time

overrides=()
for comp in "${COMPONENTS[@]}"; do
  var=RUNC_GRIT_${comp^^}
  [ -z "${!var:-}" ] || overrides+=("$comp=${!var}")
done
[ -n "$NAME" ] || [ ${#overrides[@]} -gt 0 ] ||
  die "usage: RUNC_GRIT_STACK=debian12|current|next|trixie bash install/stacks.sh (or RUNC_GRIT_RUNC=... RUNC_GRIT_CRIU=...)"

if [ "$NAME" = debian12 ] && [ ${#overrides[@]} -eq 0 ]; then
  build_debian12
else
  if [ -n "$NAME" ]; then spec=$(stack_spec "$NAME") || die "unknown stack '$NAME' (debian12, current, next, trixie)"; else spec=; fi
  suffix=
  for o in "${overrides[@]}"; do
    comp=${o%%=*}; resolve_component "$comp" "${o#*=}"; suite=$RESOLVED
    spec=$(for cs in $spec; do [ "${cs%%=*}" = "$comp" ] || echo "$cs"; done; echo "$comp=$suite")
    spec=$(echo $spec)
    install_component "$comp" "$suite"
    suffix+="-$comp$(upstream "$(sed -n "s/^$comp=//p" "$PKGS/$suite-$comp/.grit-stamp")")"
  done
  if [ -n "$suffix" ]; then
    if [ -n "$NAME" ]; then NAME="$NAME+${suffix#-}"; else NAME=${suffix#-}; fi
  fi
  NAME=${RUNC_GRIT_STACK_NAME:-$NAME}
  build_stack "$NAME" "$spec"
fi

column -t -s $'\t' "$STACKS/$NAME/versions" | sed 's/^/[stacks]   /' >&2
! grep -q MISMATCH "$STACKS/$NAME/versions" || die "stack $NAME: an executable is not the version its package says"
ms=$(( ($(date +%s%N) - T0) / 1000000 ))
log "stack $NAME ready in $((ms / 1000)).$(printf '%03d' $((ms % 1000))) s"
echo "$STACKS/$NAME/bin"
