#!/bin/bash
# runc's own integration suite (tests/integration/*.bats from the Debian source package of
# the installed runc) against a runtime: runc itself, or runc-grit in runc's place.
#
#   run.sh setup                                  deps (apt-get), source, helpers, images
#   run.sh run --runtime PATH [--name NAME] [--only F[,F..]] [--filter REGEX] [--fresh]
#   run.sh compare [--base runc] [--test runc-grit] [--out FILE]
#   run.sh all [--grit PATH]                      setup; run runc; run runc-grit; compare
#   run.sh grit-snapshot [REF]                    runc-grit of a commit (default HEAD), as a
#                                                 launcher outside the repo; prints its path
#   run.sh sweep                                  remove what a run left behind
#
# Everything is built and run under $RUNC_BATS_WORK (default /var/tmp/runc-bats); nothing is
# written into the repository. Only Debian's archive is used (no network otherwise): the
# source comes from `apt-get source` through a private sources.list, the test helpers are
# built with Debian's Go against Debian's golang-*-dev packages, the busybox image from
# /bin/busybox (busybox-static), the debian image with debootstrap. See README.md here.
set -euo pipefail

HERE=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
WORK=${RUNC_BATS_WORK:-/var/tmp/runc-bats}
MIRROR=${RUNC_BATS_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${RUNC_BATS_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
SUITE=${RUNC_BATS_SUITE:-bookworm}
DEBIAN_IMAGE_SUITE=${RUNC_BATS_DEBIAN_SUITE:-bookworm}
# Seconds a test may run before the watchdog kills the commands it waits for. Not bats'
# BATS_TEST_TIMEOUT: its sleeper is a child of the test, and events.bats's bare `wait` then
# waits for it (every events --interval test "times out").
TEST_TIMEOUT=${RUNC_BATS_TEST_TIMEOUT:-180}
DEFAULT_GRIT=${RUNC_BATS_GRIT:-}
REAL_RUNC=${RUNC_BATS_REAL_RUNC:-/usr/sbin/runc}
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

log() { printf '[runc-bats] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | grep '^#' | sed 's/^# \{0,1\}//'; }

[ "$(id -u)" = 0 ] || die "run as root (the suite creates containers, cgroups, mounts)"

runc_version() { dpkg-query -W -f='${Version}' runc 2>/dev/null || die "the runc package is not installed"; }
RUNC_VERSION=${RUNC_BATS_RUNC_VERSION:-$(runc_version)}
SRC=$WORK/src/runc-$RUNC_VERSION
INTEG=$SRC/tests/integration
APT_DIR=$WORK/apt
APT=(-o "Dir::Etc::SourceList=$APT_DIR/sources.list" -o Dir::Etc::SourceParts=/dev/null
     -o "Dir::State::Lists=$APT_DIR/lists" -o "Dir::Cache::archives=$APT_DIR/archives"
     -o Debug::NoLocking=1)

# --- setup ---------------------------------------------------------------------------------

apt_private() {
	mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/archives/partial"
	cat >"$APT_DIR/sources.list" <<-EOF
		deb-src $MIRROR $SUITE main
		deb-src $MIRROR $SUITE-updates main
		deb-src $SECURITY_MIRROR $SUITE-security main
	EOF
	apt-get "${APT[@]}" update -qq
}

fetch_source() {
	if [ -f "$SRC/.runc-bats-source" ]; then return; fi
	log "source: runc=$RUNC_VERSION from Debian ($SUITE, $SUITE-updates, $SUITE-security deb-src)"
	apt_private
	local dl=$WORK/src/dl-$RUNC_VERSION
	rm -rf "$dl" "$SRC"
	mkdir -p "$dl"
	chmod 755 "$WORK" "$WORK/src" "$dl"
	# apt's download user writes there (else: "Download is performed unsandboxed as root")
	! id _apt >/dev/null 2>&1 || chown _apt "$dl"
	# dpkg-source cannot check the .dsc's signature without debian-keyring ("no public key"):
	# apt has already checked the files' hashes against the signed Sources index.
	(cd "$dl" && apt-get "${APT[@]}" source --download-only "runc=$RUNC_VERSION" >&2)
	dpkg-source -x "$dl"/runc_*.dsc "$SRC" >&2
	cp "$dl"/runc_*.dsc "$SRC/.runc-bats-dsc"
	echo "$RUNC_VERSION" >"$SRC/.runc-bats-source"
}

install_deps() {
	# Build-Depends golang-* of the source package (what Debian builds runc against), plus
	# what the suite calls on the host. From the system's own apt sources (bookworm).
	local dsc=$SRC/.runc-bats-dsc pkgs missing=() p
	pkgs=$(awk '/^Build-Depends:/{f=1; sub(/^Build-Depends:/,"")} f&&/^[A-Z][A-Za-z-]*:/&&!/^Build-Depends:/{f=0} f' "$dsc" |
		tr ',' '\n' | sed -e 's/([^)]*)//g' -e 's/\[[^]]*\]//g' -e 's/|.*//' | awk '{print $1}' | grep '^golang-' | sort -u)
	for p in bats gawk jq gcc libc6-dev pkg-config golang-go golang-golang-x-sys-dev libseccomp-dev \
		debootstrap xz-utils iproute2 util-linux bsdutils procps $pkgs; do
		dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed' || missing+=("$p")
	done
	if [ ${#missing[@]} -gt 0 ]; then
		log "apt-get install ${missing[*]}"
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
	fi
}

build_helpers() {
	# GOPATH build (no modules, no proxy): runc's own packages from the source tree, the rest
	# from Debian's /usr/share/gocode. Same tags as runc's Makefile (BUILDTAGS=seccomp).
	local gopath=$WORK/gopath h tags
	mkdir -p "$gopath/src/github.com/opencontainers"
	ln -sfn "$SRC" "$gopath/src/github.com/opencontainers/runc"
	for h in recvtty sd-helper seccompagent; do
		[ -x "$SRC/contrib/cmd/$h/$h" ] && continue
		tags=""
		[ "$h" = seccompagent ] && tags=seccomp
		log "build contrib/cmd/$h (Debian Go $(go env GOVERSION))"
		env GO111MODULE=off GOPROXY=off GOTOOLCHAIN=local GOFLAGS= GOPATH="$gopath:/usr/share/gocode" \
			GOCACHE="$WORK/gocache" go build -trimpath -tags "$tags" -o "$SRC/contrib/cmd/$h/$h" \
			"github.com/opencontainers/runc/contrib/cmd/$h" >&2 ||
			log "WARNING: $h did not build; the tests that need it fail (see README.md)"
	done
}

build_busybox_image() {
	# The layout of docker-library's busybox image (what get-images.sh downloads): every
	# applet as a hard link in /bin, its passwd/group, /tmp 1777, /root 700, and no /proc or
	# /sys (mask.bats's `ln -s /symlink rootfs/proc` must make /proc a symlink).
	local out=$1 d
	d=$(mktemp -d "$WORK/images/busybox.XXXXXX")
	mkdir -p "$d"/{bin,dev,etc,home,root,tmp,usr/sbin,var/spool/mail,var/www}
	chmod 1777 "$d/tmp"
	chmod 700 "$d/root"
	chmod 755 "$d"
	cp /bin/busybox "$d/bin/busybox"
	local a
	for a in $(/bin/busybox --list); do
		[ "$a" = busybox ] || ln "$d/bin/busybox" "$d/bin/$a"
	done
	cat >"$d/etc/passwd" <<-'EOF'
		root:x:0:0:root:/root:/bin/sh
		daemon:x:1:1:daemon:/usr/sbin:/bin/false
		bin:x:2:2:bin:/bin:/bin/false
		sys:x:3:3:sys:/dev:/bin/false
		sync:x:4:100:sync:/bin:/bin/sync
		mail:x:8:8:mail:/var/spool/mail:/bin/false
		www-data:x:33:33:www-data:/var/www:/bin/false
		operator:x:37:37:Operator:/var:/bin/false
		nobody:x:65534:65534:nobody:/home:/bin/false
	EOF
	cat >"$d/etc/group" <<-'EOF'
		root:x:0:
		daemon:x:1:
		bin:x:2:
		sys:x:3:
		adm:x:4:
		tty:x:5:
		disk:x:6:
		lp:x:7:
		mail:x:8:
		kmem:x:9:
		wheel:x:10:root
		cdrom:x:11:
		dialout:x:18:
		floppy:x:19:
		video:x:26:
		audio:x:29:
		tape:x:32:
		www-data:x:33:
		operator:x:37:
		utmp:x:43:
		plugdev:x:46:
		staff:x:50:
		lock:x:54:
		netdev:x:82:
		users:x:100:
		nogroup:x:65534:
	EOF
	: >"$d/etc/shadow"
	tar --numeric-owner -C "$d" -cf - . | xz -T0 -3 >"$out.tmp"
	mv "$out.tmp" "$out"
	rm -rf "$d"
}

build_debian_image() {
	# Upstream uses debian buster-slim (only hooks.bats needs it: ldconfig, a glibc); here a
	# debootstrap minbase of $DEBIAN_IMAGE_SUITE from Debian's mirror.
	local out=$1 d
	d=$(mktemp -d "$WORK/images/debian.XXXXXX")
	log "debootstrap --variant=minbase $DEBIAN_IMAGE_SUITE (about half a minute)"
	debootstrap --variant=minbase "$DEBIAN_IMAGE_SUITE" "$d/rootfs" "$MIRROR" >"$WORK/images/debootstrap.log" 2>&1 ||
		{ rm -rf "$d"; die "debootstrap failed, see $WORK/images/debootstrap.log"; }
	rm -rf "$d/rootfs/var/cache/apt/archives/"*.deb "$d/rootfs/var/lib/apt/lists/"*_Packages
	tar --numeric-owner --exclude './dev/*' -C "$d/rootfs" -cf - . | xz -T0 -3 >"$out.tmp"
	mv "$out.tmp" "$out"
	rm -rf "$d"
}

build_images() {
	# get-images.sh downloads only what is missing from testdata/: put the local images there
	# under the names it looks for.
	local arch
	arch=$(dpkg --print-architecture)
	mkdir -p "$WORK/images"
	[ -s "$WORK/images/busybox-$arch.tar.xz" ] || { log "busybox image from /bin/busybox"; build_busybox_image "$WORK/images/busybox-$arch.tar.xz"; }
	[ -s "$WORK/images/debian-$arch.tar.xz" ] || build_debian_image "$WORK/images/debian-$arch.tar.xz"
	ln -sfn "$WORK/images/busybox-$arch.tar.xz" "$INTEG/testdata/busybox-$arch.tar.xz"
	ln -sfn "$WORK/images/debian-$arch.tar.xz" "$INTEG/testdata/debian-$arch.tar.xz"
	(cd "$INTEG" && ./get-images.sh >/dev/null) || die "get-images.sh still wants to download"
}

cmd_setup() {
	mkdir -p "$WORK"
	chmod 755 "$WORK"
	fetch_source
	install_deps
	build_helpers
	build_images
	command -v bats >/dev/null || die "bats missing"
}

# --- run -------------------------------------------------------------------------------------

is_grit() {  # runc-grit or runc itself? (runc-grit passes --version through, so by name/content)
	case "$(basename "$1")" in *grit*) return 0 ;; esac
	head -c 4096 "$1" 2>/dev/null | grep -q runc_grit
}

# Which runc-grit a launcher runs: a grit-snapshot's commit, else the package dir its
# sys.path leads to (the repo's working tree, or an installed copy) and a digest of its code.
grit_version() {
	local launcher=$1 py pkg sum where
	if [ -f "$(dirname "$launcher")/GRIT_VERSION" ]; then
		cat "$(dirname "$launcher")/GRIT_VERSION"
		return
	fi
	py=$(head -1 "$launcher" | sed -n 's/^#! *\([^ ]*\).*/\1/p')
	pkg=$("$py" -S -c 'import sys; src = open(sys.argv[1]).read().split("from runc_grit")[0]; exec(src); import os, runc_grit; print(os.path.dirname(os.path.abspath(runc_grit.__file__)))' "$launcher" 2>/dev/null) || pkg=""
	[ -n "$pkg" ] || { echo "unknown ($launcher)"; return; }
	sum=$(cd "$pkg" && find . \( -name '*.py' -o -name grit-hook \) -not -path '*/__pycache__/*' | LC_ALL=C sort | xargs cat | sha256sum | cut -c1-12)
	where=$pkg
	if [ "$(dirname "$pkg")" = "$REPO" ]; then
		where="$(git -C "$REPO" describe --always --dirty 2>/dev/null) working tree at $(date -u +%H:%MZ)"
	fi
	echo "$where, code sha256 $sum"
}

grit_config() {
	local dir=$1
	mkdir -p "$dir/state" "$dir/checkpoints"
	# a node's own Ed25519 key pair, as install/install.sh makes one (signatures are required)
	[ -s "$dir/signing.key" ] || runc-grit keygen --out "$dir" >/dev/null
	cat >"$dir/config.yaml" <<-EOF
		# runc-grit's config for runc's bats suite (written by tests/runc-bats/run.sh), a
		# node's config as install/install.sh writes it, with private dirs
		runtime: $REAL_RUNC
		state_dir: $dir/state
		signing_key: $dir/signing.key
		trusted_keys: []
		checkpoint_roots:
		  - $dir/checkpoints
	EOF
	echo "$dir/config.yaml"
}

# What a bats file can leave behind: containers (processes rooted in the run's temp dir),
# mounts under it, cgroups runc-cgroups-integration-test*, network namespaces, runc-grit
# state dirs. Prints one line per thing found and removes it. Touches only those.
sweep() {
	local tmp=$WORK/tmp found=0 pid r c m cg ns
	for pid in $(ls /proc | grep -E '^[0-9]+$'); do
		[ "$pid" = $$ ] && continue
		r=$(readlink "/proc/$pid/root" 2>/dev/null) || continue
		c=$(readlink "/proc/$pid/cwd" 2>/dev/null) || c=
		if [[ "$r" == "$tmp"/* || "$c" == "$tmp"/* ]]; then
			echo "process $pid ($(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | cut -c1-80)) root=$r cwd=$c"
			kill -9 "$pid" 2>/dev/null || true
			found=1
		fi
	done
	[ $found = 1 ] && sleep 1
	for m in $(awk -v t="$tmp/" 'index($5, t) == 1 {print $5}' /proc/self/mountinfo | sort -r); do
		echo "mount $m"
		umount -l "$m" 2>/dev/null || true
	done
	for m in "$tmp"/bats-run-*; do  # bats removes its run dir, unless it was killed
		[ -e "$m" ] || continue
		echo "bats run dir $m"
		rm -rf "$m"
	done
	for cg in $(find /sys/fs/cgroup -maxdepth 2 -type d -name 'runc-cgroups-integration-test*' 2>/dev/null); do
		echo "cgroup $cg"
		find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null || true
	done
	if [ -n "${NETNS_BEFORE+x}" ]; then
		for ns in $(ip netns list 2>/dev/null | awk '{print $1}'); do
			if ! grep -qxF "$ns" <<<"$NETNS_BEFORE"; then
				echo "netns $ns"
				ip netns del "$ns" 2>/dev/null || true
			fi
		done
	fi
	if [ -n "${GRIT_DIR:-}" ] && [ -d "$GRIT_DIR/state" ]; then
		# a container's state dir (it has a lock file); not runc-grit's shared criu/ configs
		for c in "$GRIT_DIR"/state/*/; do
			[ -e "$c/lock" ] || [ -e "$c/state.json" ] || continue
			echo "runc-grit state $(basename "$c") ($(ls "$c" | tr '\n' ' '))"
			rm -rf "$c"
		done
		rm -rf "${GRIT_DIR:?}"/checkpoints/*
	fi
}

descendants() {  # pids below $1 (not $1)
	ps -e -o pid=,ppid= | awk -v r="$1" '{p[$1]=$2} END {for (x in p) {y=x; n=0; while ((y in p) && y!=r && n++<64) y=p[y]; if (y==r && x!=r) print x}}'
}

# A test that runs longer than $2 seconds: the commands it waits for are killed (SIGKILL),
# first those that are not bats' own shells (the test then fails at its next check and its
# teardown runs), 30 s later everything below the test, 30 s later the test itself. Each
# test killed is named in $3. Only descendants of $1 (our script(1) process) are touched.
watchdog() {
	local root=$1 limit=$2 out=$3 hz pid args age stage kid
	hz=$(getconf CLK_TCK)
	declare -A seen=()
	while kill -0 "$root" 2>/dev/null; do
		sleep 5
		for pid in $(descendants "$root"); do
			args=$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") || continue
			[[ "$args" == *bats-exec-test* ]] || continue
			[[ "$(tr '\0' ' ' 2>/dev/null <"/proc/$(awk '{print $4}' "/proc/$pid/stat" 2>/dev/null)/cmdline")" == *bats-exec-file* ]] || continue
			age=$(awk -v hz="$hz" -v up="$(cut -d' ' -f1 /proc/uptime)" '{print int(up - $22 / hz)}' "/proc/$pid/stat" 2>/dev/null) || continue
			[ -n "$age" ] && [ "$age" -gt "$limit" ] || continue
			stage=${seen[$pid]:-0}
			if [ "$stage" = 0 ]; then
				echo "$(awk '{for (i = 1; i <= NF; i++) if ($i ~ /\.bats$/) {print $(i + 1); exit}}' <<<"$args") (killed after ${limit}s)" >>"$out"
				for kid in $(descendants "$pid"); do
					[[ "$(tr '\0' ' ' 2>/dev/null <"/proc/$kid/cmdline")" == *bats-exec-test* ]] || kill -9 "$kid" 2>/dev/null || true
				done
				seen[$pid]=1
			elif [ "$stage" = 1 ] && [ "$age" -gt $((limit + 30)) ]; then
				for kid in $(descendants "$pid"); do kill -9 "$kid" 2>/dev/null || true; done
				seen[$pid]=2
			elif [ "$stage" = 2 ] && [ "$age" -gt $((limit + 60)) ]; then
				kill -9 "$pid" 2>/dev/null || true
				seen[$pid]=3
			fi
		done
	done
}

# Host files the suite writes: checkpoint.bats's "container specific CRIU config" test writes
# /etc/criu/default.conf (log-file=...) and never removes it; every later CRIU run on the host
# would read it. Saved before each file, put back (or removed) after it.
HOST_FILES=(/etc/criu/default.conf)

host_files_save() {
	local f key
	rm -rf "$WORK/host-files"
	mkdir -p "$WORK/host-files"
	for f in "${HOST_FILES[@]}"; do
		key=$(echo "$f" | tr / _)
		[ -d "$(dirname "$f")" ] && touch "$WORK/host-files/$key.dir"
		[ -e "$f" ] && cp -a "$f" "$WORK/host-files/$key"
	done
	return 0
}

host_files_restore() {
	local f key
	for f in "${HOST_FILES[@]}"; do
		key=$(echo "$f" | tr / _)
		if [ -e "$WORK/host-files/$key" ]; then
			cmp -s "$WORK/host-files/$key" "$f" || { echo "host file $f (put back)"; cp -a "$WORK/host-files/$key" "$f"; }
		elif [ -e "$f" ]; then
			echo "host file $f (removed)"
			rm -f "$f"
			[ -e "$WORK/host-files/$key.dir" ] || rmdir "$(dirname "$f")" 2>/dev/null || true
		fi
	done
	return 0
}

select_files() {  # the bats files to run, from --only (comma or space separated, .bats optional)
	local only=$1 f
	if [ -z "$only" ]; then
		(cd "$INTEG" && ls -1 ./*.bats | sed 's|^\./||')
		return
	fi
	for f in ${only//,/ }; do
		f=${f%.bats}.bats
		[ -f "$INTEG/$f" ] || die "no $f in $INTEG"
		echo "$f"
	done
}

cmd_run() {
	local runtime="" name="" only="" filter="" grit=auto fresh=no
	while [ $# -gt 0 ]; do
		case $1 in
		--runtime) runtime=$2; shift 2 ;;
		--name) name=$2; shift 2 ;;
		--only) only="$only ${2}"; shift 2 ;;
		--filter) filter=$2; shift 2 ;;
		--grit) grit=yes; shift ;;
		--no-grit) grit=no; shift ;;
		--fresh) fresh=yes; shift ;;
		*) die "run: unknown argument $1" ;;
		esac
	done
	[ -n "$runtime" ] || die "run: --runtime PATH is required"
	runtime=$(readlink -f "$runtime")
	[ -x "$runtime" ] || die "run: $runtime is not executable"
	if [ "$grit" = auto ]; then is_grit "$runtime" && grit=yes || grit=no; fi
	[ -n "$name" ] || { [ "$grit" = yes ] && name=runc-grit || name=$(basename "$runtime"); }
	cmd_setup

	local res=$WORK/results/$name
	# A run of every file starts the result set afresh; a subset (--only, --filter) replaces
	# its files' results in the set, which must be of the same runtime.
	if [ -z "$only$filter" ]; then fresh=yes; fi
	if [ "$fresh" = no ] && [ -f "$res/meta" ] && ! grep -qxF "runtime=$runtime" "$res/meta"; then
		die "result set $name holds results of $(sed -n 's/^runtime=//p' "$res/meta"), not $runtime: use --fresh or another --name"
	fi
	[ "$fresh" = yes ] && rm -rf "$res"
	mkdir -p "$res/tap" "$WORK/tmp"
	chmod 755 "$WORK/tmp"
	local envs=(RUNC="$runtime" TMPDIR="$WORK/tmp")
	GRIT_DIR=""
	if [ "$grit" = yes ]; then
		GRIT_DIR=$WORK/grit
		envs+=(RUNC_GRIT_CONFIG="$(grit_config "$GRIT_DIR")")
	fi
	{
		echo "runtime=$runtime"
		echo "grit=$grit"
		[ -n "$GRIT_DIR" ] && echo "grit_config=$GRIT_DIR/config.yaml"
		[ "$grit" = yes ] && echo "grit_version=$(grit_version "$runtime")"
		echo "runc_version=$RUNC_VERSION"
		echo "runc_says=$("$REAL_RUNC" --version | head -1)"
		echo "criu=$(criu --version 2>/dev/null | head -1)"
		echo "bats=$(bats --version)"
		echo "kernel=$(uname -r)"
		echo "date=$(date -u +%Y-%m-%dT%H:%MZ)"
		echo "filter=$filter"
	} >"$res/meta.$$"
	mv "$res/meta.$$" "$res/meta"

	local wrapper=$res/bats.sh
	{
		echo '#!/bin/bash'
		echo '# one bats file under the run'"'"'s environment: bats.sh FILE TAP STDERR (written by run.sh)'
		printf 'cd %q || exit 1\n' "$INTEG"
		printf 'export %q\n' "${envs[@]}"
		printf 'exec bats --tap --timing %s "$1" >"$2" 2>"$3"\n' "${filter:+--filter $(printf %q "$filter")}"
	} >"$wrapper"
	chmod 755 "$wrapper"
	local files f t0 t1 rc total0
	files=$(select_files "$only")
	total0=$(date +%s)
	sweep >/dev/null 2>&1 || true
	for f in $files; do
		NETNS_BEFORE=$(ip netns list 2>/dev/null | awk '{print $1}')
		host_files_save
		log "$name: $f"
		t0=$(date +%s)
		rc=0
		# under a pty, like runc's CI (`script -e -c 'make localintegration'`): runc run with
		# terminal:true and no console socket needs a controlling terminal
		: >"$res/tap/$f.timeouts"
		script -q -e -c "$(printf '%q ' "$wrapper" "$f" "$res/tap/$f.tap" "$res/tap/$f.stderr")" /dev/null \
			</dev/null >/dev/null 2>&1 &
		local spid=$!
		watchdog "$spid" "$TEST_TIMEOUT" "$res/tap/$f.timeouts" &
		local wpid=$!
		# interrupted: script(1) hangs up bats' pty; the containers go with the next sweep
		trap 'log "interrupted"; kill "$wpid" "$spid" 2>/dev/null; sleep 1; sweep >/dev/null 2>&1; host_files_restore >/dev/null; exit 130' INT TERM
		wait "$spid" || rc=$?
		kill "$wpid" 2>/dev/null || true
		wait "$wpid" 2>/dev/null || true
		trap - INT TERM
		[ -s "$res/tap/$f.timeouts" ] && log "  watchdog: $(cat "$res/tap/$f.timeouts" | tr '\n' ' ')"
		t1=$(date +%s)
		{ sweep; host_files_restore; } >"$res/tap/$f.leftover" 2>&1 || true
		[ -s "$res/tap/$f.leftover" ] && log "  left behind: $(wc -l <"$res/tap/$f.leftover") thing(s), see $res/tap/$f.leftover"
		printf '%s\t%s\t%s\n' "$f" "$((t1 - t0))" "$rc" >"$res/tap/$f.time"
		log "  $(grep '^ok ' "$res/tap/$f.tap" | grep -vc ' # skip' || true) passed, $(grep -c '^not ok ' "$res/tap/$f.tap" || true) failed, $(grep -c '^ok .* # skip' "$res/tap/$f.tap" || true) skipped, $((t1 - t0))s"
	done
	printf '%s\t%s\t%ss\t%s\n' "$(date -u +%Y-%m-%dT%H:%MZ)" "$(sed -n 's/^grit_version=//p' "$res/meta")" \
		"$(($(date +%s) - total0))" "$(echo $files)${filter:+ --filter $filter}" >>"$res/runs.log"
	summarize "$res"
	log "results: $res/summary.tsv"
}

summarize() {  # per-test tests.tsv and per-file summary.tsv from the TAP files of a result set
	python3 - "$1" <<-'EOF'
	import os, re, sys
	res = sys.argv[1]
	tapdir = os.path.join(res, "tap")
	line_re = re.compile(r"^(ok|not ok) (\d+) (.*)$")
	ms_re = re.compile(r"^(.*?) in (\d+)ms$")
	tests, summary = [], []
	for fn in sorted(os.listdir(tapdir)):
	    if not fn.endswith(".bats.tap"):
	        continue
	    bats = fn[:-4]
	    n = ok = fail = skip = 0
	    for ln in open(os.path.join(tapdir, fn), errors="replace"):
	        m = line_re.match(ln.rstrip("\n"))
	        if not m:
	            continue
	        status, num, rest = m.groups()
	        reason, ms = "", ""
	        if status == "ok" and " # skip" in rest:
	            rest, _, reason = rest.partition(" # skip")
	            status = "skip"
	            reason = reason.strip()
	        if status == "not ok":
	            status = "fail"
	        t = ms_re.match(rest)
	        if t:
	            rest, ms = t.groups()
	        n += 1
	        ok += status == "ok"; fail += status == "fail"; skip += status == "skip"
	        tests.append((bats, num, status, rest.strip(), ms or "", reason))
	    secs = ""
	    tf = os.path.join(tapdir, bats + ".time")
	    if os.path.exists(tf):
	        secs = open(tf).read().split("\t")[1]
	    summary.append((bats, n, ok, fail, skip, secs))
	with open(os.path.join(res, "tests.tsv"), "w") as f:
	    f.write("file\tnum\tstatus\ttest\tms\tskip_reason\n")
	    for t in tests:
	        f.write("\t".join(map(str, t)) + "\n")
	with open(os.path.join(res, "summary.tsv"), "w") as f:
	    f.write("file\ttests\tpassed\tfailed\tskipped\tseconds\n")
	    for s in summary:
	        f.write("\t".join(map(str, s)) + "\n")
	tot = [sum(s[i] for s in summary) for i in (1, 2, 3, 4)]
	secs = sum(int(s[5] or 0) for s in summary)
	print("%s: %d tests, %d passed, %d failed, %d skipped, %ds in bats" % ((res,) + tuple(tot) + (secs,)))
	EOF
}

# --- compare ---------------------------------------------------------------------------------

cmd_compare() {
	local base=runc test=runc-grit out=""
	while [ $# -gt 0 ]; do
		case $1 in
		--base) base=$2; shift 2 ;;
		--test) test=$2; shift 2 ;;
		--out) out=$2; shift 2 ;;
		*) die "compare: unknown argument $1" ;;
		esac
	done
	local a=$WORK/results/$base b=$WORK/results/$test
	[ -f "$a/tests.tsv" ] || summarize "$a" >/dev/null
	[ -f "$b/tests.tsv" ] || summarize "$b" >/dev/null
	summarize "$a" >/dev/null
	summarize "$b" >/dev/null
	[ -n "$out" ] || out=$WORK/results/compare-$base-vs-$test.md
	python3 - "$a" "$b" "$base" "$test" >"$out" <<-'EOF'
	import os, re, sys
	a, b, an, bn = sys.argv[1:5]
	def meta(d):
	    m = {}
	    for ln in open(os.path.join(d, "meta")):
	        k, _, v = ln.rstrip("\n").partition("=")
	        m[k] = v
	    return m
	def tests(d):
	    out = {}
	    rows = [ln.rstrip("\n").split("\t") for ln in open(os.path.join(d, "tests.tsv"))][1:]
	    for f, num, st, name, ms, reason in rows:
	        out[(f, name)] = (st, num, reason)
	    return out
	def summary(d):
	    rows = [ln.rstrip("\n").split("\t") for ln in open(os.path.join(d, "summary.tsv"))][1:]
	    return {r[0]: r for r in rows}
	def failure_text(d, f, num, limit=40):
	    lines, grab = [], False
	    for ln in open(os.path.join(d, "tap", f + ".tap"), errors="replace"):
	        ln = ln.rstrip("\n")
	        if re.match(r"^(not )?ok \d+ ", ln):
	            grab = ln.startswith("not ok %s " % num)
	            continue
	        if grab and ln.startswith("#"):
	            lines.append(ln[2:] if ln.startswith("# ") else ln[1:])
	    if len(lines) > limit:
	        lines = lines[:10] + ["[... %d lines ...]" % (len(lines) - limit + 10)] + lines[-(limit - 10):]
	    return lines
	ma, mb = meta(a), meta(b)
	ta, tb = tests(a), tests(b)
	sa, sb = summary(a), summary(b)
	files = sorted(set(sa) | set(sb))
	p = print
	p("# runc's integration suite: %s vs %s" % (an, bn))
	p()
	p("| | %s | %s |" % (an, bn))
	p("|---|---|---|")
	for d, m in ((a, ma), (b, mb)):
	    m["bats seconds (sum of files)"] = str(sum(int(r[5] or 0) for r in summary(d).values()))
	    runs = os.path.join(d, "runs.log")
	    if os.path.exists(runs):
	        m["runs (date, wall time, files)"] = "<br>".join(
	            "%s %s %s" % (r[0], r[2], (r[3] if len(r[3]) < 60 else "all %d files" % len(r[3].split())))
	            for r in (ln.rstrip("\n").split("\t") for ln in open(runs)) if len(r) >= 4)
	for k in ("runtime", "grit_version", "runc_says", "criu", "bats", "kernel", "bats seconds (sum of files)", "runs (date, wall time, files)"):
	    if ma.get(k) or mb.get(k):
	        p("| %s | %s | %s |" % (k, ma.get(k, ""), mb.get(k, "")))
	p()
	p("| file | tests | passed with %s | passed with %s | skipped (%s / %s) | seconds (%s / %s) |" % (an, bn, an, bn, an, bn))
	p("|---|---:|---:|---:|---:|---:|")
	tot = [0, 0, 0, 0, 0, 0, 0]
	for f in files:
	    ra, rb = sa.get(f), sb.get(f)
	    n = (ra or rb)[1]
	    pa = ra[2] if ra else "-"
	    pb = rb[2] if rb else "-"
	    ka = ra[4] if ra else "-"
	    kb = rb[4] if rb else "-"
	    da = ra[5] if ra else "-"
	    db = rb[5] if rb else "-"
	    mark = " **" if ra and rb and int(pb) < int(pa) else ""
	    p("| %s | %s | %s | %s%s | %s / %s | %s / %s |" % (f, n, pa, pb, mark.replace(" **", " ⚠"), ka, kb, da, db))
	    for i, v in enumerate((n, pa, pb, ka, kb, da, db)):
	        try:
	            tot[i] += int(v)
	        except ValueError:
	            pass
	p("| **total** | %d | %d | %d | %d / %d | %d / %d |" % tuple(tot))
	p()
	regress = [(k, ta[k], tb[k]) for k in ta if k in tb and ta[k][0] == "ok" and tb[k][0] == "fail"]
	fixed = [(k, ta[k], tb[k]) for k in ta if k in tb and ta[k][0] == "fail" and tb[k][0] == "ok"]
	both = [(k, ta[k], tb[k]) for k in ta if k in tb and ta[k][0] == "fail" and tb[k][0] == "fail"]
	skipdiff = [(k, ta[k], tb[k]) for k in ta if k in tb and ta[k][0] != tb[k][0] and "skip" in (ta[k][0], tb[k][0])]
	missing = [k for k in ta if k not in tb] + [k for k in tb if k not in ta]
	p("## Pass with %s, fail with %s (%d)" % (an, bn, len(regress)))
	p()
	for (f, name), x, y in sorted(regress):
	    p("### %s: %s" % (f, name))
	    p()
	    p("```")
	    for ln in failure_text(b, f, y[1]):
	        p(ln)
	    p("```")
	    p()
	p("## Fail with %s, pass with %s (%d)" % (an, bn, len(fixed)))
	p()
	for (f, name), x, y in sorted(fixed):
	    p("* %s: %s" % (f, name))
	p()
	def why(d, f, num):
	    """The failed assertion and the last error message of a failed test."""
	    lines = [ln.strip() for ln in failure_text(d, f, num, 10000) if ln.strip()]
	    failed = next((ln for ln in lines if ln.endswith("failed") or " failed with status " in ln
	                   or " failed due to timeout" in ln), "")
	    # the runtime's own last error (not runc-grit's summary line, which repeats it)
	    errs = [ln for ln in lines if ("level=error" in ln or "Error (" in ln) and "runc-grit: " not in ln]
	    out = failed
	    if errs:
	        out += " / " + re.sub(r'^time="[^"]*" ', "", errs[-1])
	    return out.replace("`", "'")[:300]
	p("## Fail with both (%d)" % len(both))
	p()
	p("The failed assertion / the runtime's last error line, for each; *different* when they differ.")
	p()
	for (f, name), x, y in sorted(both):
	    wa, wb = why(a, f, x[1]), why(b, f, y[1])
	    p("* %s: %s%s  \n  %s: `%s`  \n  %s: `%s`" % (f, name, " (**different**)" if wa != wb else "",
	                                             an, wa, bn, wb))
	p()
	def leftovers(d):
	    out = {}
	    tap = os.path.join(d, "tap")
	    for fn in sorted(os.listdir(tap)):
	        if fn.endswith(".leftover"):
	            for ln in open(os.path.join(tap, fn)):
	                if ln.strip():
	                    kind = " ".join(ln.split()[:3]) if ln.startswith("runc-grit state") else ln.split()[0]
	                    out.setdefault(fn[:-9], []).append(kind)
	    return out
	la, lb = leftovers(a), leftovers(b)
	diff = [f for f in sorted(set(la) | set(lb)) if sorted(la.get(f, [])) != sorted(lb.get(f, []))]
	if diff:
	    p("## Left behind after a file, where the two differ (%d files)" % len(diff))
	    p()
	    p("What the sweep found (and removed) after the file; details in tap/<file>.leftover.")
	    p()
	    p("| file | %s | %s |" % (an, bn))
	    p("|---|---|---|")
	    def fmt(items):
	        c = {}
	        for i in items:
	            c[i] = c.get(i, 0) + 1
	        return ", ".join("%s%s" % (k, " x%d" % v if v > 1 else "") for k, v in sorted(c.items())) or "-"
	    for f in diff:
	        p("| %s | %s | %s |" % (f, fmt(la.get(f, [])), fmt(lb.get(f, []))))
	    p()
	if skipdiff:
	    p("## Skipped with one runtime only (%d)" % len(skipdiff))
	    p()
	    for (f, name), x, y in sorted(skipdiff):
	        p("* %s: %s (%s: %s, %s: %s)" % (f, name, an, x[0], bn, y[0]))
	    p()
	if missing:
	    p("## In one result set only (%d)" % len(missing))
	    p()
	    for f, name in sorted(missing):
	        p("* %s: %s" % (f, name))
	    p()
	reasons = {}
	for (f, name), x in ta.items():
	    if x[0] == "skip":
	        reasons.setdefault(x[2] or "(no reason)", []).append("%s: %s" % (f, name))
	p("## Skipped with %s, by reason (%d)" % (an, sum(len(v) for v in reasons.values())))
	p()
	for r in sorted(reasons, key=lambda r: -len(reasons[r])):
	    p("* **%s** (%d): %s" % (r, len(reasons[r]), "; ".join(sorted(reasons[r]))))
	p()
	EOF
	log "wrote $out"
	echo "$out"
}

# runc-grit as committed (REF), not the working tree: `git archive` of runc_grit/ into the
# work dir, and a launcher like install/make_launcher.py's (the repo venv's python -S, the
# snapshot first on sys.path, then the venv's site-packages for yaml/jsonschema).
cmd_grit_snapshot() {
	local ref=${1:-HEAD} sha dir py site
	sha=$(git -C "$REPO" rev-parse --short=12 "$ref^{commit}") || die "no commit $ref"
	dir=$WORK/grit-snapshot/$sha
	py=${RUNC_BATS_GRIT_PYTHON:-$REPO/.venv/bin/python}
	[ -x "$py" ] || die "no python at $py (RUNC_BATS_GRIT_PYTHON)"
	if [ ! -x "$dir/runc-grit" ]; then
		rm -rf "$dir"
		mkdir -p "$dir/src"
		git -C "$REPO" archive "$sha" runc_grit | tar -x -C "$dir/src"
		site=$("$py" -c 'import site; print(repr(site.getsitepackages()))')
		cat >"$dir/runc-grit" <<-EOF
			#!$py -S
			# runc-grit $sha (run.sh grit-snapshot): the snapshot, then the venv's packages
			import sys
			sys.path[0:0] = ['$dir/src'] + $site
			from runc_grit.entry import main
			sys.exit(main())
		EOF
		chmod 755 "$dir/runc-grit"
		echo "$sha ($(git -C "$REPO" log -1 --format='%cd' --date=iso-strict "$sha"), snapshot of $ref)" >"$dir/GRIT_VERSION"
	fi
	echo "$dir/runc-grit"
}

cmd_all() {
	local grit=${DEFAULT_GRIT:-}
	local rest=()
	while [ $# -gt 0 ]; do
		case $1 in
		--grit) grit=$2; shift 2 ;;
		*) rest+=("$1"); shift ;;
		esac
	done
	if [ -z "$grit" ]; then
		if [ -x /usr/local/bin/runc-grit ]; then grit=/usr/local/bin/runc-grit; else grit=$REPO/.venv/bin/runc-grit; fi
	fi
	cmd_run --runtime "$REAL_RUNC" --name runc --no-grit "${rest[@]}"
	cmd_run --runtime "$grit" --name runc-grit --grit "${rest[@]}"
	cmd_compare --base runc --test runc-grit
}

main() {
local cmd=${1:-}
[ $# -gt 0 ] && shift
case $cmd in
setup) cmd_setup ;;
run) cmd_run "$@" ;;
compare) cmd_compare "$@" ;;
all) cmd_all "$@" ;;
grit-snapshot) cmd_grit_snapshot "$@" ;;
sweep) GRIT_DIR=${GRIT_DIR:-$WORK/grit} sweep ;;
summarize) summarize "$1" ;;
-h | --help | help | "") usage ;;
*) die "unknown command $cmd (setup, run, compare, all, sweep)" ;;
esac
}

main "$@"
exit
