"""What runc-grit verifies is what CRIU reads: no time between the check and the use.

A checkpoint root is typically a volume that pods and other nodes write to. A file replaced
or rewritten after runc-grit verified it, and before CRIU (as root) reads it, would be
restored unverified. Config `staging` chooses the defence:

  copy   the manifest's files are copied into a fresh root-only dir on this node
         (`staging_dir`), and the signature, the digests, the image checks and the privilege
         check all read that copy; CRIU restores from it; it is removed afterwards. A file
         changed in the source after the copy is never read again.
  none   the image dir is used in place, and refused unless it, each of its parents up to
         the checkpoint root, and every file in it belong to root and are writable by no one
         else (no hard links either), on a local filesystem: only root could swap a file,
         and root could run CRIU.
  auto   (default) in place where `none` would accept the dir, else a copy: a node-local,
         root-only checkpoint root is read where it is (no 18 GB copy on a GPU restore); a
         shared volume (network filesystem) or a dir a pod's user could write is copied.

copy uses copy_file_range (in-kernel; a reflink where the filesystem has them), every
256 MiB piece of every file in parallel, from descriptors opened once (checkpoint.imagedir):
a file that is not regular or not of the manifest's size is refused before anything is read.
"""
import errno
import os
import shutil
import stat
import tempfile
from concurrent.futures import ThreadPoolExecutor

from runc_grit.errors import SourceError


PIECE = 256 << 20  # large files are copied in pieces of this size, in parallel


def _copy_range(job):
    """Copy [offset, offset+length) of the open file fi into dst (already created)."""
    fi, dst, offset, length = job
    fo = os.open(dst, os.O_WRONLY | os.O_CLOEXEC)
    try:
        end = offset + length
        in_kernel = True
        while offset < end:
            if in_kernel:
                try:
                    n = os.copy_file_range(fi, fo, end - offset, offset, offset)
                except OSError as e:
                    if e.errno not in (errno.EXDEV, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                        raise
                    in_kernel = False  # another filesystem (older kernels): sendfile
                    continue
            else:
                os.lseek(fo, offset, os.SEEK_SET)
                n = os.sendfile(fo, fi, offset, end - offset)
            if n == 0:
                break
            offset += n
    finally:
        os.close(fo)


PREFIX = "restore-"


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep(staging_dir, dry_run=False):
    """Remove the copies of restores whose runc-grit is gone (killed mid-restore): every
    `restore-<pid>-*` dir whose pid no longer runs. Returns their paths."""
    gone = []
    try:
        names = os.listdir(staging_dir)
    except OSError:
        return gone
    for name in names:
        parts = name.split("-")
        if not name.startswith(PREFIX) or len(parts) < 3 or not parts[1].isdigit():
            continue
        if int(parts[1]) != os.getpid() and not pid_alive(int(parts[1])):
            path = os.path.join(staging_dir, name)
            if not dry_run:
                shutil.rmtree(path, ignore_errors=True)
            gone.append(path)
    return gone


def stage(src, items, staging_dir, where, manifest_bytes=None, manifest_name=None):
    """A root-only copy of the image dir src (an imagedir.ImageDir): items = [(name, size)],
    each opened once through src's descriptor, refused unless a regular file of exactly that
    size, and copied from that descriptor (never more than size bytes). manifest_bytes: the
    manifest as verified, written into the copy as manifest_name. Returns the new dir;
    GritError (and nothing left behind) when a copy fails. (Copies of killed restores: the
    caller sweeps them, source.validate before every restore.)"""
    try:
        os.makedirs(staging_dir, mode=0o700, exist_ok=True)
        os.chmod(staging_dir, 0o700)
        dest = tempfile.mkdtemp(prefix="%s%d-" % (PREFIX, os.getpid()), dir=staging_dir)
    except OSError as e:
        raise SourceError("%s: staging dir %s: %s" % (where, staging_dir, e.strerror)) from None
    jobs, fds = [], []
    try:
        for name, size in items:
            fd, st = src.open_regular(name, size=size)
            fds.append(fd)
            dst = os.path.join(dest, name)
            os.close(os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o600))
            jobs += [(fd, dst, off, min(PIECE, size - off)) for off in range(0, size, PIECE)]
        with ThreadPoolExecutor(max(1, min(os.cpu_count() or 1, len(jobs) or 1))) as pool:
            list(pool.map(_copy_range, jobs))
        if manifest_bytes is not None:
            fd = os.open(os.path.join(dest, manifest_name),
                         os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(manifest_bytes)
    except OSError as e:
        shutil.rmtree(dest, ignore_errors=True)
        hint = ("; hint: no space left on the device of staging_dir %s: free space there, or "
                "point staging_dir at a larger one" % staging_dir
                if e.errno in (errno.ENOSPC, errno.EDQUOT) else "")
        raise SourceError("%s: copying %s into the staging dir: %s%s"
                        % (where, getattr(e, "filename", "") or src.path, e.strerror, hint)) from None
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    finally:
        for fd in fds:
            os.close(fd)
    return dest


def _root_only(path, st):
    return st.st_uid == 0 and not st.st_mode & 0o022


# filesystems other machines (or pods elsewhere) can write to: never trusted in place
SHARED_FS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "9p", "glusterfs", "lustre", "gpfs",
             "afs", "virtiofs", "fuse")


def mount_of(path, mountinfo=None):
    """(fstype, super options) of the mount that holds path, from /proc/self/mountinfo's text
    (read when not given); of mounts stacked on one point, the last (the visible one) wins."""
    from runc_grit.node import mountinfo as _mountinfo
    mounts = _mountinfo.read() if mountinfo is None else _mountinfo.parse(mountinfo)
    if mounts is None:
        return None, ""
    path = os.path.realpath(path)
    best = None
    for m in mounts:
        mnt = m.mountpoint
        if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and \
                (best is None or len(mnt) >= len(best.mountpoint)):
            best = m
    return (best.fstype, ",".join(best.super_options)) if best else (None, "")


def fs_type(path):
    """The filesystem type of the mount holding path."""
    return mount_of(path)[0]


def in_place_problem(image_dir, root):
    """Why image_dir may not be used in place (a sentence), or None: someone other than root
    could change it, or it is on a shared filesystem."""
    kind = fs_type(image_dir) or ""
    if kind.split(".")[0] in SHARED_FS:
        return "%s is on a %s filesystem, which other machines can write" % (image_dir, kind)
    d = image_dir
    while True:
        st = os.lstat(d)
        if not _root_only(d, st):
            return "%s is owned by uid %d with mode %o" % (d, st.st_uid, st.st_mode & 0o7777)
        if d == root or os.path.dirname(d) == d:
            break
        d = os.path.dirname(d)
    for name in os.listdir(image_dir):
        p = os.path.join(image_dir, name)
        st = os.lstat(p)
        if stat.S_ISREG(st.st_mode) and (not _root_only(p, st) or st.st_nlink > 1):
            return "%s is owned by uid %d with mode %o and %d links" % (
                p, st.st_uid, st.st_mode & 0o7777, st.st_nlink)
    return None


def check_in_place(image_dir, root, where):
    """staging: none. Refuse an image dir that anyone but root could change (the dir and its
    parents up to the checkpoint root, every file, no hard links) or on a shared filesystem."""
    why = in_place_problem(image_dir, root)
    if why:
        raise SourceError("%s: %s: someone other than root could swap the images after they are "
                        "verified (staging: none needs a root-only, local checkpoint root)"
                        % (where, why))


def discard(path, staging_dir):
    """Remove a staged copy (only ever one under staging_dir)."""
    if path and os.path.dirname(path) == os.path.abspath(staging_dir):
        shutil.rmtree(path, ignore_errors=True)
