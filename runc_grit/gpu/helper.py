"""A CUDA checkpoint helper: the builtin one (driver API in-process) or a binary with NVIDIA's
cuda-checkpoint CLI (``cuda.helper: /path``). Both answer the same five questions.

``state(pid)`` returns None for a process that is not a CUDA process: that is how discovery
asks which of a container's processes use CUDA, instead of guessing from file names.
"""
import subprocess

from runc_grit.errors import GritError, GpuError


def for_each(pids, step):
    """step(pid) for every pid at once, one thread each: the driver copies each process's
    memory on its own, so N processes take about as long as the largest, not the sum. Waits
    for every step, then raises the failure of the lowest pid if any failed (no step is left
    running behind an error); returns the pids."""
    import threading
    pids = list(pids)
    if len(pids) <= 1:
        for p in pids:
            step(p)
        return pids
    errors = {}

    def run(p):
        try:
            step(p)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            errors[p] = e

    threads = [threading.Thread(target=run, args=(p,), daemon=True) for p in pids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[sorted(errors)[0]]
    return pids


def _die_with_parent():
    from runc_grit.node.procs import _pdeathsig
    _pdeathsig()


class Helper:
    name = "helper"

    def may_be_cuda(self, pid):
        """Whether pid can be a CUDA process, told without it running (it may be frozen, and
        CUDA's own calls on frozen processes wait for their timeout). True unless known not."""
        return True

    def state(self, pid):
        raise NotImplementedError

    def lock(self, pid, timeout_ms):
        raise NotImplementedError

    def checkpoint(self, pid):
        raise NotImplementedError

    def restore(self, pid, device_map=()):
        raise NotImplementedError

    def unlock(self, pid):
        raise NotImplementedError

    def suspend(self, pid, timeout_ms, state=None):
        """Lock, then checkpoint, from wherever pid is (state: already asked). Returns the
        state after: "checkpointed" unless a step could not be taken."""
        s = self.state(pid) if state is None else state
        if s == "running":
            self.lock(pid, timeout_ms)
            s = self.state(pid)
        if s == "locked":
            self.checkpoint(pid)
            s = self.state(pid)
        return s

    def resume(self, pid, state=None):
        """Restore, then unlock, from wherever pid is (state: already asked). Returns the
        state after: "running" unless a step could not be taken (None: not a CUDA process)."""
        s = self.state(pid) if state is None else state
        if s == "checkpointed":
            self.restore(pid)
            s = self.state(pid)
        if s == "locked":
            self.unlock(pid)
            s = self.state(pid)
        return s


class BuiltinHelper(Helper):
    name = "builtin"

    def __init__(self, library="libcuda.so.1"):
        from runc_grit.gpu.driver import CudaError, open_backend
        try:
            self.api = open_backend(library)
        except (OSError, CudaError) as e:
            raise GpuError("CUDA driver API unavailable (%s): %s" % (library, e)) from None
        self.name = "builtin/" + self.api.name

    def _do(self, fn, *a):
        from runc_grit.gpu.driver import CudaError
        try:
            return fn(*a)
        except CudaError as e:
            raise GpuError(str(e)) from None

    def may_be_cuda(self, pid):
        from runc_grit.gpu.discovery import holds_nvidia_device
        return holds_nvidia_device(pid)

    def state(self, pid):
        from runc_grit.gpu.driver import CudaError
        try:
            return self.api.get_state(pid)
        except CudaError:
            return None

    def lock(self, pid, timeout_ms):
        self._do(self.api.lock, pid, timeout_ms)

    def checkpoint(self, pid):
        self._do(self.api.checkpoint, pid)

    def restore(self, pid, device_map=()):
        self._do(self.api.restore, pid, list(device_map))

    def unlock(self, pid):
        self._do(self.api.unlock, pid)


class BinaryHelper(Helper):
    """Runs a binary with cuda-checkpoint's flags: --get-state, --action A, --pid, --timeout,
    --device-map."""

    def __init__(self, path):
        self.path = path
        self.name = path

    def argv(self, args):
        return [self.path] + [str(a) for a in args]

    def _run(self, *args, check=True):
        try:
            # dies with runc-grit: the crash guard then finds the state it left and undoes it
            p = subprocess.run(self.argv(args), stdin=subprocess.DEVNULL,
                               capture_output=True, timeout=600, preexec_fn=_die_with_parent)
        except OSError as e:
            raise GpuError("cuda helper %s: %s" % (self.name, e.strerror)) from None
        if check and p.returncode != 0:
            msg = (p.stderr or p.stdout).decode("utf-8", "replace").strip().splitlines()
            raise GpuError("cuda helper %s %s failed: %s" % (self.name, " ".join(map(str, args)),
                            msg[-1] if msg else "exit %d" % p.returncode))
        return p

    def state(self, pid):
        p = self._run("--get-state", "--pid", pid, check=False)
        if p.returncode != 0:
            return None
        out = p.stdout.decode().strip().split()
        return out[-1] if out else None

    def lock(self, pid, timeout_ms):
        self._run("--action", "lock", "--pid", pid, "--timeout", timeout_ms)

    def checkpoint(self, pid):
        self._run("--action", "checkpoint", "--pid", pid)

    def restore(self, pid, device_map=()):
        args = ["--action", "restore", "--pid", pid]
        if device_map:
            args += ["--device-map", ",".join("%s=%s" % p for p in device_map)]
        self._run(*args)

    def unlock(self, pid):
        self._run("--action", "unlock", "--pid", pid)


def make(cuda_conf):
    helper = cuda_conf.get("helper", "builtin")
    if helper == "builtin":
        return BuiltinHelper(cuda_conf.get("library", "libcuda.so.1"))
    return BinaryHelper(helper)


def for_config(conf, required=False):
    """The configured helper, or None when CUDA is off or (auto) this node has no driver."""
    cuda = conf.cuda
    if cuda.get("enabled") == "never":
        return None
    try:
        return make(cuda)
    except GritError:
        if cuda.get("enabled") == "always" or required:
            raise
        return None
