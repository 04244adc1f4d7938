"""File operations that never follow a symlink someone else planted.

Atomic writes: a fresh temp name in the same directory, created O_EXCL|O_NOFOLLOW relative to
the directory's descriptor, fsync'd, renamed over the final name (a rename replaces a planted
symlink instead of writing through it), then the directory fsync'd.

Confined paths: a path inside a tree someone else controls (a container's rootfs) is walked
one component at a time from the tree's descriptor, each opened O_DIRECTORY|O_NOFOLLOW
relative to the one before: a symlink or a non-directory on the way fails the walk (ENOTDIR,
ELOOP) instead of leading out of the tree.
"""
import contextlib
import errno
import json
import os
import secrets
import shutil
import stat

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def open_dir(path, follow=False):
    """A descriptor of the directory at path. Its last component must not be a symlink
    (OSError ENOTDIR or ELOOP) unless follow; earlier components resolve as usual."""
    flags = DIR_FLAGS & ~os.O_NOFOLLOW if follow else DIR_FLAGS
    return os.open(path, flags)


def confined_parts(rel):
    """The components of rel, a path relative to some root, without '' and '.'. ValueError
    (saying why) when rel is absolute, holds a NUL or a '..', or is not a str."""
    if not isinstance(rel, str):
        raise ValueError("not a path")
    if "\0" in rel:
        raise ValueError("a NUL in the path")
    if rel.startswith("/"):
        raise ValueError("an absolute path")
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError("a '..' in the path")
    return parts


def walk(root_fd, parts, create=None):
    """A new descriptor of the directory reached from root_fd through parts, every component
    opened O_DIRECTORY|O_NOFOLLOW relative to the one before. A missing component is made
    with mkdir(mode=create) when create is not None, else FileNotFoundError. A symlink or a
    non-directory on the way: OSError (ENOTDIR or ELOOP)."""
    fd = os.dup(root_fd)
    try:
        for name in parts:
            nfd = _open_child_dir(fd, name, create)
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def _open_child_dir(dir_fd, name, create):
    try:
        return os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        if create is None:
            raise
    try:
        os.mkdir(name, create, dir_fd=dir_fd)
    except FileExistsError:
        pass  # made meanwhile: opened below, O_NOFOLLOW all the same
    return os.open(name, DIR_FLAGS, dir_fd=dir_fd)


def lstat_at(dir_fd, name):
    """lstat of name in dir_fd, or None when there is none."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def remove_at(dir_fd, name):
    """Remove whatever name is in dir_fd (a directory with everything under it; a symlink
    itself, never its target). Returns whether there was something."""
    st = lstat_at(dir_fd, name)
    if st is None:
        return False
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=dir_fd)  # fd-based on Linux: never leaves the tree
    else:
        os.unlink(name, dir_fd=dir_fd)
    return True


def open_regular(name, dir_fd=None, with_stat=False):
    """A descriptor open for reading of the regular file name (relative to dir_fd): opened
    O_PATH|O_NOFOLLOW first (no device, FIFO or link is ever opened for real: no side
    effect, no hang), checked with fstat, then reopened through /proc/self/fd, the same
    inode. with_stat: (descriptor, its stat). OSError: EINVAL, "not a regular file (a
    FIFO)" and the like, for anything not a regular file, a symlink included."""
    pfd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        st = os.fstat(pfd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file (%s)" % kind_of(st.st_mode), name)
        fd = os.open("/proc/self/fd/%d" % pfd, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    finally:
        os.close(pfd)
    return (fd, st) if with_stat else fd


def kind_of(mode):
    """What an inode is, in words ("a symlink", "a FIFO", ...)."""
    for test, name in ((stat.S_ISLNK, "a symlink"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISREG, "a regular file")):
        if test(mode):
            return name
    return "mode %o" % mode


def remove_links(dir_fd):
    """Remove every symlink, and every non-directory with more than one hard link, directly
    in dir_fd: names another program (CRIU) may open by name to write, taking the write
    elsewhere. Returns the names removed, sorted."""
    gone = []
    for name in sorted(os.listdir(dir_fd)):
        st = lstat_at(dir_fd, name)
        if st is None or stat.S_ISDIR(st.st_mode):
            continue
        if stat.S_ISLNK(st.st_mode) or st.st_nlink > 1:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=dir_fd)
            gone.append(name)
    return gone


def create_exclusive(dir_fd, name, mode=0o600):
    """A descriptor (write-only) of a new regular file name in dir_fd: O_CREAT|O_EXCL|
    O_NOFOLLOW, so an existing entry (a planted symlink included) fails it (EEXIST)."""
    return os.open(name, CREATE_FLAGS, mode, dir_fd=dir_fd)


def create_temp(dir_fd, name):
    """(descriptor, temp name) of a new file '.NAME.RANDOM.tmp' in dir_fd, made with
    create_exclusive: a name someone else took first is never reused."""
    for _ in range(100):
        tmp = ".%s.%s.tmp" % (name, secrets.token_hex(6))
        try:
            return create_exclusive(dir_fd, tmp), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temp name", name)


@contextlib.contextmanager
def replacing(dir_fd, name, mode=0o644):
    """A binary file to write name's new content to; when the block ends without an error it
    is chmod'ed to mode, fsync'd and renamed over name in dir_fd (replacing, never following,
    what was there), and dir_fd fsync'd. On an error the temp file is removed."""
    fd, tmp = create_temp(dir_fd, name)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    os.fsync(dir_fd)


def write_atomic_at(dir_fd, name, data, mode=0o644):
    """Replace name in the directory dir_fd with data (bytes or str), atomically."""
    if isinstance(data, str):
        data = data.encode()
    with replacing(dir_fd, name, mode) as f:
        f.write(data)


def _json(obj, indent):
    return json.dumps(obj, indent=indent, sort_keys=False) + "\n"


def write_json_atomic_at(dir_fd, name, obj, mode=0o644, indent=None):
    write_atomic_at(dir_fd, name, _json(obj, indent), mode)


def write_atomic(path, data, mode=0o644):
    """Replace the file at path with data, atomically (path's directory resolved as usual;
    a symlink at path itself is replaced, not followed)."""
    d = os.path.dirname(os.path.abspath(path))
    dfd = open_dir(d, follow=True)
    try:
        write_atomic_at(dfd, os.path.basename(path), data, mode)
    finally:
        os.close(dfd)


def write_json_atomic(path, obj, mode=0o644, indent=None):
    write_atomic(path, _json(obj, indent), mode)
