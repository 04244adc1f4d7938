"""The delegate OCI runtime's binary (runc, crun, nvidia-container-runtime, runsc) as
runc-grit calls it: its path, the flags every call carries, and the calls runc-grit makes for
its own bookkeeping (state, pause, resume, delete --force). What the runtime *can do* is the
Runtime strategy's business (runtimes.base)."""
import json
import os
import sys

from runc_grit import fastconf
from runc_grit.errors import NotFoundError
from runc_grit.node import procs


class Delegate:
    def __init__(self, name, globals_=()):
        self.name = name
        me = sys.argv[0] if sys.argv and sys.argv[0] else None
        self.path = fastconf.which(os.environ.get("RUNC_GRIT_RUNTIME") or name, skip=me)
        if self.path is None:
            raise NotFoundError("runtime %r not found on PATH" % name)
        self.globals = list(globals_)  # rendered global flags, passed on every call
        self.flags = []  # the config's runtime_flags, in front of every command

    @classmethod
    def at(cls, path, globals_=()):
        """The runtime at a known path (no PATH search), with these global flags."""
        rt = cls.__new__(cls)
        rt.name, rt.path, rt.globals = os.path.basename(path), path, list(globals_)
        rt.flags = []
        return rt

    def command(self, args):
        """argv for one of the commands runc-grit handles: binary, runtime_flags, args."""
        return [self.path] + self.flags + list(args)

    def describe(self, cache_dir=None):
        """The runtime as a manifest records it: name, path, version."""
        return {"name": os.path.basename(self.path), "path": self.path,
                "version": procs.version_of(self.path, cache_dir=cache_dir)}

    def argv(self, args):
        return [self.path] + list(args)

    def state(self, cid):
        """`runtime state` as a dict, or None when the runtime does not know the container."""
        rc, out = procs.run(self.argv(_drop_log(self.globals) + ["state", cid]), capture=True,
                            timeout=60)
        if rc != 0 or not out:
            return None
        try:
            return json.loads(out)
        except ValueError:
            return None

    def quiet_globals(self):
        return _drop_log(self.globals)

    def pause(self, cid):
        return procs.run(self.argv(self.quiet_globals() + ["pause", cid]), quiet=True,
                         timeout=60)[0]

    def resume(self, cid):
        """Thaw a paused (frozen) container."""
        return procs.run(self.argv(self.quiet_globals() + ["resume", cid]), quiet=True,
                         timeout=60)[0]

    def guard_job(self, kind, st, **extra):
        """What runc_grit.guard needs to roll back a `kind` (checkpoint|restore) of st."""
        job = {"kind": kind, "cid": st.id, "state_dir": st.dir, "runtime": self.path,
               "globals": self.quiet_globals()}
        job.update(extra)
        return job

    def root(self):
        """The runtime's --root (runc's default when not given)."""
        root = None
        g = self.globals
        for i, tok in enumerate(g):
            if tok == "--root" and i + 1 < len(g):
                root = g[i + 1]
            elif tok.startswith("--root="):
                root = tok.split("=", 1)[1]
        return root or "/run/runc"

    def release_restore_mounts(self, cid):
        """runc (1.1) bind-mounts the rootfs at <root>/<id>/criu-root for CRIU and leaves it
        mounted when CRIU dies during a restore: unmount it (lazily) and remove the dirs, so a
        failed restore leaves no mount behind. Returns True when something was unmounted."""
        import ctypes
        base = os.path.join(self.root(), cid)
        path = os.path.realpath(os.path.join(base, "criu-root"))
        if not _mounted(path):  # (a bind mount of the same fs: os.path.ismount misses it)
            return False
        libc = ctypes.CDLL(None, use_errno=True)
        libc.umount2(path.encode(), 2)  # MNT_DETACH
        for d in (path, base):
            try:
                os.rmdir(d)
            except OSError:
                break
        return True

    def force_delete(self, cid):
        rc, _ = procs.run(self.argv(_drop_log(self.globals) + ["delete", "--force", cid]),
                          quiet=True, timeout=60)
        return rc


def _mounted(path):
    """Is path a mount point (per /proc/self/mountinfo)?"""
    from runc_grit.node import mountinfo
    return any(m.mountpoint == path for m in mountinfo.read() or ())


def _drop_log(globals_):
    """Our own bookkeeping calls do not write into containerd's log file."""
    out, skip = [], False
    for tok in globals_:
        if skip:
            skip = False
            continue
        if tok in ("--log", "--log-format"):
            skip = True
            continue
        out.append(tok)
    return out
