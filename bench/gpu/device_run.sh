#!/bin/bash
# Runs the GPU tests and the GPU bench on the device machine (H100/H200, Ubuntu, no network).
# What it needs is carried in .carry/ (build it here with
#   CARRY_STACKS="current next" CARRY_STACK_EXES_next=criu bash bench/gpu/make_carry.sh
# and pass carry=[".carry"]): CRIU 4.1 with its libraries (from Debian 13), Debian's runc
# 1.1.5 .deb (the debian12 stack), the current stack (Debian sid's runc 1.3.6, CRIU 4.2.1,
# containerd 2.1.9), CRIU 4.3 (experimental), pycriu, busybox-static, Debian 12's
# docker-registry (unpacked, its service never started: tests/distribution.py starts its own),
# and wheels.
#   bash bench/gpu/device_run.sh MODE...   MODE: tests (STACK=debian12|current), cri, bench,
#                                          crun (the matrix's crun cell, cgroup v2),
#                                          runtimes (needs CARRY_RUNTIMES=1 in make_carry)
# runc-grit runs as installed: /usr/local/bin/runc-grit, a launcher (python3 -S) for this tree.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
C=$PWD/.carry
# --- the debian12 stack: Debian's runc 1.1.5, CRIU 4.1.1 (Debian 13's, its own loader) --------
mkdir -p /opt/rg && tar -C /opt/rg -xJf "$C/criu.tar.xz" && dpkg -x "$C"/debs/runc_*.deb /opt/rg/runc
mkdir -p /opt/rg/debian12/bin
ln -sf /opt/rg/runc/usr/sbin/runc /opt/rg/debian12/bin/runc
L=/opt/rg/criu/lib
printf '#!/bin/sh\nexec %s/ld-linux-x86-64.so.2 --library-path %s /opt/rg/criu/usr/sbin/criu "$@"\n' $L $L > /opt/rg/debian12/bin/criu
for t in iptables-restore ip6tables-restore; do
  command -v $t >/dev/null || printf '#!/bin/sh\nXTABLES_LIBDIR=/opt/rg/criu/xtables exec %s/ld-linux-x86-64.so.2 --library-path %s /opt/rg/criu/usr/sbin/xtables-legacy-multi %s "$@"\n' $L $L $t > /usr/local/bin/$t
done
chmod +x /opt/rg/debian12/bin/criu /usr/local/bin/*tables-restore 2>/dev/null
# --- the current stack, and CRIU 4.3 --------------------------------------------------------
CURRENT=$(bash bench/gpu/stack_env.sh "$C/stacks/current" | cut -d: -f1)
NEXT=
[ -d "$C/stacks/next" ] && NEXT=$(bash bench/gpu/stack_env.sh "$C/stacks/next" | cut -d: -f1)
# --- pycriu where runc-grit looks for it; busybox for the CRI tests' images; wheels --------
mkdir -p /opt/runc-grit/criu/usr/lib/python3/dist-packages
cp -r "$C"/pycriu/* /opt/runc-grit/criu/usr/lib/python3/dist-packages/
dpkg -x "$C"/extra/busybox-static_*.deb /opt/rg/bb && ln -sf /opt/rg/bb/bin/busybox /bin/busybox
if ls "$C"/extra/docker-registry_*.deb >/dev/null 2>&1; then   # dpkg -x: no service started
  dpkg -x "$C"/extra/docker-registry_*.deb /opt/rg/reg && ln -sf /opt/rg/reg/usr/bin/docker-registry /usr/local/bin/docker-registry
fi
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$C"/whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
PY=$(command -v python3)
"$PY" - "$PY" "$PWD" <<'EOF'
import site, sys
py, repo = sys.argv[1:]
with open("/usr/local/bin/runc-grit", "w") as f:   # what install/make_launcher.py writes
    f.write("#!%s -S\nimport sys\nsys.path[0:0] = %r\nfrom runc_grit.entry import main\n"
            "sys.exit(main())\n" % (py, [repo, "/tmp/site"] + site.getsitepackages()))
EOF
chmod +x /usr/local/bin/runc-grit
export RUNC_GRIT_BIN=/usr/local/bin/runc-grit PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
uname -r; free -g | head -2; df -h /var/tmp /dev/shm | tail -2

stack_path() {
  case $1 in
    debian12) echo "/opt/rg/debian12/bin:$PATH" ;;
    current) echo "$CURRENT:$PATH" ;;
  esac
}

for MODE in "${@:-tests}"; do
  case $MODE in
    tests)
      for S in ${STACK:-debian12}; do
        echo "== GPU tests, stack $S"
        PATH=$(stack_path "$S") bash -c 'runc --version | head -1; criu --version | head -1; runc-grit doctor | grep -E "runtime|criu|privilege|signatures"'
        PATH=$(stack_path "$S") python3 -m pytest -v -s -p no:cacheprovider tests/test_gpu_device.py \
          ${PYTEST_K:+-k "$PYTEST_K"} 2>&1 | tee "$OUT/gpu-tests-$S.log"
      done ;;
    cri)
      echo "== CRI (containerd 2.1.9, runc 1.3.6, CRIU 4.2.1): real GPU, then the CPU and fake-GPU tests"
      PATH=$(stack_path current) python3 -m pytest -v -s -p no:cacheprovider \
        ${CRI_TESTS:-tests/test_gpu_cri.py tests/test_cri_checkpoint.py} 2>&1 | tee "$OUT/gpu-cri-tests.log" ;;
    bench)
      BENCH_CRIUS=${BENCH_CRIUS:-"4.2=$CURRENT/criu${NEXT:+ 4.3=$NEXT/criu}"} \
        PATH=$(stack_path current) python3 bench/gpu/bench_gpu.py "$OUT/gpu-bench.md" \
        ${BENCH_SIZES:-1 4 16} 2>&1 | tee "$OUT/gpu-bench.log" ;;
    crun)  # bench/matrix.sh's crun1.28 cell on a cgroup v2 host (with controllers)
      echo "== matrix cell crun1.28: crun 1.28 (+CRIU), CRIU 4.2.1, containerd 2.1.9; $(stat -fc %T /sys/fs/cgroup)"
      PATH=$(stack_path current) RUNC_GRIT_TEST_RUNTIME=crun \
        RUNC_GRIT_EXPECT="crun=1.28 criu=4.2.1 containerd=2.1.9" \
        python3 -m pytest -v -p no:cacheprovider $(bash bench/matrix.sh --tests) \
        2>&1 | tee "$OUT/crun-cell.log" ;;
    runtimes)
      E=$C/extra
      for d in "$E"/crun_*.deb "$E"/libyajl2_*.deb "$E"/runsc_*.deb; do dpkg -x "$d" /opt/rg/rt; done
      printf '#!/bin/sh\nLD_LIBRARY_PATH=/opt/rg/rt/usr/lib/x86_64-linux-gnu exec /opt/rg/rt/usr/bin/crun "$@"\n' > /usr/local/bin/crun
      chmod +x /usr/local/bin/crun
      ln -sf /opt/rg/rt/usr/bin/runsc /usr/local/bin/runsc
      PATH=$(stack_path debian12) python3 -m pytest -v -p no:cacheprovider tests/test_runtimes.py \
        tests/test_runsc.py ${PYTEST_K:+-k "$PYTEST_K"} 2>&1 | tee "$OUT/runtimes-tests.log" ;;
  esac
done
