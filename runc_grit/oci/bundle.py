"""OCI bundles built from this machine: a busybox rootfs and a runc-style config.json.

Used by `runc-grit demo` and by the integration tests (no image registry is needed).
"""
import copy
import json
import os
import shutil

from runc_grit.errors import GritError

BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox", "/usr/lib/initramfs-tools/bin/busybox")
APPLETS = ("sh", "echo", "cat", "sleep", "ls", "ps", "true", "false", "test", "[", "seq",
           "date", "touch", "mkdir", "rm", "head", "tail", "kill", "grep")

COUNTER = 'i=0; while true; do i=$((i+1)); echo "$i"; sleep %s; done'


def find_busybox():
    for c in BUSYBOX_CANDIDATES:
        if os.path.isfile(c):
            with open(c, "rb") as f:
                head = f.read(4096)
            # a static busybox has no PT_INTERP, so no loader path in its first page
            if b"ld-linux" not in head:
                return c
    raise GritError("no static busybox found (install busybox-static)")


def make_rootfs(path):
    bb = find_busybox()
    for d in ("bin", "proc", "dev", "sys", "tmp", "etc", "data"):
        os.makedirs(os.path.join(path, d), exist_ok=True)
    shutil.copy2(bb, os.path.join(path, "bin", "busybox"))
    for a in APPLETS:
        link = os.path.join(path, "bin", a)
        if not os.path.lexists(link):
            os.symlink("busybox", link)
    with open(os.path.join(path, "etc", "passwd"), "w") as f:
        f.write("root:x:0:0:root:/:/bin/sh\n")
    return path


BASE_SPEC = {
    "ociVersion": "1.0.2-dev",
    "process": {
        "terminal": False,
        "user": {"uid": 0, "gid": 0},
        "args": ["sh"],
        "env": ["PATH=/bin", "TERM=xterm"],
        "cwd": "/",
        "capabilities": {k: ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
                         for k in ("bounding", "effective", "permitted", "ambient")},
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        "noNewPrivileges": True,
    },
    "root": {"path": "rootfs", "readonly": False},
    "hostname": "grit",
    "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
    ],
    "linux": {
        "resources": {"devices": [{"allow": False, "access": "rwm"}]},
        "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
        "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
        "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
    },
}


def make_spec(args, annotations=None, terminal=False, cgroups_path=None):
    spec = copy.deepcopy(BASE_SPEC)
    spec["process"]["args"] = list(args)
    spec["process"]["terminal"] = bool(terminal)
    if annotations:
        spec["annotations"] = dict(annotations)
    if cgroups_path:
        spec["linux"]["cgroupsPath"] = cgroups_path
    return spec


def make_bundle(path, args, annotations=None, terminal=False, rootfs_from=None):
    """A bundle dir with rootfs/ and config.json; returns path."""
    os.makedirs(path, exist_ok=True)
    rootfs = os.path.join(path, "rootfs")
    if rootfs_from:
        shutil.copytree(rootfs_from, rootfs, symlinks=True)
    else:
        make_rootfs(rootfs)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(make_spec(args, annotations, terminal), f, indent=1)
    return path


def counter_args(period="0.2"):
    return ["sh", "-c", COUNTER % period]
