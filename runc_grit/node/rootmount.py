"""A restored container's root mount, read-only where its spec says so.

CRIU 4.1 restores a container whose spec (and image) make the root read-only with a writable
root (plain `runc restore` does the same; CRIU 4.2 gets it right): more than the spec grants,
and nothing in the image to refuse beforehand. So at CRIU's post-restore (tasks restored, not
yet running) the root is remounted read-only from inside the container's mount namespace (a
forked child that joins it), and after the restore runc-grit checks the restored init's root.
"""
import ctypes
import os

from runc_grit.errors import RestoreError

CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND = 32, 4096
OPTION_BITS = {"ro": MS_RDONLY, "nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC}


def root_options(pid):
    """The per-mount options of pid's root mount (its mountinfo's "/" line), or None."""
    from runc_grit.node import mountinfo
    roots = [m for m in mountinfo.read(int(pid)) or () if m.mountpoint == "/"]
    return roots[-1].options if roots else None  # the last "/" is the visible one


def is_readonly(pid):
    opts = root_options(pid)
    return opts is not None and "ro" in opts


def wanted(spec):
    return bool(((spec or {}).get("root") or {}).get("readonly"))


def make_readonly(pid):
    """Remount pid's root read-only (keeping its nosuid/nodev/noexec), from a child that
    joins pid's mount namespace. True when it was writable and now is not."""
    opts = root_options(pid)
    if opts is None:
        raise RestoreError("the restored container's root mount cannot be read")
    if "ro" in opts:
        return False
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY
    for o in opts:
        flags |= OPTION_BITS.get(o, 0) & ~MS_RDONLY
    ns = os.open("/proc/%d/ns/mnt" % int(pid), os.O_RDONLY | os.O_CLOEXEC)
    child = os.fork()
    if child == 0:  # pragma: no cover - the child only reports through its exit status
        code = 1
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.setns(ns, CLONE_NEWNS) == 0 and \
                    libc.mount(None, b"/", None, ctypes.c_ulong(flags), None) == 0:
                code = 0
            else:
                code = min(ctypes.get_errno(), 125) or 1
        finally:
            os._exit(code)
    os.close(ns)
    _, status = os.waitpid(child, 0)
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0 or not is_readonly(pid):
        raise RestoreError("cannot make the restored container's root read-only as its spec says "
                        "(%s)" % (os.strerror(rc) if rc > 0 else "status %d" % rc))
    return True
