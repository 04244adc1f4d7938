#!/bin/bash
# Builds .carry/, what bench/gpu/device_run.sh needs on the device machine (it has no network):
#   .carry/criu   CRIU 4.1 and xtables-legacy-multi from this machine's private prefix
#                 (install/deps.sh), with the libraries they load, and the xtables modules
#   .carry/debs   Debian's runc .deb
#   .carry/whl    wheels the device's Python 3.12 lacks or has in other versions (jsonschema,
#                 cryptography and its deps; requests, urllib3, idna, charset-normalizer,
#                 certifi; grpcio, grpcio-tools and protobuf as this machine's venv has them,
#                 for the CRI tests' client)
#   .carry/pycriu CRIU's pycriu with its pure-Python protobuf (the privilege check reads images
#                 with it)
#   .carry/extra  Debian 12's busybox-static (the CRI tests' images) and docker-registry (the
#                 registry bench; tests/distribution.py has the test password's bcrypt line
#                 for machines without htpasswd); with CARRY_RUNTIMES=1 also
#                 crun, libyajl2 and Debian 13's runsc (`device_run.sh runtimes`)
#   .carry/stacks/<name>  only with CARRY_STACKS="current" (names of install/stacks.sh): that
#                 stack's executables (CARRY_STACK_EXES_<name>, else CARRY_STACK_EXES, default runc criu containerd
#                 containerd-shim-runc-v2 ctr crun) with the libraries and the loader they load,
#                 as stack.tar.xz. The executables are patchelf'd for /opt/rg/stacks/<name>
#                 (interpreter and RPATH are absolute: runc re-executes itself, also from a memfd
#                 copy, where $ORIGIN would not work); bench/gpu/stack_env.sh unpacks them there
#                 on the device and prints the PATH to use.
# Run here after `sudo bash install/bootstrap.sh`; then pass carry=[".carry"] to the device run.
# CARRY_ONLY_STACKS=1 rebuilds .carry/stacks only, keeping the rest of .carry.
set -euo pipefail
cd "$(dirname "$0")/../.."
P=/opt/runc-grit/criu
L=$P/usr/lib/x86_64-linux-gnu:$P/lib/x86_64-linux-gnu
C=.carry
carry_stack() {   # NAME: .carry/stacks/NAME/{stack.tar.xz,DEST,versions}
  local name=$1 bin dest=/opt/rg/stacks/$1 out=$C/stacks/$1 w exe real prefix ld L lib pe
  bin=$(bash install/stacks.sh "$name")
  pe=$(command -v patchelf || echo /opt/runc-grit/pkgs/bookworm-patchelf/usr/bin/patchelf)
  w=$(mktemp -d); mkdir -p "$w/bin" "$w/lib"
  local pairs=() p
  local exes_var=CARRY_STACK_EXES_${name//[^a-zA-Z0-9]/_}
  local exes=${!exes_var:-${CARRY_STACK_EXES:-runc criu containerd containerd-shim-runc-v2 ctr crun}}
  for exe in $exes; do
    real=$(readlink -f "$bin/$exe"); pairs+=("$exe=$real")
    # CRIU's helper `ip` (iproute2; the device has none): CRIU runs it for a network namespace
    # with more than a loopback (crun's containers)
    [ "$exe" != criu ] || [ ! -x "${real%/*}/ip" ] || pairs+=("ip=${real%/*}/ip")
  done
  for p in "${pairs[@]}"; do
    exe=${p%%=*}; real=${p#*=}; prefix=${real%/grit-bin/*}
    cp "$real" "$w/bin/$exe"
    "$pe" --print-interpreter "$real" >/dev/null 2>&1 || continue      # static: as it is
    ld=$("$pe" --print-interpreter "$real")
    L=$prefix/usr/lib/x86_64-linux-gnu:$prefix/lib/x86_64-linux-gnu
    # the libraries it loads, and the ones it dlopens (crun: libcriu)
    { "$ld" --library-path "$L" --list "$real"
      [ "$exe" != crun ] || "$ld" --library-path "$L" --list "$prefix/usr/lib/x86_64-linux-gnu/libcriu.so.2"
      [ "$exe" != crun ] || echo " libcriu.so.2 => $prefix/usr/lib/x86_64-linux-gnu/libcriu.so.2 (0)"
    } | awk '/=> \// {print $3}' | while read -r lib; do
      if [ -e "$w/lib/${lib##*/}" ] && ! cmp -s "$lib" "$w/lib/${lib##*/}"; then
        echo "make_carry: two different ${lib##*/} in stack $name" >&2; exit 1
      fi
      cp -L "$lib" "$w/lib/"
    done
    if [ -e "$w/lib/ld-linux-x86-64.so.2" ] && ! cmp -s "$ld" "$w/lib/ld-linux-x86-64.so.2"; then
      echo "make_carry: two different loaders in stack $name" >&2; exit 1
    fi
    cp -L "$ld" "$w/lib/ld-linux-x86-64.so.2"
    # glibc dlopens libgcc_s for unwinding (abort backtraces, pthread_cancel)
    [ ! -e "$prefix/usr/lib/x86_64-linux-gnu/libgcc_s.so.1" ] || cp -L "$prefix/usr/lib/x86_64-linux-gnu/libgcc_s.so.1" "$w/lib/"
    "$pe" --set-interpreter "$dest/lib/ld-linux-x86-64.so.2" --set-rpath "$dest/lib" --force-rpath "$w/bin/$exe"
  done
  grep -E "^($(echo $exes | tr ' ' '|'))\s" \
    "/opt/runc-grit/stacks/$name/versions" > "$w/versions"
  rm -rf "$out"; mkdir -p "$out"
  cp "$w/versions" "$out/versions"; echo "$dest" > "$out/DEST"
  tar -C "$w" -cf - bin lib versions | xz -T0 -6 > "$out/stack.tar.xz"
  echo "make_carry: stack $name: $(du -sh "$w" | cut -f1) unpacked, $(du -sh "$out/stack.tar.xz" | cut -f1) as stack.tar.xz" >&2
  rm -rf "$w"
}
if [ "${CARRY_ONLY_STACKS:-0}" = 1 ]; then
  rm -rf "$C/stacks"; for s in ${CARRY_STACKS:-current}; do carry_stack "$s"; done
  du -sh "$C"/*; du -sh "$C"; exit 0
fi
rm -rf "$C" && mkdir -p "$C/criu/lib" "$C/criu/usr/sbin" "$C/debs" "$C/whl"
cp "$P/usr/sbin/criu" "$P/usr/sbin/xtables-legacy-multi" "$C/criu/usr/sbin/"
cp -r "$P/usr/lib/x86_64-linux-gnu/xtables" "$C/criu/xtables"
cp -L "$P/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" "$C/criu/lib/"
for bin in "$P/usr/sbin/criu" "$P/usr/sbin/xtables-legacy-multi"; do
  "$P/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" --library-path "$L" --list "$bin" |
    awk '/=> \// {print $3}' | while read -r lib; do cp -L "$lib" "$C/criu/lib/"; done
done
(cd "$C/debs" && apt-get download runc >/dev/null)
mkdir -p "$C/extra" "$C/pycriu"
(cd "$C/extra" && apt-get download busybox-static docker-registry >/dev/null)
if [ "${CARRY_RUNTIMES:-0}" = 1 ]; then  # for `device_run.sh runtimes`: crun, runsc
  (cd "$C/extra" && apt-get download crun libyajl2 >/dev/null)
  . install/trixie.sh
  trixie_fetch "$C/extra" runsc
fi
cp -r "$P/usr/lib/python3/dist-packages/pycriu" "$P/usr/lib/python3/dist-packages/google" "$C/pycriu/"
find "$C/pycriu" -name __pycache__ -prune -exec rm -rf {} +
v() { .venv/bin/python -c "import importlib.metadata as m; print(m.version('$1'))"; }
pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d "$C/whl" jsonschema \
  jsonschema-specifications referencing rpds-py nvidia-ml-py cryptography cffi pycparser \
  requests urllib3 idna charset-normalizer certifi \
  "grpcio==$(v grpcio)" \
  "grpcio-tools==$(v grpcio-tools)" "protobuf==$(v protobuf)"
for s in ${CARRY_STACKS:-}; do carry_stack "$s"; done
# the call carries at most 64 MiB: CRIU 4.1's prefix travels compressed (device_run.sh unpacks)
tar -C "$C" -cf - criu | xz -T0 -6 > "$C/criu.tar.xz" && rm -rf "$C/criu"
du -sh "$C"/*; du -sh "$C"
