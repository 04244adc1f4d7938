"""What a container changed in its root filesystem, carried with its checkpoint.

At checkpoint: the overlay upperdir under the bundle's rootfs (containerd's snapshotters,
Podman, CRI-O) is packed as ``rootfs-diff.tar``; its whiteouts (0:0 character devices) become
``deleted.files``, a JSON list of paths: the layout Podman, CRI-O and checkpointctl use.
Before a restore-on-create: the tar is unpacked into the new container's rootfs and the
deleted paths are removed, so files the process created (and may hold open) are there again.
A rootfs that is not an overlay mount has no diff to take.

Both directions handle content a container controls, as root in the node's mount namespace,
so no path is ever resolved through it: the upperdir is read and the new rootfs written
through directory descriptors, every component opened O_NOFOLLOW (runc_grit.fsutil). An
entry already in the new rootfs (a symlink to a node path included) is removed and made
anew, never written through; a name leaving the rootfs is refused. What is written into the
image dir is created under fresh names and renamed into place.
"""
import json
import os
import shutil
import stat
import tarfile

from runc_grit import fsutil
from runc_grit.errors import CheckpointError, SourceError

DIFF = "rootfs-diff.tar"
DELETED = "deleted.files"
DELETED_LIMIT = 64 << 20  # bytes of deleted.files read at most


def upperdir(rootfs):
    """The upperdir of the overlay mounted at rootfs, or None."""
    from runc_grit.node import mountinfo
    real = os.path.realpath(rootfs)
    found = None
    for m in mountinfo.read() or ():
        if m.mountpoint != real:
            continue
        found = None  # of mounts stacked there, the last decides
        if m.fstype == "overlay":
            for opt in m.super_options:
                if opt.startswith("upperdir="):
                    found = mountinfo.unescape(opt[len("upperdir="):])
    return found


# --- capture ------------------------------------------------------------------------------

def capture(rootfs, image_dir):
    """Write rootfs-diff.tar and deleted.files into image_dir (opened O_NOFOLLOW; each file
    made under a fresh name and renamed into place). Returns (files, deleted), or None when
    rootfs is not an overlay; GritError (kind checkpoint) when the diff cannot be taken."""
    upper = upperdir(rootfs)
    if not upper or not os.path.isdir(upper):
        return None
    try:
        dfd = fsutil.open_dir(image_dir)
        try:
            with fsutil.replacing(dfd, DIFF) as f:
                with tarfile.open(fileobj=f, mode="w") as tar:
                    n, deleted = _pack(upper, tar)
            fsutil.write_json_atomic_at(dfd, DELETED, sorted(deleted))
        finally:
            os.close(dfd)
    except OSError as e:
        raise CheckpointError("rootfs diff of %s into %s: %s" % (rootfs, image_dir, e)) from None
    return n, len(deleted)


def _pack(upper, tar):
    """Add every entry under upper to tar (depth first, names sorted), each dir walked from
    upper's descriptor with O_NOFOLLOW, each file read through a descriptor (never a path
    that follows a link the container made). Returns (entries added, whiteout paths)."""
    top = fsutil.open_dir(upper, follow=True)
    deleted, links, n = [], {}, 0
    try:
        pending = [[]]
        while pending:
            parts = pending.pop()
            dfd = fsutil.walk(top, parts)
            try:
                subdirs = []
                for name in sorted(os.listdir(dfd)):
                    rel = "/".join(parts + [name])
                    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:  # overlay whiteout
                        deleted.append(rel)
                        continue
                    n += _add(tar, dfd, name, rel, st, links)
                    if stat.S_ISDIR(st.st_mode):
                        subdirs.append(parts + [name])
                pending.extend(reversed(subdirs))
            finally:
                os.close(dfd)
    finally:
        os.close(top)
    return n, deleted


def _tarinfo(rel, st):
    ti = tarfile.TarInfo(rel)
    ti.mode, ti.uid, ti.gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
    ti.mtime = int(st.st_mtime)
    return ti


KINDS = {stat.S_IFDIR: tarfile.DIRTYPE, stat.S_IFLNK: tarfile.SYMTYPE,
         stat.S_IFCHR: tarfile.CHRTYPE, stat.S_IFBLK: tarfile.BLKTYPE,
         stat.S_IFIFO: tarfile.FIFOTYPE}


def _add(tar, dfd, name, rel, st, links):
    """Add the entry name of dfd (lstat st) as rel. Returns 1, or 0 for one a tar cannot
    hold (a socket)."""
    ti = _tarinfo(rel, st)
    fmt = stat.S_IFMT(st.st_mode)
    if fmt == stat.S_IFREG:
        _add_file(tar, dfd, name, ti, st, links)
        return 1
    if fmt not in KINDS:
        return 0
    ti.type = KINDS[fmt]
    if fmt == stat.S_IFLNK:
        ti.linkname = os.readlink(name, dir_fd=dfd)
    elif fmt in (stat.S_IFCHR, stat.S_IFBLK):  # refused again by apply, as before
        ti.devmajor, ti.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    tar.addfile(ti)
    return 1


def _add_file(tar, dfd, name, ti, st, links):
    """A regular file: a hard link to an earlier member of the same inode (links: inode ->
    name), or its content, read from fsutil.open_regular and checked to be that inode."""
    key = (st.st_ino, st.st_dev)
    if st.st_nlink > 1 and key in links:
        ti.type, ti.linkname = tarfile.LNKTYPE, links[key]
        tar.addfile(ti)
        return
    fd = fsutil.open_regular(name, dir_fd=dfd)
    with os.fdopen(fd, "rb") as f:
        fst = os.fstat(fd)
        if (fst.st_ino, fst.st_dev) != key:
            raise OSError("%s changed while it was read" % ti.name)
        ti.size = fst.st_size
        tar.addfile(ti, f)
    if st.st_nlink > 1:
        links[key] = ti.name


# --- apply --------------------------------------------------------------------------------

def apply(image_dir, rootfs):
    """Unpack the image dir's rootfs diff into rootfs (a fresh copy of the image's), then
    remove its deleted paths, all confined to rootfs. Returns (files, deleted), or None when
    the checkpoint carries no diff. GritError (kind source) naming the entry for a name that
    leaves the rootfs, a path through a symlink there, a device or a FIFO."""
    f = _open_image_file(image_dir, DIFF)
    if f is None:
        return None
    try:
        with f, _Root(rootfs) as root:
            with tarfile.open(fileobj=f) as tar:
                n = _unpack(tar, root)
            deleted = _read_deleted(image_dir)
            for rel in deleted:
                _delete(root, rel)
            root.finish_dirs()
    except (OSError, tarfile.TarError, ValueError) as e:
        raise SourceError("%s in %s: %s" % (DIFF, image_dir, e)) from None
    return n, len(deleted)


def _open_image_file(image_dir, name):
    """name in image_dir opened for reading (O_NOFOLLOW, a regular file), or None when there
    is none."""
    try:
        fd = fsutil.open_regular(os.path.join(image_dir, name))
    except FileNotFoundError:
        return None
    except OSError as e:
        raise SourceError("%s in %s: %s (a symlink or a special file is refused)"
                        % (name, image_dir, e.strerror)) from None
    return os.fdopen(fd, "rb")


def _read_deleted(image_dir):
    """deleted.files: a list of paths (none when the file is missing)."""
    f = _open_image_file(image_dir, DELETED)
    if f is None:
        return []
    with f:
        data = f.read(DELETED_LIMIT + 1)
    if len(data) > DELETED_LIMIT:
        raise SourceError("%s in %s: too large" % (DELETED, image_dir))
    deleted = json.loads(data)
    if not isinstance(deleted, list):
        raise SourceError("%s: not a list" % DELETED)
    return deleted


class _Root:
    """The new rootfs, held open: every path in it is walked from its descriptor."""

    def __init__(self, rootfs):
        self.fd = fsutil.open_dir(os.path.realpath(rootfs))
        self.cached = None   # (parts, fd) of the last parent dir walked to
        self.dirs = []       # (parts, member): dir attributes, set once all is written

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.forget()
        os.close(self.fd)
        return False

    def forget(self):
        """Close the cached parent dir."""
        if self.cached:
            os.close(self.cached[1])
            self.cached = None

    def parent(self, what, parts, create=True):
        """The descriptor (owned by the cache) of the dir holding parts[-1]; missing dirs
        made (0755) when create. A symlink or non-directory on the way: GritError naming
        what."""
        key = tuple(parts[:-1])
        if self.cached and self.cached[0] == key:
            return self.cached[1]
        try:
            fd = fsutil.walk(self.fd, key, create=0o755 if create else None)
        except FileNotFoundError:
            if not create:
                raise
            raise SourceError("%s: its directory vanished while it was made" % what) from None
        except OSError as e:
            raise SourceError("%s: goes through a symlink or a non-directory in the rootfs "
                            "(%s); refused" % (what, e.strerror)) from None
        self.forget()
        self.cached = (key, fd)
        return fd

    def finish_dirs(self):
        """Owner, mode and mtime of the diff's dirs, deepest first, each through its fd."""
        self.forget()
        for parts, m in sorted(self.dirs, key=lambda x: -len(x[0])):
            try:
                fd = fsutil.walk(self.fd, parts)
            except OSError:
                continue  # removed by deleted.files or replaced meanwhile: nothing to set
            try:
                _set_attrs(fd, m)
            finally:
                os.close(fd)


def _member_parts(m):
    where = "%s: member %r" % (DIFF, m.name)
    try:
        parts = fsutil.confined_parts(m.name)
    except ValueError as e:
        raise SourceError("%s leaves the rootfs (%s)" % (where, e)) from None
    return where, parts


def _unpack(tar, root):
    """Write every member of tar into root. Returns how many there were."""
    n = 0
    for m in tar:
        n += 1
        where, parts = _member_parts(m)
        if m.isdev() or m.isfifo():
            raise SourceError("%s: device or fifo %r refused" % (DIFF, m.name))
        if not parts:
            if m.isdir():
                continue  # the rootfs itself: left as it is
            raise SourceError("%s is the rootfs itself" % where)
        if not (m.isreg() or m.isdir() or m.issym() or m.islnk()):
            raise SourceError("%s: unsupported type %r" % (where, m.type))
        dfd = root.parent(where, parts)
        try:
            _make(tar, root, dfd, parts, m, where)
        except OSError as e:
            raise SourceError("%s: %s" % (where, e.strerror or e)) from None
    return n


def _make(tar, root, dfd, parts, m, where):
    """Member m as the entry parts[-1] of its parent dir dfd: a dir merges into an existing
    one; anything else replaces what is there (removed first, never written through)."""
    name = parts[-1]
    if m.isdir():
        _make_dir(root, dfd, name, parts, m)
        return
    fsutil.remove_at(dfd, name)
    if m.isreg():
        _make_file(tar, dfd, name, m)
    elif m.issym():
        _make_symlink(dfd, name, m)
    else:
        _make_hardlink(root, dfd, name, m, where)


def _make_dir(root, dfd, name, parts, m):
    """An existing dir is kept (the diff's entries merge into it); anything else there is
    replaced by a new dir. Its attributes are set at the end (finish_dirs)."""
    st = fsutil.lstat_at(dfd, name)
    if st is None or not stat.S_ISDIR(st.st_mode):
        fsutil.remove_at(dfd, name)
        os.mkdir(name, 0o700, dir_fd=dfd)
    root.dirs.append((parts, m))


def _make_file(tar, dfd, name, m):
    """A new regular file (O_EXCL|O_NOFOLLOW under its parent's fd), its content from tar."""
    fd = fsutil.create_exclusive(dfd, name)
    with os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(tar.extractfile(m), out, 1 << 20)
        out.flush()
        _set_attrs(fd, m)


def _set_attrs(fd, m):
    """Owner, then mode (chown clears setuid bits), then mtime, through fd. Owner refused
    by the filesystem: left to root, and then no setuid/setgid bit."""
    mode = m.mode & 0o7777
    try:
        os.fchown(fd, m.uid, m.gid)
    except OSError:
        mode &= ~(stat.S_ISUID | stat.S_ISGID)
    os.fchmod(fd, mode)
    try:
        os.utime(fd, (m.mtime, m.mtime))
    except OSError:
        pass


def _make_symlink(dfd, name, m):
    """A symlink, created in place (its target is never followed by runc-grit)."""
    os.symlink(m.linkname, name, dir_fd=dfd)
    try:
        os.chown(name, m.uid, m.gid, dir_fd=dfd, follow_symlinks=False)
        os.utime(name, (m.mtime, m.mtime), dir_fd=dfd, follow_symlinks=False)
    except OSError:
        pass


def _make_hardlink(root, dfd, name, m, where):
    """A hard link to an entry of the rootfs, its path walked confined like any member's;
    a symlink there is linked itself, never followed."""
    try:
        src = fsutil.confined_parts(m.linkname)
    except ValueError as e:
        raise SourceError("%s: link to %r leaves the rootfs (%s)" % (where, m.linkname, e)) from None
    if not src:
        raise SourceError("%s: link to the rootfs itself" % where)
    try:
        sfd = fsutil.walk(root.fd, src[:-1])
    except OSError as e:
        raise SourceError("%s: link to %r: %s (a symlink or non-directory on its way is "
                        "refused)" % (where, m.linkname, e.strerror)) from None
    try:
        os.link(src[-1], name, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
    finally:
        os.close(sfd)


def _delete(root, rel):
    """Remove one deleted.files path from the rootfs: the entry itself (a dir with all it
    holds; a symlink, never its target); a path that is not there is left."""
    where = "%s: %r" % (DELETED, rel)
    try:
        parts = fsutil.confined_parts(rel)
    except ValueError as e:
        raise SourceError("%s leaves the rootfs (%s)" % (where, e)) from None
    if not parts:
        raise SourceError("%s is the rootfs itself" % where)
    try:
        dfd = root.parent(where, parts, create=False)
    except FileNotFoundError:
        return
    try:
        fsutil.remove_at(dfd, parts[-1])
    except OSError as e:
        raise SourceError("%s: %s" % (where, e.strerror or e)) from None
