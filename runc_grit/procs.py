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
_libc = None


def _pdeathsig():
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except Exception:  # noqa: BLE001 - best effort in the child
        pass


def run(argv, env=None, quiet=False, capture=False, timeout=None):
    """Run argv; return (returncode, stdout bytes or None)."""
    kwargs = {"env": env, "preexec_fn": _pdeathsig, "close_fds": True}
    if quiet or capture:
        kwargs["stdin"] = subprocess.DEVNULL
        kwargs["stdout"] = subprocess.PIPE if capture else subprocess.DEVNULL
        kwargs["stderr"] = subprocess.DEVNULL
    try:
        proc = subprocess.Popen(argv, **kwargs)
    except OSError as e:
        return 127, (str(e).encode() if capture else None)
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
    return proc.returncode, out


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
