#!/bin/bash
# Runs the GPU tests and the GPU bench on the device machine (H100, Ubuntu, no network).
# What it needs is carried in .carry/ (build it with bench/gpu/make_carry.sh): CRIU 4.1 with its libraries (from Debian 13),
# Debian's runc deb, and wheels the image lacks (jsonschema and its deps).
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
if [ "$MODE" = tests ] || [ "$MODE" = all ]; then
  python3 -m pytest -v -s -p no:cacheprovider tests/test_gpu_device.py ${PYTEST_K:+-k "$PYTEST_K"} 2>&1 | tee "$OUT/gpu-tests.log"
fi
if [ "$MODE" = bench ] || [ "$MODE" = all ]; then
  python3 bench/gpu/bench_gpu.py "$OUT/gpu-bench.md" ${BENCH_SIZES:-1 4 16} 2>&1 | tee "$OUT/gpu-bench.log"
fi
