#!/bin/bash
# Builds .carry/, what bench/gpu/device_run.sh needs on the device machine (it has no network):
#   .carry/criu   CRIU 4.1 and xtables-legacy-multi from this machine's private prefix
#                 (install/deps.sh), with the libraries they load, and the xtables modules
#   .carry/debs   Debian's runc .deb
#   .carry/whl    wheels the device's Python 3.12 lacks (jsonschema and its deps, nvidia-ml-py)
# Run here after `sudo bash install/bootstrap.sh`; then pass carry=[".carry"] to the device run.
set -euo pipefail
cd "$(dirname "$0")/../.."
P=/opt/runc-grit/criu
L=$P/usr/lib/x86_64-linux-gnu:$P/lib/x86_64-linux-gnu
C=.carry
rm -rf "$C" && mkdir -p "$C/criu/lib" "$C/criu/usr/sbin" "$C/debs" "$C/whl"
cp "$P/usr/sbin/criu" "$P/usr/sbin/xtables-legacy-multi" "$C/criu/usr/sbin/"
cp -r "$P/usr/lib/x86_64-linux-gnu/xtables" "$C/criu/xtables"
cp -L "$P/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" "$C/criu/lib/"
for bin in "$P/usr/sbin/criu" "$P/usr/sbin/xtables-legacy-multi"; do
  "$P/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" --library-path "$L" --list "$bin" |
    awk '/=> \// {print $3}' | while read -r lib; do cp -L "$lib" "$C/criu/lib/"; done
done
(cd "$C/debs" && apt-get download runc >/dev/null)
# for `device_run.sh runtimes`: Debian 12's crun and static busybox, Debian 13's runsc
mkdir -p "$C/extra"
(cd "$C/extra" && apt-get download crun libyajl2 busybox-static >/dev/null)
. install/trixie.sh
trixie_fetch "$C/extra" runsc
pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
  -d "$C/whl" jsonschema jsonschema-specifications referencing rpds-py nvidia-ml-py
du -sh "$C"
