"""The one restore pipeline: a create that asks for a restore (restore-on-create), and
`restore` called directly (containerd's own restore, CRI restores), for every runtime.

  begin     the bundle made ready (runc: its CRIU config)          Runtime.restore_begins
  stage     on create: the source checked and staged (source.validate),
            the page images' digests left running (pagecheck);
            direct: the caller's image dir verified in place          Runtime.stage_given
  check     what the destination must have (privileges, compat,
            GPUs, rootfs diff, CRIU lines)                             Runtime.check_restore
  prepare   the runtime's restore argv; the state record written       Runtime.restore_argv
  run       the runtime's restore; its tasks resume once the page
            digests matched (the action script waits at post-restore)  Runtime.run_restore
  post      is it a restore of this container? (CUDA resumed,
            read-only root, namespaces)                                Runtime.restored_problem

A refusal (stage, check) goes to Request.give_up on create (policy 'fresh' may start the
container from scratch) and removes the state of a direct restore; a failed run is cleaned up
(Runtime.clean_failed_restore) before the same. The staged copy is released whatever happens.
"""
import time

from runc_grit.checkpoint import pagecheck, source
from runc_grit.errors import GritError, RestoreError


class Restore:
    """One restore on its way through the pipeline: what each step found."""

    def __init__(self, req, on_create):
        self.req, self.on_create = req, on_create
        inv = req.inv
        self.detach = inv.command == "create" or inv.has("detach")
        self.image_dir = self.real = self.manifest = None
        self.staged = False     # image_dir is source.validate's: released at the end
        self.page_check = None  # the page images' digests, checked while the runtime runs
        self.pairs = None       # GPU device pairs (gpu.destination), for the action script
        self.cuda_pids = []     # runsc: CUDA processes to thaw inside the sandbox
        self.env = {}           # extra environment of the runtime's restore
        self.record = {}        # extra fields of the state record
        self.cgroups_mode = None
        self.work_dir = None
        self.elapsed = 0.0

    @property
    def where(self):
        """How messages name this restore."""
        if self.on_create:
            return "restore source %s" % self.req.restore.path
        return "restore of %s from %s" % (self.req.cid, self.image_dir)


def run(req, on_create):
    """Restore req's container (on_create: from the source its spec asks for; else from the
    caller's --image-path). Returns the exit code."""
    job = Restore(req, on_create)
    runtime = req.runtime
    runtime.restore_begins(job)
    try:
        try:
            stage(job)
            check(job)
        except GritError as e:
            return refused(job, e)
        argv = runtime.restore_argv(job)
        req.state.write(req.record(job.real, phase="restoring", **job.record))
        t0 = time.monotonic()
        rc = runtime.run_restore(job, argv)
        job.elapsed = time.monotonic() - t0
        return finish(job, rc) if on_create else finish_direct(job, rc)
    finally:
        if req.decoder is not None:
            req.decoder.close()
        pages_ok = None
        if job.page_check is not None:  # it reads the staged copy: done before that goes
            job.page_check.wait()
            pages_ok = job.page_check.outcome()
        if job.staged:
            source.release(job.image_dir, req.conf, pages_ok)


def stage(job):
    """The image dir to restore from: the requested source checked and staged (on create),
    or the caller's dir verified in place (direct)."""
    req, runtime = job.req, job.req.runtime
    t0 = time.monotonic()
    if job.on_create:
        runtime.require_checkpoint("restore of %s" % req.cid)
        pending = [] if runtime.gates_resume and req.conf.page_digests == "overlap" else None
        job.image_dir, job.manifest, job.real = source.validate(
            req.restore.path, req.conf, image_format=runtime.image_format, spec=req.spec,
            deferred=pending)
        job.staged = True
        if pending:
            job.page_check = pagecheck.PageCheck(job.image_dir, pending, job.where, req.state)
            job.page_check.start()
            job.env.update(job.page_check.env())
    else:
        job.image_dir = job.real = req.image_path()
        runtime.stage_given(job)
    req.timings = {"verify_s": time.monotonic() - t0}


def check(job):
    """The runtime's checks of the staged images against this node and the new spec."""
    t0 = time.monotonic()
    job.req.runtime.check_restore(job)
    job.req.timings["checks_s"] = time.monotonic() - t0


def refused(job, error):
    """A restore refused before the runtime ran."""
    req = job.req
    if job.on_create:
        return req.give_up(error, "restore from %s refused: %s"
                           % (req.restore.path, error.message))
    req.state.remove()
    raise error


def finish(job, rc):
    """After the runtime's restore of a create: the post-check, then the state marked
    restored, or the failure cleaned up and given up on."""
    req, runtime = job.req, job.req.runtime
    bad_pages = None
    if job.page_check is not None:
        bad_pages = job.page_check.wait()
        req.timings["pages_verify_s"] = job.page_check.seconds
    if bad_pages is not None:  # CRIU's post-restore refused to resume the tasks
        runtime.clean_failed_restore(job)
        return refused(job, bad_pages)
    info = req.delegate.state(req.cid) if rc == 0 and job.detach else None
    ok = rc == 0 and (not job.detach or info is not None)
    reason = None
    if ok and job.detach:
        reason = runtime.restored_problem(job, info)
        ok = reason is None
    if ok:
        req.state.update(phase="restored", restore_seconds=job.elapsed,
                         **runtime.restored_fields(job))
        if req.inv.command == "create":
            req.state.mark_restored()
        req.log.debug("restored %s with %s in %.3fs" % (req.cid, runtime.name, job.elapsed))
        return 0 if job.detach else rc
    reason = reason or runtime.restore_failure(job, rc)
    runtime.clean_failed_restore(job)
    return req.give_up(RestoreError("restore from %s failed: %s" % (job.real, reason)))


def finish_direct(job, rc):
    """After a direct `restore`: the post-check; the runtime's exit code passed on."""
    req = job.req
    why = req.runtime.restored_problem(job, req.delegate.state(req.cid)) if rc == 0 else None
    if why:
        req.delegate.force_delete(req.cid)
        req.state.remove()
        raise RestoreError("restore of %s: %s" % (req.cid, why))
    if rc == 0:
        req.state.update(phase="restored")
    elif req.delegate.state(req.cid) is None:
        req.state.remove()
    return rc
