"""runc (and every runc-compatible runtime): checkpoints are CRIU's, and the GPU steps run in
CRIU's action script (runtimes.actionscript), named by the CRIU config every container's
config.json points at (runtimes.criuenv, criuconf).

The flows are the pipelines' (runtimes.restoring, runtimes.checkpointing); this class gives
their runc-specific steps:

  create             config.json -> the shared CRIU config; the runtime's own create
  restore            the source checked (roots, manifest, signature, privileges,
                     compatibility, GPUs), the rootfs diff applied (on create), then
                     `runc restore` with the action script's environment; the restored
                     container checked (runtimes.restorecheck)
  checkpoint         `runc checkpoint`, guarded; on failure or --leave-running the CUDA
                     rollback; on success spec.dump, the rootfs diff and the manifest (last)
"""
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

from runc_grit import argv as _argv
from runc_grit.checkpoint import compat, criuimages, privileges, source
from runc_grit.errors import CheckpointError, RuntimeFailure, UsageError
from runc_grit.gpu import destination, discovery, postresume, predump, records, rollback
from runc_grit.node import procs, rootmount
from runc_grit.oci import spec as _spec
from runc_grit.runtimes import criuconf, criuenv, criulog, restorecheck
from runc_grit.runtimes.base import Runtime


class Runc(Runtime):
    name = "runc"
    captures_rootfs_diff = True  # CRIU's images hold no files of the rootfs
    gates_resume = True  # the CRIU config's action script (criuconf), at post-restore
    decodes_mounts = False  # restore_criu_options reads the images' external mounts (crun)

    def create(self, req):
        criuenv.point_spec(req)
        return super().create(req)

    # -- the restore pipeline's steps (runtimes.restoring) ---------------------------------
    def restore_begins(self, job):
        """Point the bundle at the CRIU config. A direct restore whose caller chose a cgroup
        mode: the CRIU config (which would win) names none."""
        if not job.on_create and job.req.inv.value("manage-cgroups-mode"):
            job.cgroups_mode = "runtime"
        criuenv.point_spec(job.req, job.cgroups_mode)
        # the images' decoder starts now, where a step will ask it: its start overlaps the
        # verification (stage)
        if job.req.conf.privilege_check != "off" or self.decodes_mounts:
            job.req.decoder = criuimages.Decoder(job.req.conf).start()

    def stage_given(self, job):
        """A direct restore's image dir: its manifest (if any) authenticated and verified in
        place (checkpoint.source.verify_given)."""
        req = job.req
        job.manifest = source.verify_given(job.image_dir, req.conf,
                                           source.is_kubernetes(req.spec), req.spec)

    def check_restore(self, job):
        """Privileges, compatibility, device env and GPU destination (a direct restore: only
        for a manifest or a Kubernetes container's image), the rootfs diff (on create), and
        the CRIU config lines these images need."""
        req = job.req
        if job.on_create or job.manifest is not None or source.is_kubernetes(req.spec):
            self._check_destination(job)
        if rootmount.wanted(req.spec):
            job.env["RUNC_GRIT_READONLY_ROOT"] = "1"
        if job.on_create:
            _apply_rootfs_diff(job.image_dir, req)
        lines = self.restore_criu_options(req, job.image_dir)
        if lines:
            criuenv.point_spec(req, job.cgroups_mode, lines)

    def _check_destination(self, job):
        """What this node and the new spec must have for the images (raises SourceError,
        GpuError, ...)."""
        req, m, where = job.req, job.manifest, job.where
        # the node's GPUs are read (NVML) while the images are checked against the spec; the
        # pool's exit waits for that read, so it never outlives a refusal
        early = destination.wants_inventory(m, req.conf, req.spec, self.nvidia_runtime)
        with ThreadPoolExecutor(1) as pool:
            gpus = pool.submit(discovery.inventory) if early else None
            t0 = time.monotonic()
            privileges.check(job.image_dir, req.spec, req.conf, req.log, where, req.bundle,
                             req.decoder)
            req.timings["privileges_s"] = round(time.monotonic() - t0, 3)
            compat.check(m, where, os.path.basename(self.delegate.path),
                         criuenv.criu_version(req.conf), _spec.annotations(req.spec))
            compat.check_device_env(job.image_dir, req.spec, req.conf, req.log, where)
            job.pairs = destination.check_destination(
                m, req.conf, req.bundle, req.spec, self.nvidia_runtime,
                get_inventory=gpus.result if gpus is not None else None)
        req.gpu_nodes = postresume.wants_gpu_nodes(m, req.spec, job.image_dir)
        if req.gpu_nodes:
            job.env["RUNC_GRIT_GPU_NODES"] = "1"
        if self.nvidia_runtime:  # it acts on NVIDIA_VISIBLE_DEVICES (gpu.grants)
            job.env["RUNC_GRIT_NVIDIA_RUNTIME"] = "1"

    def restore_argv(self, job):
        """`runc restore` argv: a create rewritten (argv.create_to_restore), or the direct
        call's with the spec's LSM label; both as this runtime takes them."""
        req = job.req
        job.record["root"] = self.delegate.root()
        if not job.on_create:
            return self._direct_argv(job)
        job.record["annotation"] = req.restore.annotation
        job.work_dir = req.state.path("criu-work")
        os.makedirs(job.work_dir, exist_ok=True)
        try:
            rargs, dropped = _argv.create_to_restore(req.inv, job.image_dir, job.work_dir,
                                                     detach=job.detach)
        except _argv.ArgvError as e:
            req.state.remove()
            raise UsageError("restore of %s from %s refused: %s"
                             % (req.cid, req.restore.path, e)) from None
        for flag in dropped:
            req.log.debug("restore has no --%s; dropped" % flag)
        rargs[-1:-1] = privileges.restore_flags(req.spec, self.name)  # the spec's LSM label
        return self.translate(_argv.parse(rargs), rargs)

    def _direct_argv(self, job):
        req, inv = job.req, job.req.inv
        lsm = privileges.restore_flags(req.spec, self.name)  # the spec's LSM label, for CRIU
        if lsm and inv.value("lsm-profile") is None:  # a caller's own choice stands
            inv = _argv.Invocation(inv.globals, inv.command,
                                   inv.flags + [("lsm-profile", lsm[1])], inv.args)
            req.args = inv.render()
        return self.translate(inv, req.args)

    def run_restore(self, job, argv):
        """The runtime's restore with the action script's environment; a detached one as a
        guarded child whose orphans runc-grit adopts."""
        req = job.req
        env = {"RUNC_GRIT_IMAGE_DIR": job.image_dir}
        env.update(job.env)
        if job.pairs is not None:
            env["RUNC_GRIT_DEVICE_PAIRS"] = json.dumps(job.pairs)
        guard = None
        if job.on_create:
            req.log.debug("restoring %s from %s (as %s)" % (req.cid, job.real, job.image_dir))
            if job.detach:
                procs.become_subreaper()
                guard = self.delegate.guard_job("restore", req.state)
        return procs.run(self.delegate.command(argv),
                         env=criuenv.hook_env(req.conf, req.state, env), guard=guard)[0]

    def restored_problem(self, job, info):
        return restorecheck.restored_problem(job.req.state, job.pairs, info, job.req.spec)

    def restored_fields(self, job):
        return {"timings": {k: round(v, 3) for k, v in job.req.timings.items()},
                "staged": job.image_dir != job.real}

    def restore_failure(self, job, rc):
        req = job.req
        return criulog.run_failure(req.inv.global_value("log"), job.work_dir, rc,
                                   req.conf.state_dir, req.cid)

    def clean_failed_restore(self, job):
        """The failed container deleted, runc's CRIU mount released, orphans killed."""
        self.delegate.force_delete(job.req.cid)
        self.delegate.release_restore_mounts(job.req.cid)
        if job.detach:
            procs.kill_adopted()  # tasks a killed or failed CRIU left behind

    # -- the checkpoint pipeline's steps (runtimes.checkpointing) --------------------------
    def checkpoint_begins(self, job):
        """Refused when the runtime cannot checkpoint; the CRIU config the container names
        made again (the state dir may be new since its create). containerd (CRI
        CheckpointContainer) pauses a container before it checkpoints it, but CUDA's steps
        need its tasks running: they run thawed, around the dump (thaw_for_cuda)."""
        req, conf = job.req, job.req.conf
        self.require_checkpoint("checkpoint of %s" % req.cid)
        ann = job.annotations
        criuconf.recreate(ann.get(criuconf.ANNOTATION), conf.state_dir,
                          criuenv.criu_config(conf, criuconf.user_config(ann, conf.state_dir)))
        pid = req.runtime_state.get("pid")
        job.thaw_for_cuda = (job.was_paused and predump.wanted(conf)
                             and predump.may_have_cuda(pid, conf))

    def checkpoint_guard(self, job):
        """runc's checkpoint is guarded by its run (procs.run's guard); nothing around it."""
        return _nothing()

    def dump(self, job):
        """`runc checkpoint` under the guard (CUDA pre-dump first, thawed, for a paused
        container); then the rollback a failure or --leave-running needs; a failure raised."""
        req, d, cid = job.req, self.delegate, job.req.cid
        records.reset_records(req.state)
        t0 = time.monotonic()
        guard = d.guard_job("checkpoint", req.state, was_paused=job.was_paused)
        env = criuenv.hook_env(req.conf, req.state, {"RUNC_GRIT_IMAGE_DIR": job.image_dir})
        if job.thaw_for_cuda:  # the action script's pre-dump then finds it done
            with procs.guarded(guard, env):
                with _thawed(d, cid):
                    predump.pre_dump(int(req.runtime_state["pid"]), req.state, req.conf,
                                     req.log)
        rc, _ = procs.run(d.command(self.translate(req.inv, req.args)), env=env, guard=guard,
                          pass_fds=_fds(req.inv, "status-fd"))
        job.timings = {"checkpoint_s": time.monotonic() - t0}
        job.timings.update(records.hook_timings(req.state))
        if rc != 0:
            _thaw_if_left_frozen(job)
        if rc != 0 or job.leave_running:
            _roll_back_cuda(job)
        if rc != 0:
            self._dump_failed(job, rc)

    def _dump_failed(self, job, rc):
        req = job.req
        reason = criulog.run_failure(req.inv.global_value("log"),
                                     req.inv.value("work-path") or job.image_dir, rc)
        if not job.had_state and self.delegate.state(req.cid) is None:
            req.state.remove()
        raise RuntimeFailure("checkpoint of %s failed; the container was not checkpointed "
                             "and keeps running: %s" % (req.cid, reason), exit_code=rc)

    def checkpoint_failed(self, job, error):
        """runc's dump rolled back itself; nothing more."""

    def manifest_sections(self, job):
        conf = job.req.conf
        return ({"path": conf.criu, "version": criuenv.criu_version(conf)},
                records.manifest_section(job.req.state))

    def checkpoint_ends(self, job):
        """A dir made here recorded; the journal kept and the state's fate decided when the
        container is gone (runc's dump ends it)."""
        req = job.req
        _remember_made(job.image_dir, job.made, req.conf, req.log)
        req.log.debug("checkpoint of %s committed to %s (%d files, %.3fs)"
                      % (req.cid, job.image_dir, len(job.manifest["images"]),
                         job.timings["checkpoint_s"]))
        if job.resumed:
            req.log.debug("CUDA resumed in %s" % ",".join(str(p) for p in job.resumed))
        if not job.leave_running and self.delegate.state(req.cid) is None:
            _keep_journal(req.state, req.inv.value("work-path"), job.image_dir)
            if self.deletes_checkpointed:
                _remember_removed(req, job.bundle)
            elif not job.had_state:
                req.state.remove()


def _thaw_if_left_frozen(job):
    """CRIU died between freezing the cgroup and thawing it: the container resumed."""
    req, d = job.req, job.req.delegate
    if job.was_paused:
        return
    after = d.state(req.cid)
    if after is not None and after.get("status") == "paused":
        d.resume(req.cid)
        req.log.warning("checkpoint of %s failed with the container frozen; resumed it"
                        % req.cid)


def _roll_back_cuda(job):
    """The source keeps computing: undo the CUDA checkpoint of every process the action
    script locked or checkpointed (thawed, if its caller had paused it)."""
    req = job.req
    if job.thaw_for_cuda and records.read_record(req.state).get("processes"):
        with _thawed(req.delegate, req.cid):
            job.resumed = rollback.epilogue(req.state, req.conf, req.log)
    else:
        job.resumed = rollback.epilogue(req.state, req.conf, req.log)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _remember_made(image_dir, made, conf, log):
    """A dir this checkpoint created is recorded as this node's (checkpoint.provenance)."""
    from runc_grit.checkpoint import provenance
    try:
        if made:
            provenance.remember(image_dir, conf.state_dir)
        else:
            provenance.forget(image_dir, conf.state_dir)
    except OSError as e:
        log.warning("cannot record %s as made here (%s); restores will copy it"
                    % (image_dir, e.strerror))


def _remember_removed(req, bundle):
    """The runtime removed the container it checkpointed, as runc does, but its `delete`
    then fails in words containerd's shim does not take for "already gone" (crun: "error
    opening file .../status"; runc: "container does not exist"), so the task never
    finishes exiting. runc-grit remembers the checkpoint, and its `delete` succeeds
    (runc_grit.lifecycle)."""
    st = req.state
    if st.exists():
        st.update(removed_by_checkpoint=True)
    else:
        rec = req.record(None, removed_by_checkpoint=True)
        rec["bundle"] = bundle
        st.write(rec)


def _keep_journal(st, work_dir, image_dir):
    """The action script's journal, beside CRIU's dump.log in the work dir, when the
    container (and so runc-grit's state of it) is gone after its checkpoint."""
    if work_dir and os.path.abspath(work_dir) != image_dir:
        try:
            import shutil
            shutil.copyfile(st.path("hooks.jsonl"), os.path.join(work_dir, "grit-hooks.jsonl"))
        except OSError:
            pass


def _fds(inv, flag):
    """The descriptor a flag names (runc's --status-fd N), for the runtime to inherit."""
    try:
        fd = int(inv.value(flag))
    except (TypeError, ValueError):
        return ()
    return (fd,) if fd > 2 else ()


class _thawed:
    """A paused container, running inside the block, paused again after it."""

    def __init__(self, delegate, cid):
        self.delegate, self.cid = delegate, cid

    def __enter__(self):
        if self.delegate.resume(self.cid) != 0:
            raise CheckpointError("cannot resume %s for its CUDA steps; the container was not "
                                  "checkpointed" % self.cid)
        return self

    def __exit__(self, *exc):
        self.delegate.pause(self.cid)
        return False


def _apply_rootfs_diff(image_dir, req):
    """The files the source container had written into its rootfs, into the new rootfs."""
    from runc_grit.checkpoint import rootfsdiff
    root = (req.spec.get("root") or {}).get("path") or "rootfs"
    rootfs = root if os.path.isabs(root) else os.path.join(req.bundle, root)
    if os.path.lexists(os.path.join(image_dir, rootfsdiff.DIFF)):
        req.rootfs_touched = True
    done = rootfsdiff.apply(image_dir, rootfs)
    if done:
        req.log.debug("rootfs diff applied to %s: %d entries, %d deleted" % ((rootfs,) + done))
