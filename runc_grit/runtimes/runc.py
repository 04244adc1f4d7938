"""runc (and every runc-compatible runtime): checkpoints are CRIU's, and the GPU steps run in
CRIU's action script (runtimes.actionscript), named by the CRIU config every container's
config.json points at (runtimes.criuconf).

  create             config.json -> the shared CRIU config; the runtime's own create
  restore-on-create  the source checked (roots, manifest, signature, compatibility, GPUs),
                     the rootfs diff applied, then `runc restore --detach` with the create's
                     bundle, pid file, console socket and stdio; post-resume's CUDA result
                     checked (CRIU ignores a failing post-resume script)
  checkpoint         `runc checkpoint`, guarded; on failure or --leave-running the CUDA
                     rollback; on success spec.dump, the rootfs diff and the manifest (last)
  restore            `runc restore` as called, with the action script's environment
"""
import hashlib
import json
import os
import sys
import time

from runc_grit import argv as _argv
from runc_grit import fastconf
from runc_grit.checkpoint import compat, manifest, privileges, source
from runc_grit.errors import GritError
from runc_grit.gpu import destination, postresume, predump, records, rollback
from runc_grit.node import config as _config
from runc_grit.node import procs, rootmount
from runc_grit.oci import spec as _spec
from runc_grit.oci.runclog import last_error
from runc_grit.runtimes import criuconf
from runc_grit.runtimes.base import Runtime


class Runc(Runtime):
    name = "runc"

    # -- create ----------------------------------------------------------------------------
    def create(self, req):
        prepare_spec(req)
        return super().create(req)

    def restore_on_create(self, req):
        prepare_spec(req)
        conf, where = req.conf, "restore source %s" % req.restore.path
        t0 = time.monotonic()
        try:
            self.require_checkpoint("restore of %s" % req.cid)
            image_dir, m, real = source.validate(req.restore.path, conf, spec=req.spec)
        except GritError as e:
            return req.give_up(e, "restore from %s refused: %s" % (req.restore.path, e.message))
        req.timings = {"verify_s": time.monotonic() - t0}
        try:  # image_dir: a verified copy (staging: copy), released whatever happens
            try:
                t1 = time.monotonic()
                privileges.check(image_dir, req.spec, conf, req.log, where, req.bundle)
                compat.check(m, where, os.path.basename(self.rt.path), criu_version(conf),
                             _spec.annotations(req.spec))
                compat.check_device_env(image_dir, req.spec, conf, req.log, where)
                pairs = destination.check_destination(m, conf, req.bundle, req.spec,
                                                       self.nvidia_runtime)
                req.gpu_nodes = postresume.wants_gpu_nodes(m, req.spec, image_dir)
                _apply_rootfs_diff(image_dir, req)
                lines = self.restore_criu_options(req, image_dir)
                if lines:
                    prepare_spec(req, extra=lines)
                req.timings["checks_s"] = time.monotonic() - t1
            except GritError as e:
                return req.give_up(e, "restore from %s refused: %s"
                                   % (req.restore.path, e.message))
            return self._restore(req, image_dir, real, pairs)
        finally:
            source.release(image_dir, conf)

    def _restore(self, req, image_dir, real, pairs):
        """`runc restore` of the verified image_dir (from source real) as the created container."""
        conf, st, cid = req.conf, req.st, req.cid
        work = st.path("criu-work")
        os.makedirs(work, exist_ok=True)
        inv = req.inv
        detach = inv.command == "create" or inv.has("detach")
        try:
            rargs, dropped = _argv.create_to_restore(inv, image_dir, work, detach=detach)
        except _argv.ArgvError as e:
            st.remove()
            raise GritError("restore of %s from %s refused: %s" % (cid, req.restore.path, e),
                            kind="usage")
        for flag in dropped:
            req.log.debug("restore has no --%s; dropped" % flag)
        rargs[-1:-1] = privileges.restore_flags(req.spec, self.name)  # the spec's LSM label
        rargs = self.translate(_argv.parse(rargs), rargs)
        st.write({"id": cid, "bundle": req.bundle, "created": time.time(),
                  "restored_from": real, "annotation": req.restore.annotation,
                  "phase": "restoring", "root": self.rt.root()})
        req.log.debug("restoring %s from %s (as %s)" % (cid, real, image_dir))
        t0 = time.monotonic()
        extra = {"RUNC_GRIT_IMAGE_DIR": image_dir}
        if pairs is not None:
            extra["RUNC_GRIT_DEVICE_PAIRS"] = json.dumps(pairs)
        if req.gpu_nodes:
            extra["RUNC_GRIT_GPU_NODES"] = "1"
        if rootmount.wanted(req.spec):
            extra["RUNC_GRIT_READONLY_ROOT"] = "1"
        if self.nvidia_runtime:
            extra["RUNC_GRIT_NVIDIA_RUNTIME"] = "1"
        if detach:
            procs.become_subreaper()
        rc, _ = procs.run(self.rt.command(rargs), env=hook_env(conf, st, extra),
                          guard=self.rt.guard_job("restore", st) if detach else None)
        elapsed = time.monotonic() - t0
        info = self.rt.state(cid) if rc == 0 and detach else None
        ok = rc == 0 and (not detach or info is not None)
        reason = None
        if ok and detach:
            why = restored_problem(st, pairs, info, req.spec)
            if why:  # the tasks run, but not as a restore of this container may run
                ok, reason = False, why
        if ok:
            st.update(phase="restored", restore_seconds=elapsed,
                      timings={k: round(v, 3) for k, v in req.timings.items()},
                      staged=image_dir != real)
            if inv.command == "create":
                st.mark_restored()
            req.log.debug("restored %s in %.3fs" % (cid, elapsed))
            return 0 if detach else rc
        reason = reason or failure_reason(inv, work, rc, conf.state_dir, cid)
        self.rt.force_delete(cid)
        self.rt.release_restore_mounts(cid)
        if detach:
            procs.kill_adopted()  # tasks a killed or failed CRIU left behind
        msg = "restore from %s failed: %s" % (real, reason)
        return req.give_up(GritError(msg, kind="restore"))

    # -- restore (called directly, e.g. by containerd's own restore) -----------------------
    def restore(self, req):
        conf, st, cid, inv = req.conf, req.st, req.cid, req.inv
        # the caller chose a cgroup mode: the CRIU config (which would win) names none
        prepare_spec(req, "runtime" if inv.value("manage-cgroups-mode") else None)
        image_dir = os.path.abspath(inv.value("image-path")
                                    or os.path.join(os.getcwd(), "checkpoint"))
        extra = {"RUNC_GRIT_IMAGE_DIR": image_dir}
        pairs = None
        try:
            m = source.verify_given(image_dir, conf, source.is_kubernetes(req.spec), req.spec)
            if m is not None or source.is_kubernetes(req.spec):
                # a Kubernetes container's image came from its pod spec (containerd's
                # checkpoint restore): checked like a restore-on-create
                where = "restore of %s from %s" % (cid, image_dir)
                privileges.check(image_dir, req.spec, conf, req.log, where, req.bundle)
                compat.check(m, where, os.path.basename(self.rt.path), criu_version(conf),
                             _spec.annotations(req.spec))
                compat.check_device_env(image_dir, req.spec, conf, req.log, where)
                pairs = destination.check_destination(m, conf, req.bundle, req.spec,
                                                       self.nvidia_runtime)
                if postresume.wants_gpu_nodes(m, req.spec, image_dir):
                    extra["RUNC_GRIT_GPU_NODES"] = "1"
            if rootmount.wanted(req.spec):
                extra["RUNC_GRIT_READONLY_ROOT"] = "1"
                if self.nvidia_runtime:
                    extra["RUNC_GRIT_NVIDIA_RUNTIME"] = "1"
            lines = self.restore_criu_options(req, image_dir)
            if lines:
                prepare_spec(req, "runtime" if inv.value("manage-cgroups-mode") else None, lines)
        except GritError:
            st.remove()
            raise
        if pairs is not None:
            extra["RUNC_GRIT_DEVICE_PAIRS"] = json.dumps(pairs)
        lsm = privileges.restore_flags(req.spec, self.name)  # the spec's LSM label, for CRIU
        if lsm and inv.value("lsm-profile") is None:  # a caller's own choice stands
            inv = _argv.Invocation(inv.globals, inv.command,
                                   inv.flags + [("lsm-profile", lsm[1])], inv.args)
            req.args = inv.render()
        st.write({"id": cid, "bundle": req.bundle, "created": time.time(),
                  "restored_from": image_dir, "phase": "restoring", "root": self.rt.root()})
        rc, _ = procs.run(self.rt.command(self.translate(inv, req.args)),
                          env=hook_env(conf, st, extra))
        why = restored_problem(st, pairs, self.rt.state(cid), req.spec) if rc == 0 else None
        if why:
            self.rt.force_delete(cid)
            st.remove()
            raise GritError("restore of %s: %s" % (cid, why), kind="restore")
        if rc == 0:
            st.update(phase="restored")
        elif self.rt.state(cid) is None:
            st.remove()
        return rc

    # -- checkpoint ------------------------------------------------------------------------
    def checkpoint(self, req):
        conf, inv, cid, info, log, rt = req.conf, req.inv, req.cid, req.info, req.log, self.rt
        self.require_checkpoint("checkpoint of %s" % cid)
        ann = info.get("annotations") or {}
        criuconf.recreate(ann.get(criuconf.ANNOTATION), conf.state_dir,
                          criu_config(conf, criuconf.user_config(ann, conf.state_dir)))
        image_dir = os.path.abspath(inv.value("image-path")
                                    or os.path.join(os.getcwd(), "checkpoint"))
        leave_running = inv.has("leave-running")
        pre_dump = inv.has("pre-dump")
        was_paused = info.get("status") == "paused"
        # containerd (CRI CheckpointContainer) pauses a container before it checkpoints it,
        # but CUDA's lock, checkpoint, restore and unlock need its tasks running (on frozen
        # ones they hang until their timeout): the GPU steps run thawed, around the dump. A
        # container without an NVIDIA device open stays frozen where its caller paused it.
        thaw_for_cuda = (was_paused and predump.wanted(conf)
                         and predump.may_have_cuda(info["pid"], conf))
        st = req.st
        had_state = st.exists()
        made = not os.path.lexists(image_dir)  # by runc-grit: may be read in place later
        with st:
            manifest.prepare_dir(image_dir, "checkpoint of %s" % cid)
            records.reset_records(st)
            t0 = time.monotonic()
            job = rt.guard_job("checkpoint", st, was_paused=was_paused)
            env = hook_env(conf, st, {"RUNC_GRIT_IMAGE_DIR": image_dir})
            if thaw_for_cuda:  # the action script's pre-dump then finds it done
                with procs.guarded(job, env):
                    with _thawed(rt, cid):
                        predump.pre_dump(int(info["pid"]), st, conf, log)
            rc, _ = procs.run(rt.command(self.translate(inv, req.args)), env=env, guard=job,
                              pass_fds=_fds(inv, "status-fd"))
            dump_s = time.monotonic() - t0
            resumed = []
            if rc != 0 and not was_paused:
                after = rt.state(cid)
                if after is not None and after.get("status") == "paused":
                    # CRIU died between freezing the cgroup and thawing it
                    rt.resume(cid)
                    log.warning("checkpoint of %s failed with the container frozen; resumed it"
                                % cid)
            if rc != 0 or leave_running:
                # The source keeps computing: undo the CUDA checkpoint of every process the
                # action script locked or checkpointed (thawed, if its caller had paused it).
                if thaw_for_cuda and records.read_record(st).get("processes"):
                    with _thawed(rt, cid):
                        resumed = rollback.epilogue(st, conf, log)
                else:
                    resumed = rollback.epilogue(st, conf, log)
            if rc != 0:
                reason = failure_reason(inv, inv.value("work-path") or image_dir, rc)
                if not had_state and rt.state(cid) is None:
                    st.remove()
                raise GritError("checkpoint of %s failed; the container was not checkpointed "
                                "and keeps running: %s" % (cid, reason), kind="checkpoint",
                                exit_code=rc)
            if pre_dump:
                return 0
            t1 = time.monotonic()
            diff = None
            manifest.save_spec(info.get("bundle"), image_dir)
            if info.get("rootfs"):
                from runc_grit.checkpoint import rootfsdiff
                diff = rootfsdiff.capture(info["rootfs"], image_dir)
            images = manifest.list_images(image_dir, digest=manifest.digests_wanted(conf))
            timings = {"checkpoint_s": dump_s}
            timings.update(records.hook_timings(st))
            timings["manifest_s"] = time.monotonic() - t1
            m = manifest.build(
                cid, ann, info.get("bundle"), self.describe(conf.state_dir),
                {"path": conf.criu, "version": criu_version(conf)},
                images, timings, leave_running=leave_running, gpu=records.manifest_section(st),
            )
            if diff is not None:
                m["rootfs_diff"] = {"entries": diff[0], "deleted": diff[1]}
            manifest.commit(image_dir, m, conf)
            _remember_made(image_dir, made, conf, log)
            log.debug("checkpoint of %s committed to %s (%d files, %.3fs)"
                      % (cid, image_dir, len(images), dump_s))
            if resumed:
                log.debug("CUDA resumed in %s" % ",".join(str(p) for p in resumed))
            if not leave_running and rt.state(cid) is None:
                _keep_journal(st, inv.value("work-path"), image_dir)
                if self.deletes_checkpointed:
                    _remember_removed(st, info)
                elif not had_state:
                    st.remove()
            return 0


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


def _remember_removed(st, info):
    """The runtime removed the container it checkpointed, as runc does, but its `delete`
    then fails in words containerd's shim does not take for "already gone" (crun: "error
    opening file .../status"; runc: "container does not exist"), so the task never
    finishes exiting. runc-grit remembers the checkpoint, and its `delete` succeeds
    (runc_grit.lifecycle)."""
    if st.exists():
        st.update(removed_by_checkpoint=True)
    else:
        st.write({"id": st.id, "bundle": info.get("bundle"), "created": time.time(),
                  "restored_from": None, "removed_by_checkpoint": True})


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

    def __init__(self, rt, cid):
        self.rt, self.cid = rt, cid

    def __enter__(self):
        if self.rt.resume(self.cid) != 0:
            raise GritError("cannot resume %s for its CUDA steps; the container was not "
                            "checkpointed" % self.cid, kind="checkpoint")
        return self

    def __exit__(self, *exc):
        self.rt.pause(self.cid)
        return False


# --- the CRIU config, the action script's environment, CRIU itself -------------------------

# OCI namespace type -> /proc/<pid>/ns name
NS_FILES = {"pid": "pid", "network": "net", "ipc": "ipc", "uts": "uts", "mount": "mnt",
            "user": "user", "cgroup": "cgroup", "time": "time"}


def restored_problem(st, pairs, info, spec):
    """Why a restore whose tasks run is not a restore of this container (or None): their CUDA
    state still checkpointed (CRIU ignores a failing post-resume), or a namespace the spec
    gives the container of its own shared with the node."""
    why = postresume.resume_failure(st, pairs is not None)
    if why:
        return "CUDA state not resumed: %s" % why
    pid = (info or {}).get("pid")
    if pid and rootmount.wanted(spec) and not rootmount.is_readonly(pid):
        return "the restored container's root is writable; its spec makes it read-only"
    return shared_namespaces(pid, spec)


def shared_namespaces(pid, spec):
    """Why the restored init pid is not isolated as spec says (a namespace the spec gives the
    container of its own that the init shares with runc-grit, i.e. the node), or None."""
    if not pid:
        return None
    shared = []
    for ns in sorted(criuconf.private_namespaces(spec)):
        name = NS_FILES.get(ns)
        try:
            if name and os.readlink("/proc/%d/ns/%s" % (pid, name)) == \
                    os.readlink("/proc/self/ns/%s" % name):
                shared.append(ns)
        except OSError:
            continue
    if shared:
        return ("the restored process runs in the node's %s namespace%s, where its spec gives "
                "it its own" % ("/".join(shared), "s" if len(shared) > 1 else ""))
    return None


def criu_config(conf, user, cgroups_mode=None, extra=()):
    return criuconf.content(_config.hook_script(conf), list(conf.criu_options) + list(extra),
                            user, conf.restore_cgroups if cgroups_mode is None else cgroups_mode)


def prepare_spec(req, cgroups_mode=None, extra=()):
    """Point the bundle's config.json at the shared CRIU config (criuconf). The change is
    the same for every container of the bundle, so config.json is written at most once, and
    never when it already names that config. A bundle runc-grit cannot write keeps working
    as with runc, without the action script (logged). extra: lines a restore from one
    particular image needs (Runtime.restore_criu_options)."""
    conf, spec = req.conf, req.spec
    ann = _spec.annotations(spec)
    user = criuconf.user_config(ann, conf.state_dir)
    if cgroups_mode is None:
        cgroups_mode = criuconf.cgroups_mode_for(conf.restore_cgroups, spec)
    path = criuconf.ensure(conf.state_dir, criu_config(conf, user, cgroups_mode, extra))
    changes = []
    if ann.get(criuconf.ANNOTATION) != path:
        changes.append(_spec.set_criu_config(path))
    if user is not None and ann.get(criuconf.USER_ANNOTATION) != user:
        changes.append(_spec.set_annotation(criuconf.USER_ANNOTATION, user))
    if not changes:
        return
    _spec.apply(spec, changes)
    try:
        _spec.save(req.bundle, spec, req.spec_name)
    except OSError as e:
        req.log.warning("bundle %s: cannot write %s (%s); the container runs without "
                        "runc-grit's CRIU action script" % (req.bundle, req.spec_name, e.strerror))


def hook_env(conf, st, extra=None):
    """Environment for the runtime, so CRIU's action script finds this container's state.

    The hook's Python starts without site (-S) and gets this process's import path and its
    already validated config as JSON: no YAML parser, no schema validation, no .pth scan in
    the dump's critical path."""
    env = dict(os.environ)
    env["RUNC_GRIT_STATE"] = st.dir
    if conf.path:
        env["RUNC_GRIT_CONFIG"] = conf.path
    env["RUNC_GRIT_PYTHON"] = sys.executable
    env["RUNC_GRIT_PYTHONPATH"] = procs.import_path()
    env["RUNC_GRIT_HOOK_CONF"] = json.dumps(conf.as_dict())
    if conf.criu and conf.criu != "criu":
        env["PATH"] = criu_dir(conf) + os.pathsep + env.get("PATH", DEFAULT_PATH)
    if extra:
        env.update(extra)
    return env


DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def criu_dir(conf):
    """A dir holding only `criu`, the configured CRIU, to put first on the runtime's PATH.
    runc >= 1.2 runs the criu it finds on PATH whatever --criu says (1.3 warns on stderr,
    which on a restore-on-create is the container's; 1.4 refuses the flag), and runc 1.1 and
    crun look there too when no --criu is given: so runc-grit never passes --criu."""
    target = os.path.abspath(fastconf.which(conf.criu) or conf.criu)
    d = os.path.join(conf.state_dir, "criu-bin",
                     hashlib.sha256(target.encode()).hexdigest()[:16])
    link = os.path.join(d, "criu")
    if os.path.islink(link) and os.readlink(link) == target:
        return d
    os.makedirs(d, mode=0o755, exist_ok=True)
    tmp = "%s.%d" % (link, os.getpid())
    os.symlink(target, tmp)
    os.replace(tmp, link)
    return d


def criu_version(conf):
    path = fastconf.which(conf.criu) or conf.criu
    return procs.version_of(path, cache_dir=conf.state_dir)


def failure_reason(inv, work_dir, rc, state_dir=None, cid=None):
    """Why a runtime run failed: the runtime's last --log error and CRIU's cause line, hint
    and log (runtimes.criulog; the log kept under state_dir when the container goes)."""
    parts = []
    log_path = inv.global_value("log")
    msg = last_error(log_path) if log_path else None
    if msg:
        parts.append(msg)
    from runc_grit.runtimes import criulog
    criu_err = criulog.explain(work_dir, ("restore.log", "dump.log"), state_dir, cid)
    if criu_err:
        parts.append(criu_err)
    return "; ".join(parts) or "runtime exited with status %d" % rc


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
