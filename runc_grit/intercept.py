"""The runc commands runc-grit changes: create/run (restore-on-create), restore, checkpoint."""
import os
import sys
import time

from runc_grit import argv as _argv
from runc_grit import config as _config
from runc_grit import criuconf, errors, gpu, manifest, procs, source
from runc_grit import spec as _spec
from runc_grit.errors import GritError
from runc_grit.runclog import Logger, last_error
from runc_grit.runtime import Runtime
from runc_grit.state import ContainerState, ID_RE


def dispatch(inv, args):
    log = Logger.from_invocation(inv)
    try:
        conf = _config.load()
        handler = HANDLERS[inv.command]
        return handler(inv, args, conf, log)
    except GritError as e:
        log.error(e.message)
        return errors.exit_code(e)
    except Exception as e:  # noqa: BLE001 - one line in --log, never a traceback on stdio
        log.error("internal error: %s: %s" % (type(e).__name__, e))
        return 1


def hook_env(conf, st, extra=None):
    """Environment for the runtime, so CRIU's action script finds this container's state.

    The hook's Python starts without site (-S) and gets this process's import path and its
    already validated config as JSON: no YAML parser, no schema validation, no .pth scan in
    the dump's critical path."""
    import json
    env = dict(os.environ)
    env["RUNC_GRIT_STATE"] = st.dir
    if conf.path:
        env["RUNC_GRIT_CONFIG"] = conf.path
    env["RUNC_GRIT_PYTHON"] = sys.executable
    env["RUNC_GRIT_PYTHONPATH"] = procs.import_path()
    env["RUNC_GRIT_HOOK_CONF"] = json.dumps(conf.as_dict())
    if extra:
        env.update(extra)
    return env


def _with_criu(conf, args):
    if conf.criu and conf.criu != "criu":
        return _argv.with_global(args, "criu", conf.criu)
    return list(args)


def _exec(runtime, args):
    os.execv(runtime.path, runtime.command(args))


def _prepare_spec(conf, bundle, spec, spec_name, log, cgroups_mode=None):
    """Point the bundle's config.json at the shared CRIU config (criuconf). The change is
    the same for every container of the bundle, so config.json is written at most once, and
    never when it already names that config. A bundle runc-grit cannot write keeps working
    as with runc, without the action script (logged)."""
    ann = _spec.annotations(spec)
    user = criuconf.user_config(ann, conf.state_dir)
    path = criuconf.ensure(conf.state_dir, _criu_config(conf, user, cgroups_mode))
    changes = []
    if ann.get(criuconf.ANNOTATION) != path:
        changes.append(_spec.set_criu_config(path))
    if user is not None and ann.get(criuconf.USER_ANNOTATION) != user:
        changes.append(_spec.set_annotation(criuconf.USER_ANNOTATION, user))
    if not changes:
        return
    _spec.apply(spec, changes)
    try:
        _spec.save(bundle, spec, spec_name)
    except OSError as e:
        log.warning("bundle %s: cannot write %s (%s); the container runs without runc-grit's "
                    "CRIU action script" % (bundle, spec_name, e.strerror))


def _criu_config(conf, user, cgroups_mode=None):
    return criuconf.content(_config.hook_script(conf), conf.criu_options, user,
                            conf.restore_cgroups if cgroups_mode is None else cgroups_mode)


def _claim_state(rt, st):
    """A fresh state dir for a new container. None if the id is already a live container."""
    if st.read() is not None and rt.state(st.id) is not None:
        return False
    for name in os.listdir(st.dir):
        if name != "lock":
            p = st.path(name)
            if os.path.isdir(p):
                import shutil
                shutil.rmtree(p, ignore_errors=True)
            else:
                os.unlink(p)
    return True


def _failure_reason(inv, work_dir, rc):
    parts = []
    log_path = inv.global_value("log")
    msg = last_error(log_path) if log_path else None
    if msg:
        parts.append(msg)
    criu_err = _criu_error(work_dir, ("restore.log", "dump.log"))
    if criu_err:
        parts.append("criu: " + criu_err)
    return "; ".join(parts) or "runtime exited with status %d" % rc


def _criu_error(work_dir, names):
    if not work_dir:
        return None
    for name in names:
        try:
            with open(os.path.join(work_dir, name), "rb") as f:
                lines = f.read()[-200000:].decode("utf-8", "replace").splitlines()
        except OSError:
            continue
        if not any("FAILED" in ln for ln in lines):
            # CRIU did not reach its own failure report: it was killed
            return "%s ends without a result (CRIU was killed?)" % name
        errs = [ln.split("):", 1)[-1].strip() for ln in lines if "Error (" in ln]
        # the last error is the one that stopped CRIU; earlier ones are often harmless
        if errs:
            return errs[-1][:300]
    return None


# --- create / run -----------------------------------------------------------------------

def do_create(inv, args, conf, log):
    cid = inv.container_id
    bundle = os.path.abspath(inv.value("bundle") or os.getcwd())
    spec_name = inv.value("config") or "config.json"
    if len(inv.args) != 1 or not ID_RE.match(cid or "") or cid in (".", ".."):
        _refuse_if_restore(bundle, spec_name, conf, "%s needs one container id, got %r"
                           % (inv.command, inv.args))
        return _passthrough(conf, args)  # the runtime reports the usage error
    rt = Runtime.for_invocation(conf, inv)
    spec = _spec.load(bundle, spec_name)
    ann = _spec.annotations(spec)
    req = source.requested(ann, conf.on_restore_failure)
    st = ContainerState(conf.state_dir, cid)
    strategy = rt.strategy
    create_args = strategy.translate(inv, args)
    st.lock()
    try:
        if not _claim_state(rt, st):
            st.unlock()
            _exec(rt, create_args)  # the runtime reports "container exists"
        if not strategy.own_images:  # CRIU: the action script, through the CRIU config
            _prepare_spec(conf, bundle, spec, spec_name, log)
        if req is None:
            st.write({"id": cid, "bundle": bundle, "created": time.time(), "restored_from": None})
            st.unlock()
            _exec(rt, create_args)
        if strategy.own_images:
            fresh = None
            if req.policy == "fresh":
                def fresh(why):
                    return _fresh(log, rt, st, bundle, create_args, why)
            return strategy.restore_on_create(inv, args, conf, log, rt, st, bundle, spec, req,
                                              fresh)
        return _restore_on_create(inv, args, conf, log, rt, st, bundle, spec, req)
    finally:
        st.unlock()


def _refuse_if_restore(bundle, spec_name, conf, why):
    """An argv runc-grit cannot understand is never a silent fresh start: when its bundle
    asks for a restore, it is refused."""
    try:
        req = source.requested(_spec.annotations(_spec.load(bundle, spec_name)),
                               conf.on_restore_failure)
    except GritError:
        return
    if req is not None:
        raise GritError("%s asks for a restore from %s, but runc-grit cannot understand this "
                        "command line (%s); refused" % (os.path.join(bundle, spec_name), req.path,
                                                        why), kind="usage")


def _fresh(log, rt, st, bundle, args, why):
    """Policy 'fresh': the create the caller asked for, from scratch. Run as a child (not
    exec'd) so that a create that fails too leaves no state behind."""
    log.warning("%s; policy 'fresh': creating the container from scratch" % why)
    st.write({"id": st.id, "bundle": bundle, "created": time.time(), "restored_from": None,
              "fresh_because": why})
    rc, _ = procs.run(rt.command(args))
    if rc != 0 and rt.state(st.id) is None:
        st.remove()
    return rc


def _restore_on_create(inv, args, conf, log, rt, st, bundle, spec, req):
    cid = st.id
    try:
        rt.strategy.require_checkpoint("restore of %s" % cid)
        image_dir, m = source.validate(req.path, conf)
        from runc_grit import compat
        compat.check(m, "restore source %s" % req.path, os.path.basename(rt.path),
                     _criu_version(conf), _spec.annotations(spec))
        pairs = gpu.check_destination(m, conf, bundle)
        _apply_rootfs_diff(image_dir, bundle, spec, log)
    except GritError as e:
        if req.policy == "fresh":
            return _fresh(log, rt, st, bundle, args,
                          "restore from %s refused: %s" % (req.path, e.message))
        st.remove()
        raise
    work = st.path("criu-work")
    os.makedirs(work, exist_ok=True)
    detach = inv.command == "create" or inv.has("detach")
    try:
        rargs, dropped = _argv.create_to_restore(inv, image_dir, work, detach=detach)
    except _argv.ArgvError as e:
        st.remove()
        raise GritError("restore of %s from %s refused: %s" % (cid, req.path, e), kind="usage")
    rargs = _with_criu(conf, rargs)
    for flag in dropped:
        log.debug("restore has no --%s; dropped" % flag)
    st.write({"id": cid, "bundle": bundle, "created": time.time(), "restored_from": image_dir,
              "annotation": req.annotation, "phase": "restoring"})
    log.debug("restoring %s from %s" % (cid, image_dir))
    t0 = time.monotonic()
    extra = {"RUNC_GRIT_IMAGE_DIR": image_dir}
    if pairs is not None:
        import json
        extra["RUNC_GRIT_DEVICE_PAIRS"] = json.dumps(pairs)
    if detach:
        procs.become_subreaper()
    rc, _ = procs.run(rt.command(rargs), env=hook_env(conf, st, extra),
                      guard=rt.guard_job("restore", st) if detach else None)
    elapsed = time.monotonic() - t0
    ok = rc == 0 and (not detach or rt.state(cid) is not None)
    reason = None
    if ok and detach:
        why = gpu.resume_failure(st, pairs is not None)
        if why:  # the tasks run, but their CUDA state is still checkpointed: not a restore
            ok, reason = False, "CUDA state not resumed: %s" % why
    if ok:
        st.update(phase="restored", restore_seconds=elapsed)
        if inv.command == "create":
            st.mark_restored()
        log.debug("restored %s in %.3fs" % (cid, elapsed))
        return 0 if detach else rc
    reason = reason or _failure_reason(inv, work, rc)
    rt.force_delete(cid)
    rt.release_restore_mounts(cid)
    if detach:
        procs.kill_adopted()  # tasks a killed or failed CRIU left behind
    if req.policy == "fresh":
        return _fresh(log, rt, st, bundle, args,
                      "restore from %s failed: %s" % (image_dir, reason))
    st.remove()
    raise GritError("restore from %s failed: %s" % (image_dir, reason), kind="restore")


def _apply_rootfs_diff(image_dir, bundle, spec, log):
    """The files the source container had written into its rootfs, into the new rootfs."""
    from runc_grit import rootfsdiff
    root = (spec.get("root") or {}).get("path") or "rootfs"
    rootfs = root if os.path.isabs(root) else os.path.join(bundle, root)
    done = rootfsdiff.apply(image_dir, rootfs)
    if done:
        log.debug("rootfs diff applied to %s: %d entries, %d deleted" % ((rootfs,) + done))


def _passthrough(conf, args):
    from runc_grit.entry import passthrough
    return passthrough(args, conf.as_dict())


# --- restore (called directly, e.g. by containerd's own restore) -------------------------

def do_restore(inv, args, conf, log):
    cid = inv.container_id
    if len(inv.args) != 1 or not ID_RE.match(cid or ""):
        return _passthrough(conf, args)
    rt = Runtime.for_invocation(conf, inv)
    bundle = os.path.abspath(inv.value("bundle") or os.getcwd())
    spec = _spec.load(bundle)
    st = ContainerState(conf.state_dir, cid)
    if rt.strategy.own_images:
        with st:
            if not _claim_state(rt, st):
                _exec(rt, rt.strategy.translate(inv, args))
            return rt.strategy.restore(inv, conf, log, rt, st, bundle)
    with st:
        if not _claim_state(rt, st):
            _exec(rt, args)
        # the caller chose a cgroup mode: the CRIU config (which would win) names none
        _prepare_spec(conf, bundle, spec, "config.json", log,
                      "runtime" if inv.value("manage-cgroups-mode") else None)
        image_dir = inv.value("image-path") or os.path.join(os.getcwd(), "checkpoint")
        st.write({"id": cid, "bundle": bundle, "created": time.time(),
                  "restored_from": os.path.abspath(image_dir), "phase": "restoring"})
        rc, _ = procs.run(rt.command(_with_criu(conf, args)),
                          env=hook_env(conf, st, {"RUNC_GRIT_IMAGE_DIR": image_dir}))
        why = gpu.resume_failure(st, False) if rc == 0 else None
        if why:
            rt.force_delete(cid)
            st.remove()
            raise GritError("restore of %s: CUDA state not resumed: %s" % (cid, why),
                            kind="restore")
        if rc == 0:
            st.update(phase="restored")
        elif rt.state(cid) is None:
            st.remove()
        return rc


# --- checkpoint --------------------------------------------------------------------------

def do_checkpoint(inv, args, conf, log):
    cid = inv.container_id
    if len(inv.args) != 1 or not ID_RE.match(cid or ""):
        return _passthrough(conf, args)
    rt = Runtime.for_invocation(conf, inv)
    info = rt.state(cid)
    if info is None:
        _exec(rt, rt.strategy.translate(inv, args))  # the runtime reports the missing container
    if rt.strategy.own_images:
        return rt.strategy.checkpoint(inv, conf, log, rt, info)
    rt.strategy.require_checkpoint("checkpoint of %s" % cid)
    ann = info.get("annotations") or {}
    criuconf.recreate(ann.get(criuconf.ANNOTATION), conf.state_dir,
                      _criu_config(conf, criuconf.user_config(ann, conf.state_dir)))
    image_dir = os.path.abspath(inv.value("image-path") or os.path.join(os.getcwd(), "checkpoint"))
    leave_running = inv.has("leave-running")
    pre_dump = inv.has("pre-dump")
    st = ContainerState(conf.state_dir, cid)
    had_state = st.exists()
    with st:
        manifest.prepare_dir(image_dir, "checkpoint of %s" % cid)
        gpu.reset_records(st)
        t0 = time.monotonic()
        rc, _ = procs.run(rt.command(_with_criu(conf, args)),
                          env=hook_env(conf, st, {"RUNC_GRIT_IMAGE_DIR": image_dir}),
                          guard=rt.guard_job("checkpoint", st,
                                             was_paused=info.get("status") == "paused"))
        dump_s = time.monotonic() - t0
        resumed = []
        if rc != 0 and info.get("status") != "paused":
            after = rt.state(cid)
            if after is not None and after.get("status") == "paused":
                # CRIU died between freezing the cgroup and thawing it
                rt.resume(cid)
                log.warning("checkpoint of %s failed with the container frozen; resumed it" % cid)
        if rc != 0 or leave_running:
            # The source keeps computing: undo the CUDA checkpoint of every process the
            # action script locked or checkpointed.
            resumed = gpu.epilogue(st, conf, log)
        if rc != 0:
            reason = _failure_reason(inv, inv.value("work-path") or image_dir, rc)
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
            from runc_grit import rootfsdiff
            diff = rootfsdiff.capture(info["rootfs"], image_dir)
        images = manifest.list_images(image_dir, digest=manifest.digests_wanted(conf))
        timings = {"checkpoint_s": dump_s}
        timings.update(gpu.hook_timings(st))
        timings["manifest_s"] = time.monotonic() - t1
        m = manifest.build(
            cid, info.get("annotations") or {}, info.get("bundle"), rt.describe(conf.state_dir),
            {"path": conf.criu, "version": _criu_version(conf)},
            images, timings, leave_running=leave_running, gpu=gpu.manifest_section(st),
        )
        if diff is not None:
            m["rootfs_diff"] = {"entries": diff[0], "deleted": diff[1]}
        manifest.commit(image_dir, m, conf)
        log.debug("checkpoint of %s committed to %s (%d files, %.3fs)"
                  % (cid, image_dir, len(images), dump_s))
        if resumed:
            log.debug("CUDA resumed in %s" % ",".join(str(p) for p in resumed))
        if not leave_running and rt.state(cid) is None and not had_state:
            st.remove()
        return 0


def _criu_version(conf):
    from runc_grit import fastconf
    path = fastconf.which(conf.criu) or conf.criu
    return procs.version_of(path, cache_dir=conf.state_dir)


HANDLERS = {"create": do_create, "run": do_create, "restore": do_restore,
            "checkpoint": do_checkpoint}
