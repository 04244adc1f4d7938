#!/bin/bash
# Runs the GPU tests and the GPU bench on the device machine (H100, Ubuntu, no network).
# What it needs is carried in .carry/ (build it with bench/gpu/make_carry.sh): CRIU 4.1 with its libraries (from Debian 13),
# Debian's runc deb, and wheels the image lacks (jsonschema and its deps).
# `device_run.sh runtimes` also needs .carry/extra (crun, libyajl2, busybox-static, runsc .debs).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
C=$PWD/.carry
mkdir -p /opt/rg && cp -r "$C/criu" /opt/rg/ && dpkg -x "$C"/debs/runc_*.deb /opt/rg/runc
ln -sf /opt/rg/runc/usr/sbin/runc /usr/local/bin/runc
L=/opt/rg/criu/lib
printf '#!/bin/sh\nexec %s/ld-linux-x86-64.so.2 --library-path %s /opt/rg/criu/usr/sbin/criu "$@"\n' $L $L > /usr/local/bin/criu
for t in iptables-restore ip6tables-restore; do
  command -v $t >/dev/null || printf '#!/bin/sh\nXTABLES_LIBDIR=/opt/rg/criu/xtables exec %s/ld-linux-x86-64.so.2 --library-path %s /opt/rg/criu/usr/sbin/xtables-legacy-multi %s "$@"\n' $L $L $t > /usr/local/bin/$t
done
chmod +x /usr/local/bin/criu /usr/local/bin/*tables-restore
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$C"/whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
criu --version; criu check; runc --version | head -1; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -m runc_grit doctor
MODE=${1:-tests}
if [ "$MODE" = runtimes ]; then
  # the other delegate runtimes on this host: Debian 12's crun (with libyajl2) and Debian 13's
  # runsc from .carry/extra, static busybox for the test bundles
  E=$C/extra
  for d in "$E"/crun_*.deb "$E"/libyajl2_*.deb "$E"/runsc_*.deb; do dpkg -x "$d" /opt/rg/rt; done
  printf '#!/bin/sh\nLD_LIBRARY_PATH=/opt/rg/rt/usr/lib/x86_64-linux-gnu exec /opt/rg/rt/usr/bin/crun "$@"\n' > /usr/local/bin/crun
  chmod +x /usr/local/bin/crun
  ln -sf /opt/rg/rt/usr/bin/runsc /usr/local/bin/runsc
  dpkg -i --force-all "$E"/busybox-static_*.deb >/dev/null 2>&1 || true
  stat -fc 'cgroup fs: %T' /sys/fs/cgroup; uname -r; crun --version | head -3; runsc --version | head -1
  python3 -m pytest -v -p no:cacheprovider tests/test_runtimes.py tests/test_runsc.py \
    ${PYTEST_K:+-k "$PYTEST_K"} 2>&1 | tee "$OUT/runtimes-tests.log"
fi
if [ "$MODE" = tests ] || [ "$MODE" = all ]; then
  python3 -m pytest -v -s -p no:cacheprovider tests/test_gpu_device.py ${PYTEST_K:+-k "$PYTEST_K"} 2>&1 | tee "$OUT/gpu-tests.log"
fi
if [ "$MODE" = bench ] || [ "$MODE" = all ]; then
  python3 bench/gpu/bench_gpu.py "$OUT/gpu-bench.md" ${BENCH_SIZES:-1 4 16} 2>&1 | tee "$OUT/gpu-bench.log"
fi
