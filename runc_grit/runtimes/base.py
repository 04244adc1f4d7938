"""One protocol for every delegate runtime, and the request each of its methods gets.

A Runtime (runc with CRIU, crun, nvidia-container-runtime, runsc) answers the commands
runc-grit intercepts, all with the same methods:

  create(req)             a plain create: the runtime's own (runc: after the CRIU config)
  restore_on_create(req)  a create whose config.json asks for a restore
  checkpoint(req)         the runtime's checkpoint, then the manifest (the commit marker)
  restore(req)            `restore` called directly (containerd's own restore path)
  describe()              the runtime as a manifest records it

The dispatcher (runc_grit.intercept) builds the Request, claims the container's state and
calls one of them; it has no runtime-specific branch. Which class serves a binary is decided
once, from its name (runtimes.selection).
"""
import os
import time

from runc_grit.errors import GritError
from runc_grit.node import procs


class Request:
    """One intercepted command: the invocation, the config, the log, and, once known, the
    runtime, the container's state, the bundle and its spec, the restore asked for, and (for
    a checkpoint) the runtime's state of the container."""

    def __init__(self, inv, args, conf, log):
        self.inv, self.args, self.conf, self.log = inv, list(args), conf, log
        self.bundle = os.path.abspath(inv.value("bundle") or os.getcwd())
        self.spec_name = inv.value("config") or "config.json"  # crun's -f/--config
        self.runtime = None
        self.st = None
        self.spec = None
        self.restore = None   # checkpoint.source.RestoreRequest
        self.info = None      # the runtime's `state` of the container (checkpoint)
        self.timings = {}     # seconds per step, recorded in the container's state
        self.rootfs_touched = False  # a restore began changing the new rootfs (its diff)
        self.gpu_nodes = False  # /dev's GPU nodes made the spec's at CRIU's post-restore

    @property
    def cid(self):
        return self.inv.container_id

    @property
    def rt(self):
        """The delegate binary (runtimes.delegate.Delegate)."""
        return self.runtime.rt

    def exec(self, args):
        """Replace runc-grit with the runtime running args (after its runtime_flags)."""
        os.execv(self.rt.path, self.rt.command(args))

    def give_up(self, error, why=None):
        """A restore that was refused or failed. Policy 'fresh': the create the caller asked
        for, from scratch (why: the warning; error's message by default); else the
        container's state goes and error is raised. Never fresh once the restore changed
        the rootfs: a container would start on another checkpoint's files."""
        if self.restore is not None and self.restore.policy == "fresh":
            if not self.rootfs_touched:
                return self.fresh(why or error.message)
            self.log.warning("policy 'fresh' not applied: the restore had already written the "
                             "checkpoint's rootfs diff into the new rootfs")
        self.st.remove()
        raise error

    def fresh(self, why):
        """Policy 'fresh': the create, run as a child (not exec'd) so that a create that fails
        too leaves no state behind."""
        self.log.warning("%s; policy 'fresh': creating the container from scratch" % why)
        self.st.write({"id": self.st.id, "bundle": self.bundle, "created": time.time(),
                       "restored_from": None, "fresh_because": why})
        rc, _ = procs.run(self.rt.command(self.runtime.translate(self.inv, self.args)))
        if rc != 0 and self.rt.state(self.st.id) is None:
            self.st.remove()
        return rc


class Runtime:
    """The protocol, with what every runtime shares. Subclasses: runtimes.runc (CRIU),
    runtimes.crun, runtimes.nvidia, runtimes.runsc."""

    name = "runc"
    image_format = "CRIU"
    # its `delete` of a container its checkpoint removed fails in words containerd's shim
    # does not take for "already gone" (crun)
    deletes_checkpointed = False
    # acts on NVIDIA_VISIBLE_DEVICES (gpu.grants)
    nvidia_runtime = False

    def __init__(self, delegate):
        self.rt = delegate

    # -- what the runtime can do -----------------------------------------------------------
    def checkpoint_problem(self):
        """None when this runtime can checkpoint and restore through runc-grit, else why."""
        return None

    def require_checkpoint(self, what):
        why = self.checkpoint_problem()
        if why:
            raise GritError("%s: %s" % (what, why), kind="usage")

    def restore_criu_options(self, req, image_dir):
        """Lines the CRIU config of a restore from the verified image_dir needs besides the
        usual ones (none for runc)."""
        return []

    def globals(self, pairs):
        """runc global flags (parsed pairs) as this runtime takes them, rendered."""
        from runc_grit.argv import _render_flags
        return _render_flags(pairs)

    def translate(self, inv, args):
        """argv (after the binary and runtime_flags) of a create, run, restore or checkpoint
        that this runtime runs as it is (not a restore-on-create)."""
        return list(args)

    # -- the protocol ----------------------------------------------------------------------
    def create(self, req):
        """A plain create: the runtime's own (exec'd: its stdio is the container's). runc-grit
        keeps no state for it: runc may remove the container itself (a create that fails,
        `run` in the foreground), and nothing of runc-grit's may outlive it."""
        req.st.remove()
        req.st.unlock()
        req.exec(self.translate(req.inv, req.args))

    def restore_on_create(self, req):
        raise NotImplementedError

    def checkpoint(self, req):
        raise NotImplementedError

    def restore(self, req):
        raise NotImplementedError

    def describe(self, cache_dir=None):
        """The runtime as a manifest records it: name, path, version."""
        return self.rt.describe(cache_dir)
