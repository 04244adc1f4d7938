"""NVIDIA's CUDA checkpoint driver API (driver >= 570; GPU remapping on restore needs 580+).

Two backends stand behind one interface:
  * ``CudaPythonBackend``: cuda-python's ``cuda.bindings.driver``, used when it is importable
    and exposes the checkpoint functions;
  * ``CtypesBackend``: ``libcuda.so.1`` through ctypes, used otherwise (and for restores with
    GPU pairs, whose struct layout is fixed below).
Both raise ``CudaError`` with the CUresult name.
"""
import ctypes
import os

STATES = {0: "running", 1: "locked", 2: "checkpointed", 3: "failed"}
# CUresult values the checkpoint calls return, by name (cuda.h).
RESULT_NAMES = {
    0: "CUDA_SUCCESS", 1: "CUDA_ERROR_INVALID_VALUE", 2: "CUDA_ERROR_OUT_OF_MEMORY",
    3: "CUDA_ERROR_NOT_INITIALIZED", 4: "CUDA_ERROR_DEINITIALIZED", 100: "CUDA_ERROR_NO_DEVICE",
    101: "CUDA_ERROR_INVALID_DEVICE", 201: "CUDA_ERROR_INVALID_CONTEXT",
    209: "CUDA_ERROR_NO_BINARY_FOR_GPU", 304: "CUDA_ERROR_OPERATING_SYSTEM",
    400: "CUDA_ERROR_INVALID_HANDLE", 401: "CUDA_ERROR_ILLEGAL_STATE", 500: "CUDA_ERROR_NOT_FOUND",
    600: "CUDA_ERROR_NOT_READY", 702: "CUDA_ERROR_LAUNCH_TIMEOUT", 709: "CUDA_ERROR_CONTEXT_IS_DESTROYED",
    800: "CUDA_ERROR_NOT_PERMITTED", 801: "CUDA_ERROR_NOT_SUPPORTED", 803: "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH",
    909: "CUDA_ERROR_TIMEOUT", 999: "CUDA_ERROR_UNKNOWN",
}


class CudaError(Exception):
    def __init__(self, call, code, pid=None):
        self.call = call
        self.code = int(code)
        self.pid = pid
        name = RESULT_NAMES.get(self.code, "CUresult %d" % self.code)
        super().__init__("%s(%s): %s" % (call, "" if pid is None else pid, name))

    @property
    def name(self):
        return RESULT_NAMES.get(self.code, str(self.code))


def parse_uuid(text):
    """'GPU-4f2c...-...' or bare hex -> 16 bytes."""
    t = text.strip()
    if t.upper().startswith("GPU-"):
        t = t[4:]
    t = t.replace("-", "")
    if len(t) != 32:
        raise ValueError("not a GPU UUID: %r" % text)
    return bytes.fromhex(t)


def format_uuid(raw):
    h = bytes(raw).hex()
    return "GPU-%s-%s-%s-%s-%s" % (h[:8], h[8:12], h[12:16], h[16:20], h[20:])


class _LockArgs(ctypes.Structure):
    _fields_ = [("timeoutMs", ctypes.c_uint), ("reserved0", ctypes.c_uint),
                ("reserved1", ctypes.c_uint64 * 7)]


class _PlainArgs(ctypes.Structure):  # CUcheckpointCheckpointArgs / UnlockArgs
    _fields_ = [("reserved", ctypes.c_uint64 * 8)]


class _Uuid(ctypes.Structure):
    _fields_ = [("bytes", ctypes.c_char * 16)]


class _GpuPair(ctypes.Structure):
    _fields_ = [("oldUuid", _Uuid), ("newUuid", _Uuid)]


class _RestoreArgs(ctypes.Structure):
    _fields_ = [("gpuPairs", ctypes.POINTER(_GpuPair)), ("gpuPairsCount", ctypes.c_uint),
                ("reserved", ctypes.c_char * 44), ("reserved1", ctypes.c_uint64)]


assert ctypes.sizeof(_LockArgs) == 64 and ctypes.sizeof(_RestoreArgs) == 64


class CtypesBackend:
    name = "ctypes"

    def __init__(self, library="libcuda.so.1"):
        self.lib = ctypes.CDLL(library)
        for fn in ("cuCheckpointProcessGetState", "cuCheckpointProcessLock",
                   "cuCheckpointProcessCheckpoint", "cuCheckpointProcessRestore",
                   "cuCheckpointProcessUnlock"):
            if not hasattr(self.lib, fn):
                raise CudaError(fn + " (driver too old: needs >= 570)", 801)
        rc = self.lib.cuInit(0)
        if rc:
            raise CudaError("cuInit", rc)
        ver = ctypes.c_int(0)
        self.lib.cuDriverGetVersion(ctypes.byref(ver))
        self.driver_api_version = ver.value

    def _check(self, call, rc, pid):
        if rc:
            raise CudaError(call, rc, pid)

    def get_state(self, pid):
        s = ctypes.c_int(-1)
        self._check("cuCheckpointProcessGetState",
                    self.lib.cuCheckpointProcessGetState(ctypes.c_int(pid), ctypes.byref(s)), pid)
        return STATES.get(s.value, str(s.value))

    def restore_tid(self, pid):
        tid = ctypes.c_int(0)
        self._check("cuCheckpointProcessGetRestoreThreadId",
                    self.lib.cuCheckpointProcessGetRestoreThreadId(ctypes.c_int(pid),
                                                                   ctypes.byref(tid)), pid)
        return tid.value

    def lock(self, pid, timeout_ms=0):
        args = _LockArgs(timeoutMs=int(timeout_ms))
        self._check("cuCheckpointProcessLock",
                    self.lib.cuCheckpointProcessLock(ctypes.c_int(pid), ctypes.byref(args)), pid)

    def checkpoint(self, pid):
        self._check("cuCheckpointProcessCheckpoint",
                    self.lib.cuCheckpointProcessCheckpoint(ctypes.c_int(pid), None), pid)

    def restore(self, pid, gpu_pairs=()):
        if gpu_pairs:
            arr = (_GpuPair * len(gpu_pairs))()
            for i, (old, new) in enumerate(gpu_pairs):
                arr[i].oldUuid.bytes = parse_uuid(old)
                arr[i].newUuid.bytes = parse_uuid(new)
            args = _RestoreArgs(gpuPairs=arr, gpuPairsCount=len(gpu_pairs))
            ptr = ctypes.byref(args)
        else:
            ptr = None
        self._check("cuCheckpointProcessRestore",
                    self.lib.cuCheckpointProcessRestore(ctypes.c_int(pid), ptr), pid)

    def unlock(self, pid):
        self._check("cuCheckpointProcessUnlock",
                    self.lib.cuCheckpointProcessUnlock(ctypes.c_int(pid), None), pid)


class CudaPythonBackend:
    """cuda-python (cuda.bindings.driver). GPU-pair restores go through ctypes."""
    name = "cuda-python"

    def __init__(self, library="libcuda.so.1"):
        from cuda.bindings import driver as cu  # noqa: PLC0415 - optional dependency
        if not hasattr(cu, "cuCheckpointProcessGetState"):
            raise ImportError("cuda-python without the checkpoint API")
        self.cu = cu
        self.library = library
        (err,) = cu.cuInit(0)
        self._check("cuInit", err, None)
        err, ver = cu.cuDriverGetVersion()
        self.driver_api_version = int(ver)
        self._ctypes = None

    def _check(self, call, err, pid):
        code = int(err)
        if code:
            raise CudaError(call, code, pid)

    def get_state(self, pid):
        err, state = self.cu.cuCheckpointProcessGetState(pid)
        self._check("cuCheckpointProcessGetState", err, pid)
        return STATES.get(int(state), str(int(state)))

    def restore_tid(self, pid):
        err, tid = self.cu.cuCheckpointProcessGetRestoreThreadId(pid)
        self._check("cuCheckpointProcessGetRestoreThreadId", err, pid)
        return int(tid)

    def lock(self, pid, timeout_ms=0):
        args = self.cu.CUcheckpointLockArgs()
        args.timeoutMs = int(timeout_ms)
        (err,) = self.cu.cuCheckpointProcessLock(pid, args)
        self._check("cuCheckpointProcessLock", err, pid)

    def checkpoint(self, pid):
        (err,) = self.cu.cuCheckpointProcessCheckpoint(pid, None)
        self._check("cuCheckpointProcessCheckpoint", err, pid)

    def restore(self, pid, gpu_pairs=()):
        if gpu_pairs:
            if self._ctypes is None:
                self._ctypes = CtypesBackend(self.library)
            return self._ctypes.restore(pid, gpu_pairs)
        (err,) = self.cu.cuCheckpointProcessRestore(pid, None)
        self._check("cuCheckpointProcessRestore", err, pid)

    def unlock(self, pid):
        (err,) = self.cu.cuCheckpointProcessUnlock(pid, None)
        self._check("cuCheckpointProcessUnlock", err, pid)


def open_backend(library="libcuda.so.1", prefer=None):
    """The first backend that loads: cuda-python, then ctypes (or ``prefer`` alone)."""
    prefer = prefer or os.environ.get("RUNC_GRIT_CUDA_BACKEND", "auto")
    if prefer in ("auto", "cuda-python"):
        try:
            return CudaPythonBackend(library)
        except ImportError:
            if prefer == "cuda-python":
                raise
        except CudaError:
            if prefer == "cuda-python":
                raise
    return CtypesBackend(library)
