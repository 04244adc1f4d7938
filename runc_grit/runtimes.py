"""What the delegate runtime can do, decided once from its identity, not at each call site.

  runc, nvidia-container-runtime   CRIU checkpoints; GPU steps in CRIU's action scripts (the
                                   NVIDIA runtime edits create's spec, then runs runc)
  crun                             the same, when built with CRIU (`crun --version`: +CRIU)
  runsc (gVisor)                   its own images (checkpoint.img, runsc checkpoint/restore);
                                   GPU steps inside the sandbox, around the runtime call
                                   (runc_grit.gvisor, runc_grit.sandbox_cuda)
Any other name is taken to be runc-compatible. The config's `runtime` names the binary; its
base name picks the strategy.
"""
import os

from runc_grit import procs
from runc_grit.errors import GritError


class Strategy:
    name = "runc"
    image_format = "CRIU"
    own_images = False  # True: checkpoint/restore-on-create are the strategy's, not CRIU's

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

    def globals(self, pairs):
        """runc global flags (parsed pairs) as this runtime takes them, rendered."""
        from runc_grit.argv import _render_flags
        return _render_flags(pairs)

    def translate(self, inv, args):
        """argv (after the binary and runtime_flags) of a create, run, restore or checkpoint
        that this runtime runs as it is (not a restore-on-create)."""
        return list(args)


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
    own_images = True

    def globals(self, pairs):
        from runc_grit import gvisor
        return gvisor.globals_for_runsc(pairs)[0]

    def translate(self, inv, args):
        from runc_grit import gvisor
        try:
            return gvisor.to_runsc(inv)[0]
        except GritError:  # a flag runsc lacks: runsc itself says so
            return list(args)

    def checkpoint(self, inv, conf, log, rt, info):
        from runc_grit import gvisor
        return gvisor.checkpoint(inv, conf, log, rt, info)

    def restore(self, inv, conf, log, rt, st, bundle):
        from runc_grit import gvisor
        return gvisor.restore(inv, conf, log, rt, st, bundle)

    def restore_on_create(self, inv, args, conf, log, rt, st, bundle, spec, req, fresh):
        from runc_grit import gvisor
        return gvisor.restore_on_create(inv, args, conf, log, rt, st, bundle, spec, req, fresh)


def for_path(path, cache_dir=None):
    base = os.path.basename(path or "")
    for cls in (Runsc, Crun, NvidiaContainerRuntime):
        if cls.name in base:
            return cls(path, cache_dir)
    return Strategy(path, cache_dir)
