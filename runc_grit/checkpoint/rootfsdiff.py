"""What a container changed in its root filesystem, carried with its checkpoint.

At checkpoint: the overlay upperdir under the bundle's rootfs (containerd's snapshotters,
Podman, CRI-O) is packed as ``rootfs-diff.tar``; its whiteouts (0:0 character devices) become
``deleted.files``, a JSON list of paths: the layout Podman, CRI-O and checkpointctl use.
Before a restore-on-create: the tar is unpacked into the new container's rootfs and the
deleted paths are removed, so files the process created (and may hold open) are there again.
A rootfs that is not an overlay mount has no diff to take.
"""
import json
import os
import stat
import tarfile

from runc_grit.errors import GritError

DIFF = "rootfs-diff.tar"
DELETED = "deleted.files"


def _unescape(s):
    return s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n") \
            .replace("\\134", "\\")


def upperdir(rootfs):
    """The upperdir of the overlay mounted at rootfs, or None."""
    real = os.path.realpath(rootfs)
    found = None
    try:
        with open("/proc/self/mountinfo") as f:
            for ln in f:
                pre, _, post = ln.partition(" - ")
                fields, rest = pre.split(), post.split()
                if len(fields) < 5 or len(rest) < 3 or _unescape(fields[4]) != real:
                    continue
                if rest[0] != "overlay":
                    found = None
                    continue
                for opt in rest[2].split(","):
                    if opt.startswith("upperdir="):
                        found = _unescape(opt[len("upperdir="):])
    except OSError:
        return None
    return found


def capture(rootfs, image_dir):
    """Write rootfs-diff.tar and deleted.files into image_dir. Returns (files, deleted) or
    None when rootfs is not an overlay."""
    upper = upperdir(rootfs)
    if not upper or not os.path.isdir(upper):
        return None
    deleted, n = [], 0
    tmp = os.path.join(image_dir, "." + DIFF + ".tmp")
    with tarfile.open(tmp, "w") as tar:
        for d, dirs, files in os.walk(upper):
            dirs.sort()
            for name in sorted(dirs) + sorted(files):
                full = os.path.join(d, name)
                rel = os.path.relpath(full, upper)
                st = os.lstat(full)
                if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:  # overlay whiteout
                    deleted.append(rel)
                    continue
                tar.add(full, arcname=rel, recursive=False)
                n += 1
    os.replace(tmp, os.path.join(image_dir, DIFF))
    with open(os.path.join(image_dir, DELETED), "w") as f:
        json.dump(sorted(deleted), f)
    return n, len(deleted)


def _inside(root, rel):
    if not rel or rel.startswith("/") or "\0" in rel:
        return None
    p = os.path.normpath(os.path.join(root, rel))
    if p != root and not p.startswith(root + os.sep):
        return None
    return p


def _safe_members(tar, root):
    for m in tar.getmembers():
        if _inside(root, m.name) is None:
            raise GritError("%s: member %r leaves the rootfs" % (DIFF, m.name), kind="source")
        if m.issym() and m.linkname.startswith("/"):
            pass  # an absolute symlink target resolves inside the container: fine
        elif m.issym() or m.islnk():
            if _inside(root, os.path.join(os.path.dirname(m.name), m.linkname)
                       if m.issym() else m.linkname) is None:
                raise GritError("%s: link %r -> %r leaves the rootfs" % (DIFF, m.name, m.linkname),
                                kind="source")
        if m.isdev() or m.isfifo():
            raise GritError("%s: device or fifo %r refused" % (DIFF, m.name), kind="source")
        yield m


def apply(image_dir, rootfs):
    """Unpack the image dir's rootfs diff into rootfs (a fresh copy of the image's). Returns
    (files, deleted), or None when the checkpoint carries no diff."""
    diff = os.path.join(image_dir, DIFF)
    if not os.path.exists(diff):
        return None
    root = os.path.realpath(rootfs)
    try:
        with tarfile.open(diff) as tar:
            members = list(_safe_members(tar, root))
            for m in members:
                # never follow a symlink the new rootfs already has at a member's parent
                parent = os.path.dirname(os.path.join(root, m.name))
                if os.path.realpath(parent) != os.path.normpath(parent):
                    raise GritError("%s: %r goes through a symlink in the rootfs" % (DIFF, m.name),
                                    kind="source")
                tar.extract(m, root, set_attrs=True)
        with open(os.path.join(image_dir, DELETED)) as f:
            deleted = json.load(f)
    except (OSError, tarfile.TarError, ValueError) as e:
        raise GritError("%s in %s: %s" % (DIFF, image_dir, e), kind="source") from None
    if not isinstance(deleted, list):
        raise GritError("%s: not a list" % DELETED, kind="source")
    for rel in deleted:
        p = _inside(root, rel) if isinstance(rel, str) else None
        if p is None:
            raise GritError("%s: %r leaves the rootfs" % (DELETED, rel), kind="source")
        if os.path.islink(p) or os.path.isfile(p):
            os.unlink(p)
        elif os.path.isdir(p):
            import shutil
            shutil.rmtree(p)
    return len(members), len(deleted)
