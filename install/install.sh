#!/bin/bash
# Installs runc-grit on a node: a venv, /usr/local/bin/runc-grit, /etc/runc-grit/config.yaml
# (only if absent), and containerd's runtime handler "grit", appended to config.toml between
# marker lines: nothing else in that file changes, and uninstall.sh takes the block out again.
# Running it twice changes nothing. containerd is restarted only with --restart-containerd.
#
#   install/install.sh [--destdir DIR] [--venv DIR] [--containerd-version 1|2] [--k3s]
#                      [--restart-containerd] [--no-doctor]
#   --destdir DIR   install into a scratch root (tests, image builds); implies --no-doctor
#   --venv DIR      use this existing venv (with runc-grit installed) instead of making one
#   --k3s           also write k3s's config.toml.tmpl (k3s regenerates config.toml)
# Needs: python3 (>= 3.9) with venv; the runtime dependencies are installed by
# install/deps.sh (runc, CRIU >= 4.1, iptables), which this script does not run.
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
DESTDIR= VENV= CTRD_VERSION= K3S=0 RESTART=0 DOCTOR=1
while [ $# -gt 0 ]; do
  case "$1" in
    --destdir) DESTDIR=$2; DOCTOR=0; shift 2 ;;
    --venv) VENV=$2; shift 2 ;;
    --containerd-version) CTRD_VERSION=$2; shift 2 ;;
    --k3s) K3S=1; shift ;;
    --restart-containerd) RESTART=1; shift ;;
    --no-doctor) DOCTOR=0; shift ;;
    *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
PREFIX=/opt/runc-grit
REC=$DESTDIR/var/lib/runc-grit/install        # what uninstall.sh needs
BIN=/usr/local/bin/runc-grit
mkdir -p "$REC"
say() { echo "runc-grit install: $*"; }

# 1. the venv and its launcher (python -S, no site scan on the runc path)
if [ -z "$VENV" ]; then
  VENV=$PREFIX/venv
  if [ ! -x "$DESTDIR$VENV/bin/python" ]; then
    python3 -m venv "$DESTDIR$VENV"
    echo "$VENV" > "$REC/venv-created"
  fi
  "$DESTDIR$VENV/bin/python" -m pip install -q --disable-pip-version-check "$SRC"
  "$DESTDIR$VENV/bin/python" "$SRC/install/make_launcher.py" "$DESTDIR$VENV/bin/runc-grit"
fi
mkdir -p "$DESTDIR/usr/local/bin"
if [ "$(readlink "$DESTDIR$BIN" 2>/dev/null)" != "$VENV/bin/runc-grit" ]; then
  [ -e "$DESTDIR$BIN" ] && [ ! -e "$REC/bin.orig" ] && cp -a "$DESTDIR$BIN" "$REC/bin.orig"
  ln -sfn "$VENV/bin/runc-grit" "$DESTDIR$BIN"
  say "linked $BIN -> $VENV/bin/runc-grit"
fi

# 2. the node config, only if absent
CONF=$DESTDIR/etc/runc-grit/config.yaml
if [ ! -e "$CONF" ]; then
  mkdir -p "$(dirname "$CONF")" "$DESTDIR/var/lib/runc-grit/checkpoints"
  cat > "$CONF" <<'EOF'
# runc-grit node configuration (keys: README.md, "Configuration")
runtime: runc
# gVisor instead (README.md, "gVisor (runsc)"): runtime: runsc, and the flags runsc needs
# on every call as a one-line list, e.g. runtime_flags: [--nvproxy]
criu: criu
checkpoint_roots:
  - /var/lib/runc-grit/checkpoints
state_dir: /run/runc-grit
on_restore_failure: fail
EOF
  cp "$CONF" "$REC/config.yaml.written"
  say "wrote /etc/runc-grit/config.yaml"
fi

# 3. containerd: the runtime tables, appended to config.toml between marker lines
if [ -z "$CTRD_VERSION" ]; then
  CTRD_VERSION=1
  if command -v containerd >/dev/null; then
    case "$(containerd --version 2>/dev/null | awk '{print $3}')" in v2*|2*) CTRD_VERSION=2 ;; esac
  fi
fi
python3 "$SRC/install/containerd_merge.py" add "$DESTDIR/etc/containerd/config.toml" \
  "$SRC/containerd-config/containerd-$CTRD_VERSION.x.toml" "$REC"

# 4. k3s regenerates its config.toml; its template is the place that survives
if [ "$K3S" = 1 ]; then
  TMPL=$DESTDIR/var/lib/rancher/k3s/agent/etc/containerd/config.toml.tmpl
  mkdir -p "$(dirname "$TMPL")"
  if ! cmp -s "$SRC/containerd-config/k3s-config.toml.tmpl" "$TMPL"; then
    [ -e "$TMPL" ] && [ ! -e "$REC/k3s-tmpl.orig" ] && cp -a "$TMPL" "$REC/k3s-tmpl.orig"
    cp "$SRC/containerd-config/k3s-config.toml.tmpl" "$TMPL"
    touch "$REC/k3s-tmpl-written"
    say "wrote k3s config.toml.tmpl (restart k3s to apply)"
  fi
fi

if [ "$DOCTOR" = 1 ]; then
  "$BIN" doctor || say "doctor reports blockers (above); runc-grit passes commands through meanwhile"
fi
if [ "$RESTART" = 1 ]; then
  systemctl restart containerd && say "containerd restarted"
else
  say "done; restart containerd to load the grit runtime (or rerun with --restart-containerd)"
fi
