"""What the delegate runtime can do, decided once from its identity, not at each call site.

  runc, nvidia-container-runtime   CRIU checkpoints through the action scripts (the NVIDIA
                                   runtime edits create's spec and then runs runc)
  crun                             the same, when built with CRIU (`crun --version`: +CRIU)
  runsc (gVisor)                   its own checkpoint images; not handled by runc-grit yet
Any other name is taken to be runc-compatible.
"""
import os

from runc_grit import procs
from runc_grit.errors import GritError


class Strategy:
    name = "runc"
    image_format = "CRIU"

    def __init__(self, path, cache_dir=None):
        self.path = path
        self.cache_dir = cache_dir

    def checkpoint_problem(self):
        """None when this runtime can checkpoint and restore through runc-grit, else why."""
        return None

    def require_checkpoint(self, what):
        why = self.checkpoint_problem()
        if why:
            raise GritError("%s: %s" % (what, why), kind="usage")


class Crun(Strategy):
    name = "crun"

    def checkpoint_problem(self):
        try:
            out = procs.run([self.path, "--version"], capture=True, timeout=20)[1] or b""
        except OSError:
            out = b""
        if b"+CRIU" not in out:
            return ("%s was built without CRIU (its --version lists no +CRIU), so it cannot "
                    "checkpoint or restore; use runc, or a crun built with CRIU" % self.path)
        return None


class NvidiaContainerRuntime(Strategy):
    name = "nvidia-container-runtime"


class Runsc(Strategy):
    name = "runsc"
    image_format = "gVisor"

    def checkpoint_problem(self):
        return ("runsc (gVisor) writes its own checkpoint images and has no CRIU; runc-grit "
                "passes runsc commands through but does not checkpoint or restore with it yet")


def for_path(path, cache_dir=None):
    base = os.path.basename(path or "")
    for cls in (Runsc, Crun, NvidiaContainerRuntime):
        if cls.name in base:
            return cls(path, cache_dir)
    return Strategy(path, cache_dir)
