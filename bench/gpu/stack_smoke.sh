#!/bin/bash
# stack_smoke.sh BIN [WORK]: smoke test of a runtime stack whose executables are in BIN (a bin
# dir of install/stacks.sh, or the PATH head bench/gpu/stack_env.sh prints), with BIN first on
# PATH as a node would have it:
#   1. criu check;
#   2. runc ($RUNTIME, e.g. crun, instead): a busybox counter (`runc run -d`, stdout a pipe), `runc checkpoint`, `runc restore -d`
#      into a new id: the counter must continue; which CRIU wrote dump.log; how many times each
#      CRIU action-script hook ran (a CRIU config named by the annotation org.criu.config);
#   3. containerd (when BIN has containerd, the shim and ctr): a private instance (own root,
#      state, socket; config version 3 for containerd 2.x, 2 for 1.x), `ctr images import` of a
#      busybox OCI archive (built here, as tests/ctrd.py does), `ctr run -d` through the runc v2 shim,
#      `ctr task exec`, `ctr task checkpoint --exit`.
# Needs a static busybox ($BUSYBOX, else /bin/busybox). Cleans up its containers, mounts and
# processes. Exit code: 0 when every step passed.
set -u
BIN=$(cd "${1:?usage: stack_smoke.sh BIN [WORK]}" && pwd)
W=${2:-$(mktemp -d /tmp/stack-smoke.XXXXXX)}
BUSYBOX=${BUSYBOX:-/bin/busybox}
export PATH=$BIN:$PATH
TAG=smoke$$
FAIL=0
say() { printf '[smoke] %s\n' "$*"; }
bad() { printf '[smoke] FAIL: %s\n' "$*"; FAIL=1; }
secs() { python3 -c "import time; print('%.2f' % (time.time() - $1))"; }
mkdir -p "$W"
W=$(cd "$W" && pwd); BUSYBOX=$(readlink -f "$BUSYBOX")
cd "$W"    # a relative CRIU log-file (e.g. from /etc/criu/default.conf) lands here

say "runtime: $(${RUNTIME:-runc} --version | head -1); criu: $(criu --version | sed -n 's/^Version: *//p'); kernel $(uname -r); /sys/fs/cgroup: $(stat -fc %T /sys/fs/cgroup)"
criu check >"$W/criu-check.log" 2>&1 && say "criu check: $(tail -1 "$W/criu-check.log")" || bad "criu check: $(tail -3 "$W/criu-check.log" | tr '\n' ' ')"

# --- runc ---
RT=${RUNTIME:-runc}
# crun 1.24-1.28 cannot restore a container with masked directories under a non-default --root
# (containers/crun#2239), so crun gets its default root
R=$W/runc-root; [ "$RT" != crun ] || R=/run/crun
B=$W/bundle
mkdir -p "$R" "$B/rootfs/bin" "$B/rootfs/proc" "$B/rootfs/dev" "$B/rootfs/sys" "$B/rootfs/tmp" "$W/work" "$W/work-r"
cp "$BUSYBOX" "$B/rootfs/bin/busybox"; for a in sh echo sleep cat; do ln -sf busybox "$B/rootfs/bin/$a"; done
printf '#!/bin/sh\necho "$CRTOOLS_SCRIPT_ACTION" >> %s/hooks.log\n' "$W" > "$W/hook.sh"; chmod +x "$W/hook.sh"
printf 'action-script %s/hook.sh\n' "$W" > "$W/criu.conf"
(cd "$B" && runc spec 2>/dev/null || crun spec)
python3 - "$B/config.json" "$W/criu.conf" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1]))
c["process"]["terminal"] = False
c["process"]["args"] = ["sh", "-c", 'i=0; while true; do i=$((i+1)); echo "$i"; sleep 0.3; done']
c["annotations"] = {"org.criu.config": sys.argv[2]}
json.dump(c, open(sys.argv[1], "w"))
EOF
A=$TAG-a; Z=$TAG-b
$RT --root "$R" run -d --bundle "$B" "$A" 2> >(cat > "$W/run.err") | cat > "$W/out-a.log" &
CAT_A=$!
sleep 2
if $RT --root "$R" state "$A" 2>/dev/null | grep -q '"running"'; then
  say "$RT run -d: running, output so far: $(tail -1 "$W/out-a.log")"
  t=$(date +%s.%N)
  if $RT --root "$R" checkpoint --image-path "$W/img" --work-path "$W/work" "$A" 2>"$W/ckpt.err"; then
    say "$RT checkpoint: ok in $(secs "$t") s, dump.log: $(grep -m1 'Version:' "$W/work/dump.log" | sed 's/.*Version: //')"
    wait $CAT_A 2>/dev/null
    last=$(tail -1 "$W/out-a.log")
    say "hooks per dump: $(sort "$W/hooks.log" | uniq -c | tr -s ' ' | tr '\n' ',')"
    : > "$W/hooks.log"
    t=$(date +%s.%N)
    $RT --root "$R" restore -d --image-path "$W/img" --work-path "$W/work-r" --bundle "$B" "$Z" \
      2> >(cat > "$W/restore.err") | cat > "$W/out-b.log" &
    CAT_B=$!
    for _ in $(seq 100); do $RT --root "$R" state "$Z" >/dev/null 2>&1 && break; sleep 0.1; done
    say "$RT restore -d: returned after $(secs "$t") s"
    sleep 2
    first=$(head -1 "$W/out-b.log")
    if [ -n "$first" ] && [ "$first" = "$((last + 1))" ]; then
      say "RESUMED: $Z continued at $first after $last (now $(tail -1 "$W/out-b.log"))"
    else
      bad "restore: first '$first' after '$last': $(tail -3 "$W/restore.err" | tr '\n' ' ')"
    fi
    say "hooks per restore: $(sort "$W/hooks.log" | uniq -c | tr -s ' ' | tr '\n' ',')"
    pid=$($RT --root "$R" state "$Z" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])' 2>/dev/null)
    [ -z "$pid" ] || say "restored cgroup: $(grep -E '^0::|freezer' /proc/$pid/cgroup | tr '\n' ' ')"
    $RT --root "$R" kill "$Z" KILL 2>/dev/null; sleep 0.5; $RT --root "$R" delete -f "$Z" 2>/dev/null
    wait $CAT_B 2>/dev/null
  else
    bad "$RT checkpoint: $(grep Error "$W/work/dump.log" 2>/dev/null | head -3 | tr '\n' ' ') $(tail -2 "$W/ckpt.err" | tr '\n' ' ')"
  fi
else
  bad "$RT run: $(cat "$W/run.err")"
fi
$RT --root "$R" delete -f "$A" 2>/dev/null
wait $CAT_A 2>/dev/null

# --- containerd ---
if [ -z "${RUNTIME:-}" ] && [ -x "$BIN/containerd" ] && [ -x "$BIN/containerd-shim-runc-v2" ] && [ -x "$BIN/ctr" ]; then
  D=$W/ctrd; S=$D/c.sock; NS=$TAG; mkdir -p "$D"
  major=$(containerd --version | awk '{print $3}' | sed 's/^v//; s/\..*//')
  cat > "$D/config.toml" <<EOF
version = $([ "$major" -ge 2 ] && echo 3 || echo 2)
root = "$D/root"
state = "$D/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$S"
[ttrpc]
  address = "$S.ttrpc"
[metrics]
  address = ""
EOF
  # a one-layer OCI image archive of a busybox rootfs, as the tests build one
  PYTHONPATH="$(cd "$(dirname "$0")/../.." && pwd)/tests:$(cd "$(dirname "$0")/../.." && pwd)" python3 -c \
    "import sys; from ctrd import build_image_archive; build_image_archive(sys.argv[1], 'docker.io/library/smoke-busybox:1')" \
    "$W/image.tar" || bad "image archive"
  t=$(date +%s.%N)
  containerd --config "$D/config.toml" > "$D/containerd.log" 2>&1 &
  CPID=$!
  for _ in $(seq 100); do ctr -a "$S" version >/dev/null 2>&1 && break; sleep 0.1; done
  if ctr -a "$S" version >/dev/null 2>&1; then
    say "containerd $(containerd --version | awk '{print $3}') up in $(secs "$t") s (config version $([ "$major" -ge 2 ] && echo 3 || echo 2))"
    c() { ctr -a "$S" -n "$NS" "$@"; }
    c images import "$W/image.tar" >/dev/null 2>"$D/import.err" && say "ctr images import: ok" || bad "ctr images import: $(cat "$D/import.err")"
    if c run -d docker.io/library/smoke-busybox:1 c1 sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/n; sleep 0.3; done' 2>"$D/run.err"; then
      sleep 1.5
      shim=$(pgrep -f "containerd-shim-runc-v2.*$S" | head -1)
      say "ctr run: $(c task ls | awk 'NR==2{print $3}'), shim $(readlink /proc/$shim/exe 2>/dev/null), state per the stack's runc: $(runc --root /run/containerd/runc/$NS list 2>/dev/null | awk 'NR==2{print $3}')"
      say "ctr task exec: counter at $(c task exec --exec-id e1 c1 cat /tmp/n 2>&1)"
      if c task checkpoint --exit --image-path "$D/ckpt" --work-path "$D/work" c1 2>"$D/ckpt.err"; then
        say "ctr task checkpoint --exit: ok, $(ls "$D/ckpt" | wc -l) image files, dump.log: $(grep -m1 'Version:' "$D/work/dump.log" | sed 's/.*Version: //')"
      else
        bad "ctr task checkpoint: $(tail -3 "$D/ckpt.err" | tr '\n' ' ')"
      fi
    else
      bad "ctr run: $(cat "$D/run.err")"
    fi
    for t in $(c task ls -q 2>/dev/null); do c task kill -s SIGKILL "$t"; done; sleep 0.5
    for t in $(c task ls -q 2>/dev/null); do c task delete -f "$t" >/dev/null; done
    for t in $(c container ls -q 2>/dev/null); do c container rm "$t"; done
    c images rm docker.io/library/smoke-busybox:1 >/dev/null 2>&1
  else
    bad "containerd did not start: $(tail -5 "$D/containerd.log")"
  fi
  kill "$CPID" 2>/dev/null; wait "$CPID" 2>/dev/null
  umount -R "$D/root" 2>/dev/null
  rmdir "/run/containerd/runc/$NS" 2>/dev/null
fi
# the cgroups runc and the shim made for these containers (empty once the tasks are gone)
for d in /sys/fs/cgroup/$TAG* /sys/fs/cgroup/*/$TAG* /sys/fs/cgroup/*/*/$TAG* /sys/fs/cgroup/*/*/*/$TAG*; do
  [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null
done
[ $FAIL = 0 ] && say "ALL OK ($W)" || say "SOME STEPS FAILED ($W)"
exit $FAIL
