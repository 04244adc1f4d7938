#!/bin/bash
# Undoes install/install.sh: takes runc-grit's block out of the containerd config (edits made
# to the rest of the file since stay), puts back the k3s template it found, removes the /usr/local/bin/runc-grit link, the config.yaml it wrote
# (if unchanged since), the signing key it made and its signing.pub (keep the .pub to verify
# checkpoints signed with it later) and the venv it made. Public keys given with --trust stay.
# Checkpoints under /var/lib/runc-grit stay.
#   install/uninstall.sh [--destdir DIR] [--restart-containerd] [--keep-key]
#   --keep-key   leave the signing key install.sh made: the node's identity, which its peers
#                trust (the DaemonSet's preStop: a restarted installer keeps the node's key)
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
DESTDIR= RESTART=0 KEEP_KEY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --destdir) DESTDIR=$2; shift 2 ;;
    --restart-containerd) RESTART=1; shift ;;
    --keep-key) KEEP_KEY=1; shift ;;
    *) echo "uninstall.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
REC=$DESTDIR/var/lib/runc-grit/install
BIN=/usr/local/bin/runc-grit
say() { echo "runc-grit uninstall: $*"; }
[ -d "$REC" ] || { say "nothing installed here ($REC missing)"; exit 0; }

python3 "$SRC/install/containerd_merge.py" remove "$DESTDIR/etc/containerd/config.toml" "$REC"
for t in config.toml.tmpl:k3s-tmpl config-v3.toml.tmpl:k3s-tmpl-v3; do  # k3s's templates
  TMPL=$DESTDIR/var/lib/rancher/k3s/agent/etc/containerd/${t%%:*} TREC=$REC/${t#*:}
  if [ -e "$TREC.orig" ]; then cp -a "$TREC.orig" "$TMPL"; rm "$TREC.orig"
  elif [ -e "$TREC-written" ]; then rm -f "$TMPL"; fi
  rm -f "$TREC-written"
done
if [ -L "$DESTDIR$BIN" ]; then rm -f "$DESTDIR$BIN"; fi
if [ -e "$REC/bin.orig" ]; then cp -a "$REC/bin.orig" "$DESTDIR$BIN"; rm "$REC/bin.orig"; fi
KEY=$DESTDIR/etc/runc-grit/signing.key  # the key install.sh made (not one it was given):
PUB=$DESTDIR/etc/runc-grit/signing.pub  # its record is the key file's sha256 (older installs:
if [ -e "$REC/signing.key.made" ]; then  # a copy of the key)
  made=$(cat "$REC/signing.key.made")
  if [ "$KEEP_KEY" = 1 ]; then say "kept /etc/runc-grit/signing.key (--keep-key)"
  elif [ -e "$KEY" ] && { [ "$made" = "sha256:$(sha256sum < "$KEY" | cut -d' ' -f1)" ] ||
                        cmp -s "$REC/signing.key.made" "$KEY"; }; then rm -f "$KEY"
  elif [ -e "$KEY" ]; then say "kept /etc/runc-grit/signing.key (replaced since install)"; fi
  rm -f "$REC/signing.key.made"
fi
if [ -e "$REC/signing.pub.made" ]; then
  if [ "$KEEP_KEY" = 0 ] && cmp -s "$REC/signing.pub.made" "$PUB"; then rm -f "$PUB"; fi
  rm -f "$REC/signing.pub.made"
fi
rmdir "$DESTDIR/etc/runc-grit/trusted.d" 2>/dev/null || true  # trusted keys given stay
CONF=$DESTDIR/etc/runc-grit/config.yaml
if [ -e "$REC/config.yaml.written" ]; then
  if cmp -s "$REC/config.yaml.written" "$CONF"; then rm -f "$CONF"; rmdir "$(dirname "$CONF")" 2>/dev/null || true
  else say "kept /etc/runc-grit/config.yaml (edited since install)"; fi
  rm "$REC/config.yaml.written"
fi
if [ -e "$REC/venv-created" ]; then
  rm -rf "$DESTDIR$(cat "$REC/venv-created")"; rm "$REC/venv-created"
  rmdir "$DESTDIR/opt/runc-grit" 2>/dev/null || true
fi
rmdir "$REC" 2>/dev/null || true
[ "$RESTART" = 1 ] && systemctl restart containerd && say "containerd restarted"
say "done"
