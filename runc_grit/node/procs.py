"""Running the delegate runtime (and CRIU) as a child process.

The child inherits our stdio, which on runc paths is the container's. It gets SIGKILL if
runc-grit dies (PR_SET_PDEATHSIG), so a killed runc-grit never leaves a runtime running on
its own; SIGTERM/SIGINT/SIGHUP that reach runc-grit are passed on to it.
"""
import ctypes
import os
import signal
import subprocess

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
_libc = None


def become_subreaper():
    """Orphans below us (the tasks CRIU restores as runc's siblings, once runc exits) become
    our children instead of init's, so a failed restore can be cleaned up: kill_adopted()."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        return _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except Exception:  # noqa: BLE001
        return False


def kill_adopted():
    """SIGKILL and reap our children that live in another pid namespace (a container's
    tasks we adopted as subreaper). Returns their pids."""
    me, own_ns = os.getpid(), os.readlink("/proc/self/ns/pid")
    killed = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        try:
            with open("/proc/%d/stat" % pid, "rb") as f:
                data = f.read()
            if int(data[data.rfind(b")") + 2:].split()[1]) != me:
                continue
            if os.readlink("/proc/%d/ns/pid" % pid) == own_ns:
                continue
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except (OSError, ValueError):
            continue
    for pid in killed:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    return killed


def _pdeathsig():
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except Exception:  # noqa: BLE001 - best effort in the child
        pass


def import_path():
    """This process's import path, for the Python children runc-grit starts with -S
    (the hook, the guard): they get it through PYTHONPATH instead of a site scan."""
    import sys
    return os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))


def _start_guard(job, env):
    """runc_grit.guard beside us, on a pipe only we hold (see guard.py). Returns its fd."""
    import json
    import sys
    r, w = os.pipe()
    genv = dict(env if env is not None else os.environ)
    genv["PYTHONPATH"] = genv.get("RUNC_GRIT_PYTHONPATH") or import_path()
    try:
        subprocess.Popen([sys.executable, "-S", "-m", "runc_grit.node.guard", json.dumps(job)],
                         stdin=r, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env=genv, close_fds=True, start_new_session=True)
    except OSError:
        os.close(w)
        w = None
    os.close(r)
    return w


def _tell(fd, text):
    if fd is not None:
        try:
            os.write(fd, text.encode())
        except OSError:
            pass


class guarded:
    """A guard over a whole sequence of steps in this process (not one child's group): if
    runc-grit dies inside the block, runc_grit.guard rolls `job` back. Our children die with
    us (PR_SET_PDEATHSIG), so there is no process group to kill ("pgid 0")."""

    def __init__(self, job, env=None):
        self.job, self.env, self.fd = job, env, None

    def __enter__(self):
        self.fd = _start_guard(self.job, self.env)
        _tell(self.fd, "pgid 0\n")
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            _tell(self.fd, "ok\n")
            os.close(self.fd)
        return False


def run(argv, env=None, quiet=False, capture=False, timeout=None, guard=None, pass_fds=()):
    """Run argv; return (returncode, stdout bytes or None).
    guard: a job for runc_grit.guard (kind, cid, state_dir, runtime, globals): argv then runs
    in a process group of its own, which the guard kills, and rolls back, if we die first.
    pass_fds: descriptors of ours the child keeps (runc's --status-fd)."""
    kwargs = {"env": env, "preexec_fn": _pdeathsig, "close_fds": True,
              "pass_fds": tuple(pass_fds)}
    guard_fd = None
    if guard is not None:
        guard_fd = _start_guard(guard, env)
        kwargs["start_new_session"] = True
    if quiet or capture:
        kwargs["stdin"] = subprocess.DEVNULL
        kwargs["stdout"] = subprocess.PIPE if capture else subprocess.DEVNULL
        kwargs["stderr"] = subprocess.DEVNULL
    try:
        proc = subprocess.Popen(argv, **kwargs)
    except OSError as e:
        _tell(guard_fd, "ok\n")
        if guard_fd is not None:
            os.close(guard_fd)
        return 127, (str(e).encode() if capture else None)
    _tell(guard_fd, "pgid %d\n" % proc.pid)
    forwarded = {}

    def forward(signum, _frame):
        try:
            proc.send_signal(signum)
        except OSError:
            pass

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        try:
            forwarded[s] = signal.signal(s, forward)
        except (ValueError, OSError):
            pass
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        return 124, out
    finally:
        for s, h in forwarded.items():
            signal.signal(s, h)
        if guard_fd is not None:
            _tell(guard_fd, "ok\n")
            os.close(guard_fd)
    return proc.returncode, out


def alive(pid):
    """pid runs (exists and is not a zombie)."""
    try:
        with open("/proc/%d/stat" % int(pid), "rb") as f:
            data = f.read()
    except (OSError, ValueError, TypeError):
        return False
    return data[data.rfind(b")") + 2:][:1] not in (b"Z", b"X", b"")


def version_of(binary, flag="--version", cache_dir=None):
    """First version-looking word of `binary --version` (runc, crun, runsc, criu).
    With cache_dir: remembered per binary (path, size, mtime) in cache_dir/versions.json,
    which keeps two process starts out of every checkpoint."""
    if cache_dir:
        return _cached_version(binary, flag, cache_dir)
    rc, out = run([binary, flag], capture=True, timeout=20)
    if rc != 0 or not out:
        return None
    text = out.decode("utf-8", "replace")
    for line in text.splitlines():
        low = line.lower()
        if low.startswith("version:"):
            return line.split(":", 1)[1].strip()
        if " version " in low:
            return line.split(" version ", 1)[1].split()[0]
    return text.split()[0] if text.split() else None


def _cached_version(binary, flag, cache_dir):
    import json
    from runc_grit.fsutil import write_json_atomic
    try:
        st = os.stat(binary)
    except OSError:
        return version_of(binary, flag)
    key = "%s %s %d %d" % (os.path.realpath(binary), flag, st.st_size, st.st_mtime_ns)
    path = os.path.join(cache_dir, "versions.json")
    try:
        with open(path) as f:
            cache = json.load(f)
        if not isinstance(cache, dict):
            cache = {}
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return cache[key]
    v = version_of(binary, flag)
    if v is not None:
        cache = {k: c for k, c in cache.items() if not k.startswith(os.path.realpath(binary) + " ")}
        cache[key] = v
        try:
            os.makedirs(cache_dir, exist_ok=True)
            write_json_atomic(path, cache)
        except OSError:
            pass
    return v
