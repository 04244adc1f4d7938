#!/bin/bash
# Installs runc-grit on a node: a venv, /usr/local/bin/runc-grit, /etc/runc-grit/config.yaml
# (only if absent), and containerd's runtime handler "grit", appended to config.toml between
# marker lines: nothing else in that file changes, and uninstall.sh takes the block out again.
# Running it twice changes nothing. containerd is restarted only with --restart-containerd.
#
#   install/install.sh [--destdir DIR] [--venv DIR] [--containerd-version 1|2] [--k3s]
#                      [--signing-key FILE] [--trust FILE]... [--restart-containerd] [--no-doctor]
#   --destdir DIR   install into a scratch root (tests, image builds); implies --no-doctor
#   --venv DIR      use this existing venv (with runc-grit installed) instead of making one
#   --containerd-version 1|2   the containerd the tables are for (default: `containerd --version`,
#                   else 1): 1 = config version 2 tables; 2 = version 3 tables, or the version 2
#                   ones when the node's config.toml is still version 2 (containerd 2.x migrates it)
#   --k3s           also write k3s's template (k3s regenerates config.toml): config.toml.tmpl
#                   (version 2) for containerd 1.x, config-v3.toml.tmpl for containerd 2.x
#   --signing-key FILE  install this private key as the node's signing key (default: keep the
#                   one there, else make an Ed25519 pair, signing.key + signing.pub)
#   --trust FILE    (repeatable) trust this public key: copied into /etc/runc-grit/trusted.d/,
#                   so checkpoints its node signed restore here
# Needs: python3 (>= 3.9) with venv; the runtime dependencies are installed by
# install/deps.sh (runc, CRIU >= 4.1, iptables), which this script does not run.
set -euo pipefail
# the caller's import path must not end up in the launcher (it names the dirs runc_grit and
# its deps were found in): a PYTHONPATH pointing at a source tree would make every later call
# run that tree
unset PYTHONPATH PYTHONHOME PYTHONUSERBASE
SRC=$(cd "$(dirname "$0")/.." && pwd)
DESTDIR= VENV= CTRD_VERSION= K3S=0 RESTART=0 DOCTOR=1 SIGNING_KEY= TRUST=()
while [ $# -gt 0 ]; do
  case "$1" in
    --destdir) DESTDIR=$2; DOCTOR=0; shift 2 ;;
    --venv) VENV=$2; shift 2 ;;
    --containerd-version) CTRD_VERSION=$2; shift 2 ;;
    --k3s) K3S=1; shift ;;
    --restart-containerd) RESTART=1; shift ;;
    --no-doctor) DOCTOR=0; shift ;;
    --signing-key) SIGNING_KEY=$2; shift 2 ;;
    --trust) TRUST+=("$2"); shift 2 ;;
    *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
PREFIX=/opt/runc-grit
REC=$DESTDIR/var/lib/runc-grit/install        # what uninstall.sh needs
BIN=/usr/local/bin/runc-grit
mkdir -p "$REC"
say() { echo "runc-grit install: $*"; }

# 1. the venv and its launcher (python -S, no site scan on the runc path). The launcher is
# runc-grit-node beside pip's console script: pip removes and rewrites its own script on every
# upgrade, and containerd calling runc-grit in that moment would find nothing; the launcher is
# only ever replaced atomically (make_launcher.py), and so is the link to it.
LAUNCHER=${VENV:+$VENV/bin/runc-grit}
if [ -z "$VENV" ]; then
  VENV=$PREFIX/venv
  LAUNCHER=$VENV/bin/runc-grit-node
  if [ ! -x "$DESTDIR$VENV/bin/python" ]; then
    python3 -m venv "$DESTDIR$VENV"
    echo "$VENV" > "$REC/venv-created"
  fi
  "$DESTDIR$VENV/bin/python" -m pip install -q --disable-pip-version-check "$SRC"
  "$DESTDIR$VENV/bin/python" "$SRC/install/make_launcher.py" "$DESTDIR$LAUNCHER"
fi
mkdir -p "$DESTDIR/usr/local/bin"
if [ "$(readlink "$DESTDIR$BIN" 2>/dev/null)" != "$LAUNCHER" ]; then
  case "$(readlink "$DESTDIR$BIN" 2>/dev/null)" in
    "$VENV"/*) ;;  # an earlier install's link: not the machine's original
    *) [ -e "$DESTDIR$BIN" ] && [ ! -e "$REC/bin.orig" ] && cp -a "$DESTDIR$BIN" "$REC/bin.orig" ;;
  esac
  ln -sfn "$LAUNCHER" "$DESTDIR$BIN.tmp.$$" && mv -Tf "$DESTDIR$BIN.tmp.$$" "$DESTDIR$BIN"
  say "linked $BIN -> $LAUNCHER"
fi

# 2. the node's own signing key (Ed25519, 0600, root): its checkpoints are signed with it;
# restores verify with the public keys the node trusts (trusted.d/*.pub, and its own). The
# records keep no copy of a private key: only the sha256 of the key file install made, so
# that uninstall.sh removes that key and no other.
KEY=/etc/runc-grit/signing.key PUB=/etc/runc-grit/signing.pub TRUSTD=/etc/runc-grit/trusted.d
mkdir -p "$DESTDIR/etc/runc-grit"
mkdir -p -m 755 "$DESTDIR$TRUSTD"
PY=$DESTDIR$VENV/bin/python
[ -x "$PY" ] || PY=$VENV/bin/python   # --venv names a venv outside the destdir
sha() { sha256sum < "$1" | cut -d' ' -f1; }
if [ -e "$REC/signing.key.made" ] && ! grep -q '^sha256:' "$REC/signing.key.made"; then
  # an older install.sh kept a copy of the key it made: keep only its sha256
  echo "sha256:$(sha "$REC/signing.key.made")" > "$REC/signing.key.made.tmp"
  mv -f "$REC/signing.key.made.tmp" "$REC/signing.key.made"
fi
if [ -n "$SIGNING_KEY" ]; then
  if ! cmp -s "$SIGNING_KEY" "$DESTDIR$KEY"; then
    (umask 077; cp "$SIGNING_KEY" "$DESTDIR$KEY.tmp") && chmod 600 "$DESTDIR$KEY.tmp" &&
      mv -f "$DESTDIR$KEY.tmp" "$DESTDIR$KEY"
    # the public key install made belongs to the key this one replaced
    if [ -e "$REC/signing.pub.made" ] && cmp -s "$REC/signing.pub.made" "$DESTDIR$PUB"; then
      rm -f "$DESTDIR$PUB" "$REC/signing.pub.made"
    fi
    say "installed the signing key from $SIGNING_KEY at $KEY (id $("$PY" -m runc_grit key-id "$DESTDIR$KEY"))"
  fi
elif [ ! -e "$DESTDIR$KEY" ]; then
  TMPK=$(mktemp -d "$DESTDIR/etc/runc-grit/.keygen.XXXXXX")
  "$PY" -m runc_grit keygen --out "$TMPK" >/dev/null
  mv -f "$TMPK/signing.pub" "$DESTDIR$PUB"
  mv -f "$TMPK/signing.key" "$DESTDIR$KEY"
  rmdir "$TMPK"
  echo "sha256:$(sha "$DESTDIR$KEY")" > "$REC/signing.key.made"
  cp "$DESTDIR$PUB" "$REC/signing.pub.made"
  say "made an Ed25519 signing key at $KEY (id $("$PY" -m runc_grit key-id "$DESTDIR$PUB")); nodes" \
      "that restore this node's checkpoints trust $PUB (install.sh --trust)"
fi
for t in ${TRUST[@]+"${TRUST[@]}"}; do
  if grep -q "PRIVATE KEY" "$t" || ! "$PY" -m runc_grit key-id "$t" >/dev/null 2>&1 ||
     ! grep -q "BEGIN PUBLIC KEY" "$t"; then
    echo "install.sh: --trust $t: not a PEM public key (runc-grit keygen writes signing.pub)" >&2
    exit 2
  fi
  name=$(basename "$t"); name=${name%.pub}.pub
  install -m 644 "$t" "$DESTDIR$TRUSTD/$name"
  say "trusts $TRUSTD/$name (key $("$PY" -m runc_grit key-id "$t"))"
done

# 3. the node config, only if absent
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
# restores run CRIU as root on files a pod points at (docs/security.md):
signing_key: /etc/runc-grit/signing.key     # this node's own Ed25519 private key (signs)
trusted_keys: [/etc/runc-grit/trusted.d]    # *.pub of the nodes whose checkpoints restore here
require_signature: true      # false allows unsigned restores: an explicit choice doctor warns about
privilege_check: enforce     # the image's credentials, capabilities, seccomp, namespaces vs the spec
staging: auto                # in place from a root-only local root; a copy from anything else
EOF
  cp "$CONF" "$REC/config.yaml.written"
  say "wrote /etc/runc-grit/config.yaml"
fi

# 4. containerd: the runtime tables, appended to config.toml between marker lines
if [ -z "$CTRD_VERSION" ]; then
  CTRD_VERSION=1
  if command -v containerd >/dev/null; then
    case "$(containerd --version 2>/dev/null | awk '{print $3}')" in v2*|2*) CTRD_VERSION=2 ;; esac
  fi
fi
case "$CTRD_VERSION" in
  1|2) ;; *) echo "install.sh: --containerd-version is 1 or 2" >&2; exit 2 ;;
esac
CTRD_CONF=$DESTDIR/etc/containerd/config.toml
DROPIN=$SRC/containerd-config/containerd-$CTRD_VERSION.x.toml
# containerd 2.x still reads a version 2 config.toml (it migrates it when it loads it): such a
# file gets the version 2 tables, which 2.x migrates along with the rest of the file
if [ "$CTRD_VERSION" = 2 ] &&
   [ "$(python3 "$SRC/install/containerd_merge.py" version "$CTRD_CONF")" = 2 ]; then
  DROPIN=$SRC/containerd-config/containerd-1.x.toml
fi
python3 "$SRC/install/containerd_merge.py" add "$CTRD_CONF" "$DROPIN" "$REC"

# 5. k3s regenerates its config.toml; its template is the place that survives. k3s with
# containerd 2.x (k3s >= 1.31.6 / 1.32.2) renders config-v3.toml.tmpl (config version 3) and
# falls back to config.toml.tmpl (version 2) only when there is none; k3s with containerd 1.x
# reads config.toml.tmpl alone. uninstall.sh puts back what was there (REC/<name>.orig).
if [ "$K3S" = 1 ]; then
  if [ "$CTRD_VERSION" = 2 ]; then
    TNAME=config-v3.toml.tmpl TSRC=k3s-config-v3.toml.tmpl TREC=k3s-tmpl-v3
  else
    TNAME=config.toml.tmpl TSRC=k3s-config.toml.tmpl TREC=k3s-tmpl
  fi
  TMPL=$DESTDIR/var/lib/rancher/k3s/agent/etc/containerd/$TNAME
  mkdir -p "$(dirname "$TMPL")"
  if ! cmp -s "$SRC/containerd-config/$TSRC" "$TMPL"; then
    [ -e "$TMPL" ] && [ ! -e "$REC/$TREC.orig" ] && cp -a "$TMPL" "$REC/$TREC.orig"
    cp "$SRC/containerd-config/$TSRC" "$TMPL"
    touch "$REC/$TREC-written"
    say "wrote k3s $TNAME (restart k3s to apply)"
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
