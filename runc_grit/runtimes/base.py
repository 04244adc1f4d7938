"""One protocol for every delegate runtime, and the request each of its methods gets.

A Runtime (runc with CRIU, crun, nvidia-container-runtime, runsc) answers the commands
runc-grit intercepts, all with the same methods:

  create(req)             a plain create: the runtime's own (runc: after the CRIU config)
  restore_on_create(req)  a create whose config.json asks for a restore  } the restore
  restore(req)            `restore` called directly (containerd, CRI)     } pipeline
  checkpoint(req)         the checkpoint pipeline: dump, then the manifest (commit marker)
  describe()              the runtime as a manifest records it

The pipelines (runtimes.restoring, runtimes.checkpointing) are the flows; a subclass gives
their runtime-specific steps as methods (restore_begins, stage_given, check_restore,
restore_argv, run_restore, restored_problem, ...; checkpoint_begins, dump, ...).

The dispatcher (runc_grit.intercept) builds the Request, claims the container's state and
calls one of them; it has no runtime-specific branch. Which class serves a binary is decided
once, from its name (runtimes.selection).
"""
import os
import time

from runc_grit.errors import UsageError
from runc_grit.node import procs


class Request:
    """One intercepted command, built whole before its handler runs (runc_grit.intercept).

    inv, args        the command line, parsed (argv.Invocation) and as given
    conf, log        runc-grit's config, the runtime's --log
    runtime          the strategy (a Runtime); delegate, its binary (runtimes.delegate)
    state            runc-grit's per-container state (node.state.ContainerState)
    spec, restore    create/run/restore: the bundle's config.json; the restore it asks for
                     (checkpoint.source.RestoreRequest) or None
    runtime_state    checkpoint: the runtime's `state` JSON of the container
    and, filled as a restore goes: timings (seconds per step, recorded in the state),
    rootfs_touched (the restore began changing the new rootfs: its diff), gpu_nodes
    (/dev's GPU nodes made the spec's at CRIU's post-restore) and decoder (the CRIU image
    decoder the restore started first thing: checkpoint.criuimages.Decoder)."""

    def __init__(self, inv, args, conf, log, runtime=None, state=None, spec=None,
                 restore=None, runtime_state=None):
        self.inv, self.args, self.conf, self.log = inv, list(args), conf, log
        self.bundle = os.path.abspath(inv.value("bundle") or os.getcwd())
        self.spec_name = inv.value("config") or "config.json"  # crun's -f/--config
        self.runtime, self.state = runtime, state
        self.spec, self.restore, self.runtime_state = spec, restore, runtime_state
        self.timings = {}
        self.rootfs_touched = False
        self.gpu_nodes = False
        self.decoder = None

    @property
    def cid(self):
        return self.inv.container_id

    @property
    def delegate(self):
        """The delegate binary (runtimes.delegate.Delegate)."""
        return self.runtime.delegate

    def image_path(self):
        """The checkpoint dir a checkpoint or direct restore names (runc's default:
        ./checkpoint)."""
        return os.path.abspath(self.inv.value("image-path")
                               or os.path.join(os.getcwd(), "checkpoint"))

    def record(self, restored_from, **fields):
        """A new state record of this container (node.state), with fields added."""
        rec = {"id": self.state.id, "bundle": self.bundle, "created": time.time(),
               "restored_from": restored_from}
        rec.update(fields)
        return rec

    def exec(self, args):
        """Replace runc-grit with the runtime running args (after its runtime_flags)."""
        os.execv(self.delegate.path, self.delegate.command(args))

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
        self.state.remove()
        raise error

    def fresh(self, why):
        """Policy 'fresh': the create, run as a child (not exec'd) so that a create that fails
        too leaves no state behind."""
        self.log.warning("%s; policy 'fresh': creating the container from scratch" % why)
        self.state.write(self.record(None, fresh_because=why))
        rc, _ = procs.run(self.delegate.command(self.runtime.translate(self.inv, self.args)))
        if rc != 0 and self.delegate.state(self.state.id) is None:
            self.state.remove()
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
    # runs CRIU's action script at post-restore, where it holds the tasks until the page
    # images' digests matched (checkpoint.pagecheck)
    gates_resume = False

    def __init__(self, delegate):
        self.delegate = delegate

    # -- what the runtime can do -----------------------------------------------------------
    def checkpoint_problem(self):
        """None when this runtime can checkpoint and restore through runc-grit, else why."""
        return None

    def require_checkpoint(self, what):
        why = self.checkpoint_problem()
        if why:
            raise UsageError("%s: %s" % (what, why))

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
        req.state.remove()
        req.state.unlock()
        req.exec(self.translate(req.inv, req.args))

    def restore_on_create(self, req):
        """A create whose config.json asks for a restore: the restore pipeline
        (runtimes.restoring) from that source."""
        from runc_grit.runtimes import restoring
        return restoring.run(req, on_create=True)

    def restore(self, req):
        """`restore` called directly (containerd's own restore, CRI restores): the restore
        pipeline from the caller's --image-path."""
        from runc_grit.runtimes import restoring
        return restoring.run(req, on_create=False)

    def checkpoint(self, req):
        """The checkpoint pipeline (runtimes.checkpointing)."""
        from runc_grit.runtimes import checkpointing
        return checkpointing.run(req)

    def describe(self, cache_dir=None):
        """The runtime as a manifest records it: name, path, version."""
        return self.delegate.describe(cache_dir)
