#!/usr/bin/env bash
# Install what runc-grit needs on a Debian 12 (bookworm) node or CI machine:
#   runc, iptables, containerd, busybox (demo/tests), python3-venv, CRIU >= 4.1, crun,
#   docker-registry and htpasswd (the registry tests), and
#   runsc (gVisor, from Debian 13).
# Debian 12 ships CRIU 3.17, which fails `criu check` on 6.x kernels with new vDSO layouts.
# CRIU 4.1 comes from Debian 13 (trixie) packages, unpacked into a private prefix and started
# through trixie's own dynamic loader (it needs glibc >= 2.38). Nothing in the system's apt
# sources is changed. Idempotent: a second run changes nothing.
set -euo pipefail

PREFIX=${RUNC_GRIT_CRIU_PREFIX:-/opt/runc-grit/criu}
BIN=${RUNC_GRIT_BIN_DIR:-/usr/local/sbin}
export DEBIAN_FRONTEND=noninteractive
. "$(dirname "$0")/trixie.sh"

log() { printf '[deps] %s\n' "$*" >&2; }

need_apt=()
for pair in runc:runc iptables-restore:iptables containerd:containerd busybox:busybox-static \
            ip:iproute2 curl:curl zstd:zstd crun:crun \
            docker-registry:docker-registry htpasswd:apache2-utils; do
  cmd=${pair%%:*}; pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || need_apt+=("$pkg")
done
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "apt-get install ${need_apt[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  # docker-registry (the registry tests start their own, on loopback): its packaged service
  # would listen on :5000 of every node this runs on (systemd unit, or the sysv script)
  if [[ " ${need_apt[*]} " == *" docker-registry "* ]]; then
    if [ -d /run/systemd/system ]; then
      systemctl disable --now docker-registry >/dev/null 2>&1 || true
    elif [ -x /etc/init.d/docker-registry ]; then
      invoke-rc.d docker-registry stop >/dev/null 2>&1 || true
      update-rc.d docker-registry disable >/dev/null 2>&1 || true
    fi
    log "docker-registry's packaged service disabled (the tests start their own)"
  fi
fi

criu_ok() {
  local v
  v=$("$1" --version 2>/dev/null | sed -n 's/^Version: *//p') || return 1
  [ -n "$v" ] || return 1
  # >= 4.1
  python3 - "$v" <<'PY'
import sys
parts = [int(p) for p in sys.argv[1].split(".")[:2]]
sys.exit(0 if parts >= [4, 1] else 1)
PY
}

if command -v criu >/dev/null 2>&1 && criu_ok "$(command -v criu)"; then
  log "criu $(criu --version | sed -n 's/^Version: *//p') already present"
else
  if [ ! -x "$PREFIX/usr/sbin/criu" ]; then
    log "fetching CRIU 4.1 from Debian 13 into $PREFIX"
    trixie_begin
    trap trixie_end EXIT
    mkdir -p "$TRIXIE_WORK/debs"
    # criu, its libraries, and the legacy xtables for CRIU's network lock, with all their
    # dependencies (libc6 included: trixie's loader and libc are used, not the system's).
    pkgs=$(apt-cache "${TRIXIE_APT[@]}" depends --recurse --no-recommends --no-suggests \
             --no-conflicts --no-breaks --no-replaces --no-enhances \
             criu iptables python3-pycriu 2>/dev/null | grep -E '^[a-z0-9]' | grep -vE '^(python3|python3\.[0-9]+|python3-minimal|libpython3.*|debconf|perl.*|dpkg|install-info)$' | sort -u)
    (cd "$TRIXIE_WORK/debs" && apt-get "${TRIXIE_APT[@]}" download $pkgs >/dev/null 2>&1 || \
       for p in $pkgs; do apt-get "${TRIXIE_APT[@]}" download "$p" >/dev/null 2>&1 || true; done)
    mkdir -p "$PREFIX"
    for d in "$TRIXIE_WORK"/debs/*.deb; do dpkg -x "$d" "$PREFIX"; done
    trixie_end; trap - EXIT
  fi
  L="$PREFIX/lib/x86_64-linux-gnu:$PREFIX/usr/lib/x86_64-linux-gnu"
  LD="$PREFIX/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
  [ -e "$LD" ] || LD="$PREFIX/lib64/ld-linux-x86-64.so.2"
  mkdir -p "$BIN"
  cat > "$BIN/criu.tmp" <<W
#!/bin/sh
# runc-grit: CRIU 4.1 from Debian 13, started through its own loader (install/deps.sh)
exec "$LD" --library-path "$L" "$PREFIX/usr/sbin/criu" "\$@"
W
  chmod 0755 "$BIN/criu.tmp"; mv -f "$BIN/criu.tmp" "$BIN/criu"
  if ! criu_ok "$BIN/criu"; then
    log "ERROR: CRIU at $BIN/criu does not report version >= 4.1"; exit 1
  fi
  log "criu $("$BIN/criu" --version | sed -n 's/^Version: *//p') installed at $BIN/criu"
fi

# crit (optional: `runc-grit inspect` shows the process tree with it): the trixie pycriu and
# protobuf, run by this system's python3 with protobuf's pure-Python implementation.
if ! command -v crit >/dev/null 2>&1 && [ -f "$PREFIX/usr/bin/crit" ] && [ -d "$PREFIX/usr/lib/python3/dist-packages/pycriu" ]; then
  printf '#!/bin/sh\nPROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python PYTHONPATH="%s" exec python3 -S "%s" "$@"\n' \
    "$PREFIX/usr/lib/python3/dist-packages" "$PREFIX/usr/bin/crit" > "$BIN/crit"
  chmod 0755 "$BIN/crit"
  log "crit installed at $BIN/crit"
fi

# checkpointctl (optional: `checkpointctl show` reads runc-grit's exported archives), also
# from Debian 13 and run through the same loader as CRIU.
if ! command -v checkpointctl >/dev/null 2>&1 && [ -x "$PREFIX/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" ]; then
  [ -x "$PREFIX/usr/bin/checkpointctl" ] || trixie_unpack "$PREFIX" checkpointctl || true
  if [ -x "$PREFIX/usr/bin/checkpointctl" ]; then
    L="$PREFIX/lib/x86_64-linux-gnu:$PREFIX/usr/lib/x86_64-linux-gnu"
    printf '#!/bin/sh\nexec "%s" --library-path "%s" "%s" "$@"\n' \
      "$PREFIX/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" "$L" "$PREFIX/usr/bin/checkpointctl" \
      > "$BIN/checkpointctl"
    chmod 0755 "$BIN/checkpointctl"
    log "checkpointctl installed at $BIN/checkpointctl"
  else
    log "checkpointctl not available (optional)"
  fi
fi

# runsc (gVisor), for runc-grit's runsc strategy: Debian 13's static build (Debian 12 has
# none). A static binary: it is copied as it is, no loader needed.
RUNSC_PREFIX=${RUNC_GRIT_RUNSC_PREFIX:-/opt/runc-grit/runsc}
if ! command -v runsc >/dev/null 2>&1; then
  [ -x "$RUNSC_PREFIX/usr/bin/runsc" ] || trixie_unpack "$RUNSC_PREFIX" runsc || true
  if [ -x "$RUNSC_PREFIX/usr/bin/runsc" ]; then
    mkdir -p "$BIN"
    ln -sf "$RUNSC_PREFIX/usr/bin/runsc" "$BIN/runsc"
    log "runsc $("$BIN/runsc" --version | head -1 | awk '{print $3}') installed at $BIN/runsc"
  else
    log "ERROR: runsc could not be fetched from Debian 13"; exit 1
  fi
fi

# CRIU locks the network of containers with their own netns through iptables-restore.
for t in iptables-restore ip6tables-restore; do
  command -v "$t" >/dev/null 2>&1 || { log "ERROR: $t missing"; exit 1; }
done
log "ok: runc $(runc --version | head -1 | awk '{print $3}'), criu $(criu --version | sed -n 's/^Version: *//p'), containerd $(containerd --version | awk '{print $3}')"
