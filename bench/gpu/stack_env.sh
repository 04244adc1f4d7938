#!/bin/bash
# stack_env.sh DIR: install a stack carried by bench/gpu/make_carry.sh (DIR = .carry/stacks/<name>,
# built with CARRY_STACKS=<name>) under /opt/rg/stacks/<name> on the device machine, check that
# every executable runs and is the version recorded when it was carried, and print the PATH to
# use (the stack's bin dir first), e.g.
#   export PATH=$(bash bench/gpu/stack_env.sh .carry/stacks/current)
# The executables were patchelf'd for that very dir (interpreter and RPATH are absolute), so the
# stack works only there. Its libc and loader are the suite's (sid): nothing on the host is used
# but the kernel. CRIU also needs iptables-restore and ip6tables-restore on PATH: when the host has
# none, wrappers for the carried Debian 13 xtables-legacy-multi (.carry/criu, as device_run.sh
# makes them) are put into the stack's bin dir. Idempotent: an unchanged stack is not unpacked
# again. Messages go to stderr, the PATH alone to stdout.
set -euo pipefail
DIR=$(cd "${1:?usage: stack_env.sh .carry/stacks/NAME}" && pwd)
DEST=$(cat "$DIR/DEST")
log() { printf '[stack_env] %s\n' "$*" >&2; }

if ! cmp -s "$DIR/versions" "$DEST/versions" || [ ! -f "$DEST/.complete" ]; then
  rm -rf "$DEST.new"; mkdir -p "$DEST.new"
  if command -v xz >/dev/null 2>&1; then
    xz -dc "$DIR/stack.tar.xz" | tar -C "$DEST.new" -xf -
  else
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2])' \
      "$DIR/stack.tar.xz" "$DEST.new"
  fi
  rm -rf "$DEST"; mv "$DEST.new" "$DEST"; touch "$DEST/.complete"
  log "unpacked into $DEST"
fi

# iptables for CRIU's network lock
C=$(cd "$DIR/../.." && pwd)/criu
for t in iptables-restore ip6tables-restore; do
  PATH=$DEST/bin:$PATH command -v "$t" >/dev/null 2>&1 && continue
  if [ -x "$C/usr/sbin/xtables-legacy-multi" ]; then
    printf '#!/bin/sh\nXTABLES_LIBDIR=%s/xtables exec %s/lib/ld-linux-x86-64.so.2 --library-path %s/lib %s/usr/sbin/xtables-legacy-multi %s "$@"\n' \
      "$C" "$C" "$C" "$C" "$t" > "$DEST/bin/$t"
    chmod 0755 "$DEST/bin/$t"
    log "$t: wrapper for $C/usr/sbin/xtables-legacy-multi"
  else
    log "WARNING: no $t on PATH and no carried xtables: CRIU cannot lock a container's network"
  fi
done

# each executable is the version it was carried as (versions: exe suite debversion reported ok)
bad=0
while read -r exe _ _ want _; do
  case $exe in
    runc) got=$("$DEST/bin/runc" --version | sed -n 's/^runc version *//p') ;;
    criu) got=$("$DEST/bin/criu" --version | sed -n 's/^Version: *//p') ;;
    containerd|ctr) got=$("$DEST/bin/$exe" --version | awk 'NR==1{print $3}') ;;
    containerd-shim-runc-v2) got=$("$DEST/bin/$exe" -v | sed -n 's/^ *Version: *//p') ;;
    crun) got=$("$DEST/bin/crun" --version | sed -n 's/^crun version *//p') ;;
    *) continue ;;
  esac
  got=${got#v}; got=${got%%[+~ ]*}
  if [ "$got" = "$want" ]; then log "$exe $got"; else log "ERROR: $exe reports '$got', carried as $want"; bad=1; fi
done < "$DEST/versions"
[ $bad = 0 ] || exit 1
echo "$DEST/bin:$PATH"
