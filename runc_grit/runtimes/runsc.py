"""gVisor (runsc) as the delegate runtime: its own checkpoint images, no CRIU.

  create with grit.dev/restore-from  ->  runsc restore --detach --image-path IMG ...
  checkpoint                         ->  [CUDA frozen inside the sandbox]
                                         runsc checkpoint --image-path IMG [--leave-running]
                                         grit-manifest.json, as for runc
  after the restore                  ->  CUDA unfrozen inside the sandbox

runc's command line does not fit runsc's: the tables below say which runc flag becomes which
runsc flag, which are dropped (CRIU tuning runsc has no use for) and which are refused
(features runsc does not have). The translations are pure functions of a parsed invocation.
A checkpoint is a directory holding checkpoint.img (gVisor's state file, magic "gVisorSF").
"""
import os
import time

from runc_grit import argv as _argv
from runc_grit.errors import GritError
from runc_grit.gpu import sandbox
from runc_grit.oci.runclog import failure_reason
from runc_grit.runtimes.base import Runtime

# runsc's own global flags (gVisor 20240729, `runsc flags`): True takes a value (Go flags:
# a boolean never takes a separate one). runc-grit passes them on as they are; the table is
# what the argv tests check oci.argv's rule for unknown flags against.
RUNSC_GLOBALS = {
    "EXPERIMENTAL-xdp": True, "EXPERIMENTAL-xdp-need-wakeup": False,
    "TESTONLY-afs-syscall-panic": False, "TESTONLY-allow-packet-endpoint-write": False,
    "TESTONLY-autosave-image-path": True, "TESTONLY-autosave-resume": False,
    "TESTONLY-test-name-env": True, "TESTONLY-unsafe-nonroot": False,
    "allow-flag-override": False, "alsologtostderr": False, "app-huge-pages": False,
    "buffer-pooling": False, "cgroupfs": False, "coverage-fd": True, "coverage-report": True,
    "cpu-num-from-quota": False, "dcache": True, "debug": False, "debug-command": True,
    "debug-log": True, "debug-log-fd": True, "debug-log-format": True,
    "debug-to-user-log": False, "directfs": False, "enable-core-tags": False, "fdlimit": True,
    "file-access": True, "file-access-mounts": True, "fsgofer-host-uds": False, "fuse": False,
    "gso": False, "gvisor-gro": False, "host-fifo": True, "host-uds": True,
    "ignore-cgroups": False, "iouring": False, "lisafs": False, "log": True, "log-fd": True,
    "log-format": True, "log-packets": False, "metric-server": True,
    "net-disconnect-ok": False, "net-raw": True, "network": True,
    "network-processors-per-channel": True, "num-network-channels": True, "nvproxy": False,
    "nvproxy-docker": True, "nvproxy-driver-version": True, "oci-seccomp": False,
    "overlay": False, "overlay2": True, "panic-log": True, "panic-log-fd": True,
    "panic-signal": True, "pcap-log": True, "platform": True, "platform_device_path": True,
    "pod-init-config": True, "profile": False, "profile-block": True, "profile-cpu": True,
    "profile-heap": True, "profile-mutex": True, "profiling-metrics": True,
    "profiling-metrics-log": True, "profiling-metrics-rate-us": True, "qdisc": True,
    "ref-leak-mode": True, "reproduce-nat": False, "reproduce-nftables": False, "root": True,
    "rootless": False, "rx-checksum-offload": False, "software-gso": False, "strace": False,
    "strace-event": False, "strace-log-size": True, "strace-syscalls": True,
    "systemd-cgroup": False, "tpuproxy": False, "trace": True, "traceback": True,
    "tx-checksum-offload": False, "version": False, "vfs2": False, "watchdog-action": True,
}

# runc global flag -> runsc global flag (None: runsc has no such flag; dropped).
GLOBALS = {"debug": "debug", "log": "log", "log-format": "log-format", "root": "root",
           "systemd-cgroup": "systemd-cgroup", "criu": None, "rootless": "rootless",
           "help": None, "version": None}

# Per command: runc flag -> runsc flag of the same command (None: dropped, and reported).
CREATE = {"bundle": "bundle", "console-socket": "console-socket", "pid-file": "pid-file",
          "pidfd-socket": None, "no-pivot": None, "no-new-keyring": None, "preserve-fds": None}
RUN = dict(CREATE, detach="detach", keep=None, **{"no-subreaper": None})
RESTORE = {"bundle": "bundle", "console-socket": "console-socket", "pid-file": "pid-file",
           "detach": "detach", "image-path": "image-path", "pidfd-socket": None,
           "no-subreaper": None, "no-pivot": None, "work-path": None, "tcp-established": None,
           "ext-unix-sk": None, "shell-job": None, "file-locks": None,
           "manage-cgroups-mode": None, "empty-ns": None, "auto-dedup": None,
           "lazy-pages": False, "lsm-profile": None, "lsm-mount-context": None}
CHECKPOINT = {"image-path": "image-path", "leave-running": "leave-running", "work-path": None,
              "tcp-established": None, "ext-unix-sk": None, "shell-job": None,
              "file-locks": None, "manage-cgroups-mode": None, "empty-ns": None,
              "auto-dedup": None, "tcp-skip-in-flight": None, "link-remap": None,
              "pre-dump": False, "parent-path": False, "lazy-pages": False,
              "page-server": False, "status-fd": False}
# False above: runsc cannot do what the flag asks; the command is refused, not changed.
REFUSED_WHY = {
    "pre-dump": "runsc has no pre-dump (iterative checkpoints)",
    "parent-path": "runsc has no incremental checkpoints (--parent-path)",
    "lazy-pages": "runsc has no lazy (post-copy) restore",
    "page-server": "runsc has no page server",
    "status-fd": "runsc has no --status-fd (it is used with lazy pages)",
}
TABLES = {"create": CREATE, "run": RUN, "restore": RESTORE, "checkpoint": CHECKPOINT}


def _flags(pairs, table, where):
    out, dropped = [], []
    for name, value in pairs:
        if name.startswith("-"):  # a flag runc-grit's tables lack (runsc's own): as it came
            out.append((name, value))
            continue
        to = table.get(name)
        if to is False:
            raise GritError("%s: %s" % (where, REFUSED_WHY.get(name, "runsc has no --" + name)),
                            kind="usage")
        if to is None:
            dropped.append(name)
            continue
        if name == "rootless":
            # runc: --rootless true|false|auto; runsc: a boolean flag
            if value is not None and value.lower() not in _argv.TRUE_WORDS:
                dropped.append(name)
                continue
            value = None
        out.append((to, value))
    return out, dropped


def globals_for_runsc(globals_):
    """runc's global flags as runsc takes them: (rendered argv, dropped names). Pure."""
    pairs, dropped = _flags(globals_, GLOBALS, "runsc")
    return _argv._render_flags(pairs), dropped


def to_runsc(inv):
    """A parsed runc create/run/checkpoint/restore as runsc argv: (argv, dropped). Pure.
    Raises GritError for a flag runsc cannot honour."""
    table = TABLES.get(inv.command)
    if table is None:
        raise _argv.ArgvError("no runsc translation for %r" % (inv.command,))
    g, gdropped = globals_for_runsc(inv.globals)
    flags, dropped = _flags(inv.flags, table, "%s of %s" % (inv.command, inv.container_id))
    out = g + [inv.command] + _argv._render_flags(flags)
    if any(a.startswith("-") for a in inv.args):
        out.append("--")
    return out + list(inv.args), gdropped + dropped


def create_to_restore(inv, image_path, detach=True):
    """A parsed runc create (or run) as `runsc restore` from image_path: (argv, dropped). Pure."""
    if inv.command not in ("create", "run"):
        raise _argv.ArgvError("not a create or run command: %r" % (inv.command,))
    if len(inv.args) != 1:
        raise _argv.ArgvError("%s needs exactly one container id, got %d"
                              % (inv.command, len(inv.args)))
    g, gdropped = globals_for_runsc(inv.globals)
    keep = [(n, v) for n, v in inv.flags if n != "detach"]
    flags, dropped = _flags(keep, RESTORE, "restore of %s" % inv.args[0])
    if inv.command == "create" or detach:
        flags.insert(0, ("detach", None))
    flags.append(("image-path", image_path))
    return g + ["restore"] + _argv._render_flags(flags) + [inv.args[0]], gdropped + dropped


# --- checkpoint helpers ------------------------------------------------------------------

def _commit(req, spec, bundle, image_dir, leave_running, helper, frozen, timings):
    """spec.dump and grit-manifest.json (last, atomically): the checkpoint is complete."""
    from runc_grit.checkpoint import manifest
    from runc_grit.oci import spec as _spec
    conf = req.conf
    t = time.monotonic()
    manifest.save_spec(bundle, image_dir)
    images = manifest.list_images(image_dir, digest=manifest.digests_wanted(conf))
    timings["manifest_s"] = time.monotonic() - t
    m = manifest.build(
        req.cid, req.info.get("annotations") or _spec.annotations(spec), bundle,
        req.runtime.describe(conf.state_dir), {"path": None, "version": None}, images, timings,
        leave_running=leave_running,
        gpu=sandbox.manifest_section(helper, frozen) if helper else None)
    manifest.commit(image_dir, m, conf)
    return m


def _release(rt, cid, was_paused, helper, frozen, log):
    """The sandbox computes again: resumed (unless it was paused before), CUDA unfrozen.
    Returns its status."""
    info = rt.state(cid) or {}
    if info.get("status") == "paused" and not was_paused:
        rt.resume(cid)
        info = rt.state(cid) or {}
    if frozen and info.get("status") == "running":
        sandbox.unfreeze(helper, frozen, log)
    return info.get("status")


def _stop_source(rt, st, info):
    """After a complete checkpoint without --leave-running: the source goes, as runc's dump
    ends it. Its sandbox process (the init pid containerd watches) is killed while still
    paused, so nothing runs past the checkpoint. runsc keeps calling the container "paused"
    until a forced delete, which takes a second or more: runc-grit marks it, and then reports
    it "stopped" and deletes it with --force when the caller asks (runc_grit.lifecycle)."""
    import signal
    from runc_grit.node.state import STOPPED_MARK
    pid = (rt.state(st.id) or {}).get("pid") or info.get("pid")
    if not pid:
        return
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            if not f.read().startswith(b"runsc-sandbox"):
                return
        os.kill(pid, signal.SIGKILL)
    except OSError:
        return
    if not st.exists():
        st.write({"id": st.id, "bundle": info.get("bundle"), "created": time.time(),
                  "restored_from": None})
    with open(st.path(STOPPED_MARK), "w"):
        pass
    from runc_grit.node.procs import alive
    end = time.monotonic() + 5
    while alive(pid) and time.monotonic() < end:
        time.sleep(0.01)


class Runsc(Runtime):
    """gVisor: runsc's own images, the CUDA two-step inside the sandbox."""

    name = "runsc"
    image_format = "gVisor"

    def globals(self, pairs):
        return globals_for_runsc(pairs)[0]

    def translate(self, inv, args):
        try:
            return to_runsc(inv)[0]
        except GritError:  # a flag runsc lacks: runsc itself says so
            return list(args)

    def checkpoint(self, req):
        """`checkpoint` of a runsc container, with the CUDA two-step inside the sandbox.

        A failed `runsc checkpoint` kills the sandbox (gVisor 20240729, ENOSPC for one), so
        runc-grit never runs it on a live sandbox without --leave-running: it pauses the sandbox,
        checkpoints it with --leave-running, writes the manifest, and only then stops the source
        (without the caller's --leave-running: its sandbox killed, as runc's dump ends the tasks)
        or resumes it. Any failure before that resumes the sandbox and unfreezes its CUDA processes,
        and so does runc_grit.guard if runc-grit dies inside the sequence."""
        from runc_grit.checkpoint import manifest
        from runc_grit.node import procs
        from runc_grit.oci import spec as _spec
        inv, conf, log, rt, info, cid = req.inv, req.conf, req.log, req.rt, req.info, req.cid
        image_dir = os.path.abspath(inv.value("image-path") or os.path.join(os.getcwd(), "checkpoint"))
        leave_running = inv.has("leave-running")
        flags = [(n, v) for n, v in inv.flags if n not in ("image-path", "leave-running")]
        flags += [("leave-running", None), ("image-path", image_dir)]
        # refuses pre-dump & co. before anything happens
        rargs, dropped = to_runsc(_argv.Invocation(inv.globals, inv.command, flags, inv.args))
        for flag in dropped:
            log.debug("runsc checkpoint has no --%s; dropped" % flag)
        st = req.st
        bundle = info.get("bundle")
        was_paused = info.get("status") == "paused"
        try:
            spec = _spec.load(bundle) if bundle else {}
        except GritError:
            spec = {}
        with st:
            manifest.prepare_dir(image_dir, "checkpoint of %s" % cid)
            t0 = time.monotonic()
            frozen, helper = [], None
            if sandbox.wanted(conf, spec, rt.globals):
                if was_paused:
                    raise GritError("checkpoint of %s: the container is paused; resume it first (its "
                                    "CUDA processes must be frozen inside the running sandbox)" % cid,
                                    kind="checkpoint")
                helper = sandbox.SandboxHelper(rt, cid, conf.cuda.get("sandbox_helper"))
            # from here on, if runc-grit dies, the guard undoes what was done (it finds the frozen
            # CUDA processes itself, so the freeze is covered too)
            job = rt.guard_job("runsc-checkpoint", st, was_paused=was_paused,
                               sandbox_helper=helper.path if helper else None, image_dir=image_dir)
            with procs.guarded(job):
                if helper:
                    frozen = sandbox.freeze(helper, conf, log)
                t1 = time.monotonic()
                try:
                    if not was_paused and rt.pause(cid) != 0:
                        raise GritError("runsc pause %s failed" % cid, kind="checkpoint")
                    rc, _ = procs.run(rt.command(rargs))
                    dump_s = time.monotonic() - t1
                    if rc != 0:
                        raise GritError(failure_reason(inv.global_value("log"), rc, "runsc"),
                                        kind="checkpoint", exit_code=rc)
                    m = _commit(req, spec, bundle, image_dir, leave_running, helper, frozen,
                                {"checkpoint_s": dump_s, "cuda_freeze_s": t1 - t0})
                except (GritError, OSError) as e:
                    manifest.remove(image_dir)
                    state = _release(rt, cid, was_paused, helper, frozen, log)
                    what = getattr(e, "message", None) or str(e)
                    raise GritError("checkpoint of %s failed; the container was not checkpointed %s: "
                                    "%s" % (cid, "and keeps running" if state == "running" else
                                            "(it is %s now)" % (state or "gone"), what),
                                    kind="checkpoint",
                                    exit_code=getattr(e, "exit_code", None)) from None
                if leave_running:
                    _release(rt, cid, was_paused, helper, frozen, log)
                else:
                    _stop_source(rt, st, info)
            log.debug("runsc checkpoint of %s committed to %s (%d files, %.3fs, %d CUDA processes)"
                      % (cid, image_dir, len(m["images"]), dump_s, len(frozen)))
            return 0

    def restore_on_create(self, req):
        """create -> `runsc restore --detach` from the request's images; then CUDA unfrozen in
        the sandbox."""
        from runc_grit.checkpoint import compat, source
        conf, rt = req.conf, req.rt
        bundle, spec, ask = req.bundle, req.spec, req.restore
        try:
            image_dir, m, real = source.validate(ask.path, conf, image_format="gVisor",
                                                 spec=spec)
        except GritError as e:
            return req.give_up(e, "restore from %s refused: %s" % (ask.path, e.message))
        try:  # image_dir: a verified copy (staging: copy), released whatever happens
            try:
                # (no privilege check: gVisor's image holds the sandbox's guest state; the
                # sandbox's privileges on the host come from the new spec)
                compat.check(m, "restore source %s" % ask.path, os.path.basename(rt.path), None,
                             (spec.get("annotations") or {}))
                cuda_pids = sandbox.pids_in(m)
                if cuda_pids and conf.cuda.get("enabled") == "never":
                    raise GritError("checkpoint holds CUDA state but cuda.enabled is 'never' here",
                                    kind="gpu")
                if (m or {}).get("gpu", {}).get("devices"):
                    from runc_grit.gpu import destination
                    destination.check_destination(m, conf, bundle, spec)
            except GritError as e:
                return req.give_up(e, "restore from %s refused: %s" % (ask.path, e.message))
            return self._restore(req, image_dir, real, cuda_pids)
        finally:
            source.release(image_dir, conf)

    def _restore(self, req, image_dir, real, cuda_pids):
        """`runsc restore` of the verified image_dir (from source real) as the created
        container; then its CUDA processes unfrozen inside the sandbox."""
        from runc_grit.node import procs
        inv, conf, log, rt, st, cid = req.inv, req.conf, req.log, req.rt, req.st, req.cid
        detach = inv.command == "create" or inv.has("detach")
        rargs, dropped = create_to_restore(inv, image_dir, detach=detach)
        for flag in dropped:
            log.debug("runsc restore has no --%s; dropped" % flag)
        st.write({"id": cid, "bundle": req.bundle, "created": time.time(), "restored_from": real,
                  "annotation": req.restore.annotation, "phase": "restoring", "runtime": "runsc",
                  "root": rt.root()})
        t0 = time.monotonic()
        rc, _ = procs.run(rt.command(rargs))
        elapsed = time.monotonic() - t0
        ok = rc == 0 and (not detach or rt.state(cid) is not None)
        reason = None
        if ok and detach and cuda_pids:
            try:
                helper = sandbox.SandboxHelper(rt, cid, conf.cuda.get("sandbox_helper"))
                sandbox.thaw_restored(helper, cuda_pids, log)
            except GritError as e:
                ok, reason = False, "CUDA state not resumed: %s" % e.message
        if ok:
            st.update(phase="restored", restore_seconds=elapsed, cuda_pids=cuda_pids)
            if inv.command == "create":
                st.mark_restored()
            log.debug("restored %s with runsc in %.3fs" % (cid, elapsed))
            return 0 if detach else rc
        if reason is None:
            reason = failure_reason(inv.global_value("log"), rc, "runsc")
        rt.force_delete(cid)
        return req.give_up(GritError("restore from %s failed: %s" % (real, reason),
                                     kind="restore"))

    def restore(self, req):
        """`restore` called directly (e.g. by containerd): translated for runsc; the CUDA
        processes the image's manifest names are unfrozen afterwards."""
        from runc_grit.checkpoint import manifest
        from runc_grit.node import procs
        inv, conf, log, rt, st, cid, bundle = req.inv, req.conf, req.log, req.rt, req.st, req.cid, req.bundle
        rargs, dropped = to_runsc(inv)
        for flag in dropped:
            log.debug("runsc restore has no --%s; dropped" % flag)
        image_dir = os.path.abspath(inv.value("image-path") or os.path.join(os.getcwd(), "checkpoint"))
        try:
            cuda_pids = sandbox.pids_in(manifest.load(image_dir))
        except GritError:
            cuda_pids = []
        st.write({"id": cid, "bundle": bundle, "created": time.time(), "restored_from": image_dir,
                  "phase": "restoring", "runtime": "runsc"})
        rc, _ = procs.run(rt.command(rargs))
        if rc == 0 and cuda_pids and rt.state(cid) is not None:
            try:
                sandbox.thaw_restored(
                    sandbox.SandboxHelper(rt, cid, conf.cuda.get("sandbox_helper")),
                    cuda_pids, log)
            except GritError as e:
                rt.force_delete(cid)
                st.remove()
                raise GritError("restore of %s: CUDA state not resumed: %s" % (cid, e.message),
                                kind="restore") from None
        if rc == 0:
            st.update(phase="restored")
        elif rt.state(cid) is None:
            st.remove()
        return rc
