"""runc-grit's per-container state under state_dir, one directory per container id.

Layout of <state_dir>/<id>/:
  lock          flock'ed by every runc-grit call that changes this container's state
  state.json    what runc-grit knows: restored from where, started or not, bundle
  restored      present between a restore-on-create and its `start` (checked by the fast path)
  criu.conf     the container's CRIU config (named by the org.criu.config annotation)
  cuda.json     CUDA processes the action script locked/checkpointed (GPU epilogue reads it)
Calls for different containers never share a lock, so they run concurrently.
"""
import errno
import fcntl
import json
import os
import re
import shutil

from runc_grit.errors import UsageError
from runc_grit.fsutil import write_json_atomic

ID_RE = re.compile(r"^[\w+\-.]+$")
RESTORED_MARK = "restored"
# runsc: the source of a checkpoint, its sandbox killed while paused; runsc still calls it
# "paused" until a forced delete (which takes a second, so it is left to the caller's delete)
STOPPED_MARK = "stopped-by-checkpoint"


def check_id(cid):
    if not cid or not ID_RE.match(cid) or cid in (".", ".."):
        raise UsageError("invalid container id %r" % (cid,))
    return cid


class ContainerState:
    def __init__(self, state_dir, cid):
        self.root = state_dir
        self.id = check_id(cid)
        self.dir = os.path.join(state_dir, cid)
        self._lock_fd = None

    # -- locking --------------------------------------------------------------------------
    def __enter__(self):
        self.lock()
        return self

    def __exit__(self, *exc):
        self.unlock()

    def lock(self):
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        fd = os.open(os.path.join(self.dir, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._lock_fd = fd

    def unlock(self):
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- files ----------------------------------------------------------------------------
    def path(self, name):
        return os.path.join(self.dir, name)

    def exists(self):
        return os.path.isdir(self.dir)

    def read(self, name="state.json", default=None):
        try:
            with open(self.path(name)) as f:
                return json.load(f)
        except (OSError, ValueError):
            return default

    def write(self, obj, name="state.json"):
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        write_json_atomic(self.path(name), obj, mode=0o600)

    def update(self, **fields):
        data = self.read() or {}
        data.update(fields)
        self.write(data)
        return data

    def mark_restored(self):
        with open(self.path(RESTORED_MARK), "w"):
            pass

    def take_restored_mark(self):
        """True once after a restore-on-create: `start` then succeeds without the runtime."""
        try:
            os.unlink(self.path(RESTORED_MARK))
            return True
        except FileNotFoundError:
            return False

    def remove(self):
        """Delete the container's state. Safe while holding the lock (flock is on the fd)."""
        try:
            shutil.rmtree(self.dir)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise


def list_ids(state_dir):
    """Ids of the containers runc-grit holds state for (a dir with a lock file; not the
    shared dirs beside them, such as the CRIU configs)."""
    try:
        names = os.listdir(state_dir)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if os.path.isfile(os.path.join(state_dir, n, "lock")))
