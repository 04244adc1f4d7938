"""The one checkpoint pipeline, for every runtime.

  begin     refusals before anything runs; the CRIU config      Runtime.checkpoint_begins
  prepare   the image dir made ready (manifest.prepare_dir)
  dump      the runtime's checkpoint, guarded; CUDA frozen
            around it; on failure rolled back                   Runtime.dump
  commit    spec.dump, the rootfs diff, grit-manifest.json
            (last, atomically: the commit marker)               commit
  end       the source resumed or gone; bookkeeping             Runtime.checkpoint_ends

A failure in dump or commit goes to Runtime.checkpoint_failed (runsc: manifest removed,
sandbox resumed, CUDA unfrozen); runc's dump rolls back itself (CUDA resumed, a frozen
container thawed) and raises.
"""
import importlib
import os
import threading
import time

from runc_grit.checkpoint import manifest, tailhash
from runc_grit.errors import GritError


class Checkpoint:
    """One checkpoint on its way through the pipeline."""

    def __init__(self, req):
        self.req = req
        info, inv = req.runtime_state, req.inv
        self.image_dir = req.image_path()
        self.leave_running = inv.has("leave-running")
        self.pre_dump = inv.has("pre-dump")
        self.was_paused = info.get("status") == "paused"
        self.annotations = info.get("annotations") or {}
        self.bundle = info.get("bundle")
        self.had_state = req.state.exists()
        self.made = not os.path.lexists(self.image_dir)  # by runc-grit: may be read in place
        self.timings = {}
        self.resumed = []   # pids whose CUDA state was resumed (rolled back)
        self.argv = None        # runsc: its checkpoint argv, translated up front
        self.manifest = None
        self.hashed = {}   # page images' chunk digests taken during the dump (tailhash)
        self.thaw_for_cuda = False  # runc: a paused container thawed for CUDA's steps
        self.spec = None        # runsc: the bundle's spec
        self.helper, self.frozen = None, []  # runsc: the sandbox helper, CUDA pids frozen


def run(req):
    """Checkpoint req's container into its --image-path. Returns the exit code."""
    job = Checkpoint(req)
    runtime = req.runtime
    runtime.checkpoint_begins(job)
    with req.state:
        manifest.prepare_dir(job.image_dir, "checkpoint of %s" % req.cid)
        with runtime.checkpoint_guard(job):
            tail = None
            if not job.pre_dump and manifest.digests_wanted(req.conf):
                tail = tailhash.TailHash(job.image_dir).start()
            warm = preload(req.conf) if not job.pre_dump else None
            try:
                try:
                    runtime.dump(job)
                finally:
                    job.hashed = tail.finish() if tail is not None else {}
                    if warm is not None:
                        warm.join()
                if job.pre_dump:
                    return 0
                commit(job)
            except (GritError, OSError) as e:
                runtime.checkpoint_failed(job, e)
                raise
            runtime.checkpoint_ends(job)
        return 0


def preload(conf):
    """A thread importing what the commit needs while the runtime dumps (this process only
    waits then): the signer's cryptography (~45 ms of the commit, on the critical path).
    Import errors are left for the commit to raise. Returns the thread, started; None for a
    node that does not sign (nothing to load)."""
    if not getattr(conf, "signing_key", None):
        return None
    names = ["cryptography.hazmat.primitives.serialization",
             "cryptography.hazmat.primitives.asymmetric.ed25519"]

    def run():
        for name in names:
            try:
                importlib.import_module(name)
            except ImportError:
                return

    t = threading.Thread(target=run, name="grit-preload", daemon=True)
    t.start()
    return t


def commit(job):
    """spec.dump, the rootfs diff (runtimes whose images lack it), the images' list and
    grit-manifest.json, last and atomically: the checkpoint is complete."""
    req, runtime, conf = job.req, job.req.runtime, job.req.conf
    t0 = time.monotonic()
    manifest.save_spec(job.bundle, job.image_dir)
    diff = None
    rootfs = req.runtime_state.get("rootfs")
    if runtime.captures_rootfs_diff and rootfs:
        from runc_grit.checkpoint import rootfsdiff
        diff = rootfsdiff.capture(rootfs, job.image_dir)
    images = manifest.list_images(job.image_dir, digest=manifest.digests_wanted(conf),
                                  hashed=job.hashed)
    job.timings["manifest_s"] = time.monotonic() - t0
    job.timings["pages_hashed_during_dump"] = sum(len(c) for _, c in job.hashed.values())
    engine, gpu = runtime.manifest_sections(job)
    m = manifest.build(req.cid, job.annotations, job.bundle, runtime.describe(conf.state_dir),
                       engine, images, job.timings, leave_running=job.leave_running, gpu=gpu)
    if diff is not None:
        m["rootfs_diff"] = {"entries": diff[0], "deleted": diff[1]}
    manifest.commit(job.image_dir, m, conf)
    job.manifest = m
