"""CUDA inside a gVisor sandbox: the two-step flow.

runsc has no CRIU and so no action scripts, and the host cannot see the sandbox's processes.
The CUDA checkpoint helper (NVIDIA's cuda-checkpoint, or any binary with its CLI) must run
INSIDE the sandbox, through `runsc exec`:

  before `runsc checkpoint`   every CUDA process of the sandbox: lock, then checkpoint
                              (device memory into the process, which the image then holds)
  after `runsc restore`       each of those processes: restore, then unlock

The CUDA processes are the sandbox's processes (`runsc ps`) for which the helper reports a
CUDA state. A GPU container whose sandbox has no helper is not checkpointed at all: the image
would hold live GPU state that no restore can bring back.
"""
import json
import subprocess

from runc_grit.errors import GritError, CheckpointError, GpuError
from runc_grit.gpu.helper import BinaryHelper

DEFAULT_HELPER = "/usr/local/bin/cuda-checkpoint"
NVPROXY_FLAGS = ("--nvproxy", "-nvproxy", "--nvproxy=true", "-nvproxy=true")


class SandboxHelper(BinaryHelper):
    """The same five questions as every helper, asked inside container cid's sandbox."""

    def __init__(self, rt, cid, path=None):
        super().__init__(path or DEFAULT_HELPER)
        self.rt, self.cid = rt, cid
        self.name = "%s (inside the sandbox of %s)" % (self.path, cid)

    def argv(self, args):
        return self.rt.argv(self.rt.quiet_globals() + ["exec", self.cid, self.path]
                            + [str(a) for a in args])

    def require(self, what):
        """GritError unless the helper runs inside the sandbox."""
        p = self._run("--help", check=False)
        if p.returncode != 0:
            msg = (p.stderr or p.stdout).decode("utf-8", "replace").strip().splitlines()
            raise GpuError("%s: no CUDA checkpoint helper can run inside the gVisor sandbox of "
                            "%s: %s: %s (put cuda-checkpoint into the container image, or set "
                            "cuda.sandbox_helper)" % (what, self.cid, self.path,
                                                      msg[-1] if msg else "exit %d" % p.returncode))

    def pids(self):
        """The sandbox's process ids (`runsc ps --format json`)."""
        try:
            p = subprocess.run(self.rt.argv(self.rt.quiet_globals()
                                            + ["ps", "--format", "json", self.cid]),
                               stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise GpuError("runsc ps %s: %s" % (self.cid, e)) from None
        try:
            pids = json.loads(p.stdout) if p.returncode == 0 else None
        except ValueError:
            pids = None
        if not isinstance(pids, list) or not all(isinstance(x, int) for x in pids):
            raise GpuError("runsc ps %s gave no process list: %s"
                            % (self.cid, p.stderr.decode("utf-8", "replace").strip()[-200:]))
        return pids


def gpu_container(spec, runsc_flags=()):
    """Does this runsc container get GPUs? (nvproxy, NVIDIA devices, env or CDI request)."""
    if any(f in NVPROXY_FLAGS for f in runsc_flags):
        return True
    for d in ((spec.get("linux") or {}).get("devices") or []):
        if str(d.get("path", "")).startswith("/dev/nvidia"):
            return True
    for e in ((spec.get("process") or {}).get("env") or []):
        k, _, v = str(e).partition("=")
        if k == "NVIDIA_VISIBLE_DEVICES" and v.strip() not in ("", "void", "none"):
            return True
    for k, v in (spec.get("annotations") or {}).items():
        if k.startswith("cdi.k8s.io/") and "nvidia.com/gpu" in str(v):
            return True
    return False


def wanted(conf, spec, runsc_flags=()):
    mode = conf.cuda.get("enabled", "auto")
    if mode == "never":
        return False
    return mode == "always" or gpu_container(spec, runsc_flags)


def freeze(helper, conf, log):
    """Lock and checkpoint every CUDA process in the sandbox. Returns their pids. On a failure,
    what was frozen is unfrozen again and GritError says the container keeps running."""
    what = "checkpoint of %s" % helper.cid
    helper.require(what)
    states = {p: helper.state(p) for p in helper.pids()}  # each one a `runsc exec`
    cuda = [p for p, s in states.items() if s is not None]
    done = []
    try:
        for p in cuda:
            done.append(p)
            s = helper.suspend(p, conf.cuda.get("lock_timeout_ms", 10000), states[p])
            if s != "checkpointed":
                raise GpuError("CUDA process %d is %s, not checkpointed" % (p, s))
    except GritError as e:
        unfreeze(helper, done, log)
        raise CheckpointError("%s: CUDA freeze inside the sandbox failed: %s; the container was not "
                        "checkpointed and keeps running" % (what, e.message)) from None
    log.debug("%s: CUDA frozen in %s" % (what, ",".join(map(str, cuda)) or "no process"))
    return cuda


def unfreeze(helper, pids, log):
    """Restore and unlock pids; best effort. Returns the pids that are not running after."""
    bad = []
    for p in pids:
        try:
            if helper.resume(p) not in (None, "running"):
                bad.append(p)
        except GritError as e:
            log.warning("CUDA process %d in %s not resumed: %s" % (p, helper.cid, e.message))
            bad.append(p)
    if bad:
        log.warning("CUDA processes %s in %s were left frozen" % (bad, helper.cid))
    return bad


def thaw_restored(helper, pids, log):
    """After `runsc restore`: every CUDA process the checkpoint froze is restored and unlocked,
    once. GritError when one is missing or does not end up running."""
    helper.require("restore of %s" % helper.cid)
    for p in pids:
        s = helper.state(p)
        if s is None:
            raise GpuError("CUDA process %d of the checkpoint is not a CUDA process in the "
                            "restored sandbox" % p)
        s = helper.resume(p, s)
        if s != "running":
            raise GpuError("CUDA process %d is %s after restore" % (p, s))
    log.debug("CUDA unfrozen in %s: %s" % (helper.cid, ",".join(map(str, pids))))


def manifest_section(helper, pids):
    return {"in_sandbox": True, "helper": helper.path, "driver_version": None, "devices": [],
            "processes": [{"pid": int(p)} for p in pids]}


def pids_in(m):
    """The CUDA processes a runsc checkpoint froze (to unfreeze after the restore)."""
    g = (m or {}).get("gpu") or {}
    return [int(p["pid"]) for p in g.get("processes") or []]
