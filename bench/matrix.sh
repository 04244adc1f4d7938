#!/bin/bash
# The version matrix: each cell a real run of runc-grit's stack-sensitive tests on one
# combination of runc (or crun), CRIU and containerd, installed by install/stacks.sh into
# private prefixes and selected by putting the stack's bin dir first on PATH.
#
#   bash bench/matrix.sh [CELL ...]        (default: every cell; as root, after bootstrap)
#
# Cells: every version of every component at least once beside the current versions of the
# rest (current = sid: runc 1.3, CRIU 4.2, containerd 2.1), the stacks as the suites ship
# them, and crun 1.28 (+CRIU) in runc's place (RUNC_GRIT_TEST_RUNTIME=crun: runc-grit's config
# says `runtime: crun`, and the direct calls of the tests use crun). In each cell: pass-through lifecycle; checkpoint; restore-on-create into a new id and
# bundle; a chain of two migrations with --leave-running; failed dumps (the source keeps
# running); the bundle reused; through containerd, `ctr` checkpoint + restore by annotation
# and the CRI pod restore with handler grit (and on containerd >= 2.1 the CRI
# CheckpointContainer path); and tests/test_stack.py, which checks that the runc, CRIU and
# containerd that ran are the cell's. Results: bench/results/matrix.md (+ one log per cell).
set -u
cd "$(dirname "$0")/.."
OUT=bench/results
LOGS=${MATRIX_LOGS:-/var/tmp/runc-grit-matrix}
mkdir -p "$OUT" "$LOGS"

# name | install/stacks.sh settings | what the cell must run
CELLS="
debian12|RUNC_GRIT_STACK=debian12|runc=1.1.5 criu=4.1.1 containerd=1.6.20
current|RUNC_GRIT_STACK=current|runc=1.3.6 criu=4.2.1 containerd=2.1.9
next|RUNC_GRIT_STACK=next|runc=1.4.3 criu=4.3 containerd=2.1.9
trixie|RUNC_GRIT_STACK=trixie|runc=1.1.15 criu=4.1.1 containerd=1.7.24
runc1.1|RUNC_GRIT_STACK=current RUNC_GRIT_RUNC=trixie|runc=1.1.15 criu=4.2.1 containerd=2.1.9
runc1.4|RUNC_GRIT_STACK=current RUNC_GRIT_RUNC=experimental|runc=1.4.3 criu=4.2.1 containerd=2.1.9
criu4.1|RUNC_GRIT_STACK=current RUNC_GRIT_CRIU=trixie|runc=1.3.6 criu=4.1.1 containerd=2.1.9
criu4.3|RUNC_GRIT_STACK=current RUNC_GRIT_CRIU=experimental|runc=1.3.6 criu=4.3 containerd=2.1.9
containerd1.6|RUNC_GRIT_STACK=current RUNC_GRIT_CONTAINERD=bookworm|runc=1.3.6 criu=4.2.1 containerd=1.6.20
containerd1.7|RUNC_GRIT_STACK=current RUNC_GRIT_CONTAINERD=trixie|runc=1.3.6 criu=4.2.1 containerd=1.7.24
crun1.28|RUNC_GRIT_STACK=current RUNC_GRIT_TEST_RUNTIME=crun|crun=1.28 criu=4.2.1 containerd=2.1.9
"
TESTS=(
  tests/test_stack.py
  "tests/test_integration_runc.py::test_lifecycle_same_as_runc"
  "tests/test_integration_runc.py::test_checkpoint_and_restore_from_annotation"
  "tests/test_integration_runc.py::test_restore_chain_and_leave_running"
  "tests/test_integration_runc.py::test_restored_container_keeps_its_own_cgroup_namespace_through_a_chain"
  "tests/test_reliability.py::test_checkpoint_fault_leaves_the_source_running"
  "tests/test_dropin.py::test_one_bundle_eight_containers_at_once_then_checkpoint_and_restore"
  "tests/test_containerd.py::test_ctr_checkpoint_then_restore_by_annotation"
  "tests/test_containerd.py::test_cri_pod_restores_from_grit_checkpoint_annotation"
)
[ -e tests/test_cri_checkpoint.py ] && TESTS+=(tests/test_cri_checkpoint.py)
# `bench/matrix.sh --tests`: the list, for a cell run elsewhere (bench/gpu/device_run.sh crun)
if [ "${1:-}" = --tests ]; then printf '%s\n' "${TESTS[@]}"; exit 0; fi

want=" $* "
CELLDIR=$OUT/matrix-cells      # one row per cell, kept between runs
mkdir -p "$CELLDIR"
while IFS='|' read -r name settings expect; do
  [ -n "$name" ] || continue
  [ "$want" = "  " ] || [ "${want/ $name /}" != "$want" ] || continue
  log=$LOGS/$name.log
  echo "== $name: $settings" | tee "$log"
  bin=$(env $settings bash install/stacks.sh 2>>"$log") || {
    echo "| $name | $expect | stack install failed | | |" > "$CELLDIR/$name.md"; continue; }
  t0=$(date +%s)
  # crun cannot run containers on a host with hybrid cgroups (v1 controllers, v2 unified
  # without them): its cell then runs in a private mount namespace whose /sys/fs/cgroup is
  # the cgroup2 hierarchy, as on a cgroup v2 node
  ns=() tests=("${TESTS[@]}") note=
  # crun: also the crun tests of test_runtimes.py (a runc checkpoint restored by crun)
  [ "${settings/RUNC_GRIT_TEST_RUNTIME=crun/}" = "$settings" ] || tests+=(tests/test_runtimes.py)
  if [ "${settings/RUNC_GRIT_TEST_RUNTIME=crun/}" != "$settings" ] &&
     [ "$(stat -fc %T /sys/fs/cgroup)" != cgroup2fs ]; then
    ns=(unshare -m sh -c 'mount --make-rprivate / && mount -t cgroup2 none /sys/fs/cgroup && exec "$@"' sh)
    # containerd's containers ask for the cpu controller, which such a host keeps in v1
    tests=() note="(private mount namespace with cgroup2 at /sys/fs/cgroup; without containerd, whose containers need the cpu controller there, nor the cgroup namespace chain: bench/gpu/device_run.sh crun runs it all on a cgroup v2 host)"
    # nor the cgroup namespace chain: CRIU's cgroup mode for it ("soft") recreates the host's
    # v1 cgroups, which such a namespace does not hide, one level deeper at each restore
    for t in "${TESTS[@]}" tests/test_runtimes.py; do
      case $t in *containerd*|*cri_*|*cgroup_namespace*) ;; *) tests+=("$t") ;; esac
    done
    echo "   $note" | tee -a "$log"
  fi
  env $settings PATH=$bin:$PATH RUNC_GRIT_EXPECT="$expect" CI=true \
    "${ns[@]}" .venv/bin/python -m pytest -v -p no:cacheprovider "${tests[@]}" >>"$log" 2>&1
  rc=$?
  dt=$(( $(date +%s) - t0 ))
  summary=$(tail -1 "$log" | sed 's/=//g; s/^ *//; s/ *$//')
  failed=$(grep -E "^(tests/[^ ]+) (FAILED|ERROR)" "$log" | awk '{print $1}' | sed 's/.*:://' | tr '\n' ' ')
  echo "| $name | $expect | $summary ${note} | ${dt}s | ${failed:-} | $(date -u +%Y-%m-%d) |" > "$CELLDIR/$name.md"
  echo "   $summary (${dt}s)"
done <<<"$CELLS"

{
  echo "# Version matrix ($(uname -r), cgroup $(stat -fc %T /sys/fs/cgroup) at /sys/fs/cgroup)"
  echo
  echo "Each cell: \`bash bench/matrix.sh CELL\` (install/stacks.sh, then the tests below with the"
  echo "stack's bin dir first on PATH; logs in $LOGS). Tests:"
  printf '%s\n' "${TESTS[@]}" | sed 's/^/- /'
  echo
  echo "| cell | runs | result | time | failed | run on |"
  echo "|---|---|---|---|---|---|"
  while IFS='|' read -r name _; do
    [ -n "$name" ] && [ -e "$CELLDIR/$name.md" ] && cat "$CELLDIR/$name.md"
  done <<<"$CELLS"
  # cells run on another machine (bench/gpu/device_run.sh crun), recorded by hand with their log
  cat "$CELLDIR"/*.device.md 2>/dev/null
} > "$OUT/matrix.md"
cat "$OUT/matrix.md"
