"""Pulled checkpoints, kept by the digest of their image manifest.

`<cache_dir>/sha256-<hex>/` holds exactly the files a signed manifest lists, each verified
against it while it streamed; it gets that name only once complete (a rename), so a dir of
that name is a whole checkpoint. The memory pages (pages-N.img) of a pull for a restore whose
runtime gates the resume are checked against the signed digests beside CRIU instead
(checkpoint.pagecheck), not while they stream: `sha256-<hex>.pages-verified` beside the entry
says a check of its pages passed, and an entry without it has its pages checked by every
restore that reads it; one whose pages fail is evicted. Pulls in progress are
`.incoming-<pid>-*` (a killed pull's is swept). A restore holds a shared lock on the entry
while CRIU reads it; trimming (after each pull, and `runc-grit gc`) removes the least
recently used entries (with their marks) beyond cache_bytes, never a locked one. The dir is
root-only, under the staging dir by default.
"""
import fcntl
import os
import shutil
import tempfile

from runc_grit.errors import RegistryError

INCOMING = ".incoming-"
VERIFIED = ".pages-verified"


def cache_dir(conf):
    d = (conf.registry or {}).get("cache_dir") or os.path.join(conf.staging_dir, "oci-cache")
    if os.path.realpath(d) == os.path.realpath(conf.staging_dir):
        # every restore's release empties the staging dir's copies: it would remove entries
        raise RegistryError("registry.cache_dir %s is the staging dir; give it a dir of its own"
                            % d)
    return d


def ensure(path):
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.lstat(path)
        if st.st_uid != os.getuid() or st.st_mode & 0o077:
            os.chmod(path, 0o700)
    except OSError as e:
        raise RegistryError("registry cache %s: %s" % (path, e.strerror)) from None
    return path


def entry(root, digest):
    return os.path.join(root, digest.replace(":", "-"))


def incoming(root):
    return tempfile.mkdtemp(prefix="%s%d-" % (INCOMING, os.getpid()), dir=root)


def commit(tmp, final):
    """Give a complete pull its name; if another pull got there first, keep that one.
    Returns whether this pull's dir got the name (False: final is the other pull's, whose
    checks this pull did not make)."""
    won = True
    try:
        os.rename(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.isdir(final):
            raise
        won = False
    os.utime(final)
    return won


def _mark(path):
    return path.rstrip("/") + VERIFIED


def pages_verified(path):
    """Whether a check of the entry's page images against the signed digests passed."""
    return os.path.isfile(_mark(path)) and not os.path.islink(_mark(path))


def mark_pages_verified(path):
    """Best effort: an entry left unmarked only has its pages checked again."""
    try:
        fd = os.open(_mark(path), os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        os.close(fd)
    except OSError:
        pass


def unmark(path):
    try:
        os.unlink(_mark(path))
    except FileNotFoundError:
        pass


def remove(path):
    """An entry and its mark gone (the caller holds its exclusive lock)."""
    unmark(path)
    shutil.rmtree(path, ignore_errors=True)


def evict(path):
    """Remove an entry whose pages failed their check, unless another restore reads it now
    (that one checks them too). True when removed."""
    unmark(path)  # whether or not it can go now: its pages are not trusted
    fd = lock(path, exclusive=True, wait=False)
    if fd is None:
        return False
    try:
        remove(path)
    finally:
        unlock(fd)
    return True


def lock(path, exclusive=False, wait=True):
    """An open fd holding a flock on the entry (shared: in use), or None (not got, no wait)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
                    | (0 if wait else fcntl.LOCK_NB))
        st, now = os.fstat(fd), os.lstat(path)
    except OSError:
        os.close(fd)
        return None
    if (st.st_dev, st.st_ino) != (now.st_dev, now.st_ino):
        os.close(fd)  # removed (and perhaps made again) while this waited: not the one locked
        return None
    return fd


def unlock(fd):
    if fd is not None:
        os.close(fd)


def _pid_gone(name):
    from runc_grit.checkpoint.staging import pid_alive
    pid = name[len(INCOMING):].split("-", 1)[0]
    return pid.isdigit() and not pid_alive(int(pid))


def _size(path):
    total = 0
    for name in os.listdir(path):
        try:
            total += os.lstat(os.path.join(path, name)).st_blocks * 512
        except OSError:
            pass
    return total


def trim(root, limit, keep=(), dry_run=False):
    """Remove killed pulls' dirs, then entries (least recently used first) until the cache
    holds at most limit bytes; locked entries and those in keep stay. Returns removed paths."""
    removed = []
    try:
        names = os.listdir(root)
    except OSError:
        return removed
    entries = []
    for name in names:
        p = os.path.join(root, name)
        if name.startswith(INCOMING):
            if _pid_gone(name):
                removed.append(p)
                if not dry_run:
                    shutil.rmtree(p, ignore_errors=True)
        elif name.startswith("sha256-") and os.path.isdir(p) and not os.path.islink(p):
            entries.append((os.lstat(p).st_mtime, p, _size(p)))
        elif name.startswith("sha256-") and name.endswith(VERIFIED) and \
                not os.path.isdir(p[:-len(VERIFIED)]):
            if not dry_run:  # the mark of an entry gone
                try:
                    os.unlink(p)
                except OSError:
                    pass
    total = sum(s for _, _, s in entries)
    for _, p, size in sorted(entries):
        if total <= limit:
            break
        if p in keep:
            continue
        fd = lock(p, exclusive=True, wait=False)
        if fd is None:
            continue
        try:
            removed.append(p)
            if not dry_run:
                remove(p)
            total -= size
        finally:
            unlock(fd)
    return removed
