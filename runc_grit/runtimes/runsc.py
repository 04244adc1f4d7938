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
from runc_grit.errors import CheckpointError, GpuError, GritError, UsageError
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
            raise UsageError("%s: %s" % (where, REFUSED_WHY.get(name, "runsc has no --" + name)))
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


def _stop_source(rt, req, info):
    """After a complete checkpoint without --leave-running: the source goes, as runc's dump
    ends it. Its sandbox process (the init pid containerd watches) is killed while still
    paused, so nothing runs past the checkpoint. runsc keeps calling the container "paused"
    until a forced delete, which takes a second or more: runc-grit marks it, and then reports
    it "stopped" and deletes it with --force when the caller asks (runc_grit.lifecycle)."""
    import signal
    from runc_grit.node.state import STOPPED_MARK
    st = req.state
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
        rec = req.record(None)
        rec["bundle"] = info.get("bundle")
        st.write(rec)
    with open(st.path(STOPPED_MARK), "w"):
        pass
    from runc_grit.node.procs import alive
    end = time.monotonic() + 5
    while alive(pid) and time.monotonic() < end:
        time.sleep(0.01)


class Runsc(Runtime):
    """gVisor: runsc's own images, the CUDA two-step inside the sandbox. The flows are the
    pipelines' (runtimes.restoring, runtimes.checkpointing); these are their runsc steps."""

    name = "runsc"
    image_format = "gVisor"
    captures_rootfs_diff = False  # gVisor's image holds the sandbox's files

    def globals(self, pairs):
        return globals_for_runsc(pairs)[0]

    def translate(self, inv, args):
        try:
            return to_runsc(inv)[0]
        except GritError:  # a flag runsc lacks: runsc itself says so
            return list(args)

    # -- the restore pipeline's steps ------------------------------------------------------
    def restore_begins(self, job):
        """Nothing: runsc reads no CRIU config."""

    def stage_given(self, job):
        """A direct restore's image dir, used as given: the CUDA processes its manifest (if
        any) names, to thaw afterwards."""
        from runc_grit.checkpoint import manifest
        try:
            job.cuda_pids = sandbox.pids_in(manifest.load(job.image_dir))
        except GritError:
            job.cuda_pids = []

    def check_restore(self, job):
        """On create: compatibility, CUDA allowed here, GPU destination. (No privilege check:
        gVisor's image holds the sandbox's guest state; the sandbox's privileges on the host
        come from the new spec.)"""
        if not job.on_create:
            return
        from runc_grit.checkpoint import compat
        req, m = job.req, job.manifest
        compat.check(m, job.where, os.path.basename(self.delegate.path), None,
                     (req.spec.get("annotations") or {}))
        job.cuda_pids = sandbox.pids_in(m)
        if job.cuda_pids and req.conf.cuda.get("enabled") == "never":
            raise GpuError("checkpoint holds CUDA state but cuda.enabled is 'never' here")
        if (m or {}).get("gpu", {}).get("devices"):
            from runc_grit.gpu import destination
            destination.check_destination(m, req.conf, req.bundle, req.spec)

    def restore_argv(self, job):
        """`runsc restore` argv: a create rewritten (create_to_restore), or the direct call
        translated (to_runsc)."""
        req = job.req
        job.record["runtime"] = "runsc"
        if job.on_create:
            job.record.update(annotation=req.restore.annotation, root=self.delegate.root())
            rargs, dropped = create_to_restore(req.inv, job.image_dir, detach=job.detach)
        else:
            rargs, dropped = to_runsc(req.inv)
        for flag in dropped:
            req.log.debug("runsc restore has no --%s; dropped" % flag)
        return rargs

    def run_restore(self, job, argv):
        from runc_grit.node import procs
        return procs.run(self.delegate.command(argv))[0]

    def restored_problem(self, job, info):
        """The image's CUDA processes thawed inside the restored sandbox; why not, or None."""
        if not job.cuda_pids or info is None:
            return None
        try:
            helper = sandbox.SandboxHelper(self.delegate, job.req.cid,
                                           job.req.conf.cuda.get("sandbox_helper"))
            sandbox.thaw_restored(helper, job.cuda_pids, job.req.log)
        except GritError as e:
            return "CUDA state not resumed: %s" % e.message
        return None

    def restored_fields(self, job):
        return {"cuda_pids": job.cuda_pids}

    def restore_failure(self, job, rc):
        return failure_reason(job.req.inv.global_value("log"), rc, "runsc")

    def clean_failed_restore(self, job):
        self.delegate.force_delete(job.req.cid)

    # -- the checkpoint pipeline's steps ---------------------------------------------------
    def checkpoint_begins(self, job):
        """A failed `runsc checkpoint` kills the sandbox (gVisor 20240729, ENOSPC for one), so
        runc-grit never runs it on a live sandbox without --leave-running: it pauses the
        sandbox, checkpoints it with --leave-running, writes the manifest, and only then
        stops the source or resumes it. Refuses pre-dump & co. here, before anything runs."""
        from runc_grit.oci import spec as _spec
        req, inv = job.req, job.req.inv
        flags = [(n, v) for n, v in inv.flags if n not in ("image-path", "leave-running")]
        flags += [("leave-running", None), ("image-path", job.image_dir)]
        job.argv, dropped = to_runsc(_argv.Invocation(inv.globals, inv.command, flags, inv.args))
        for flag in dropped:
            req.log.debug("runsc checkpoint has no --%s; dropped" % flag)
        try:
            job.spec = _spec.load(job.bundle) if job.bundle else {}
        except GritError:
            job.spec = {}
        job.annotations = job.annotations or _spec.annotations(job.spec)
        job.frozen, job.helper = [], None
        if sandbox.wanted(req.conf, job.spec, self.delegate.globals):
            if job.was_paused:
                raise CheckpointError("checkpoint of %s: the container is paused; resume it "
                                      "first (its CUDA processes must be frozen inside the "
                                      "running sandbox)" % req.cid)
            job.helper = sandbox.SandboxHelper(self.delegate, req.cid,
                                               req.conf.cuda.get("sandbox_helper"))

    def checkpoint_guard(self, job):
        """If runc-grit dies inside the sequence, runc_grit.guard undoes what was done (it
        finds the frozen CUDA processes itself, so the freeze is covered too)."""
        from runc_grit.node import procs
        guard = self.delegate.guard_job(
            "runsc-checkpoint", job.req.state, was_paused=job.was_paused,
            sandbox_helper=job.helper.path if job.helper else None, image_dir=job.image_dir)
        return procs.guarded(guard)

    def dump(self, job):
        """CUDA frozen inside the sandbox, the sandbox paused, `runsc checkpoint
        --leave-running`."""
        from runc_grit.node import procs
        req, cid = job.req, job.req.cid
        t0 = time.monotonic()
        if job.helper:
            job.frozen = sandbox.freeze(job.helper, req.conf, req.log)
        t1 = time.monotonic()
        if not job.was_paused and self.delegate.pause(cid) != 0:
            raise CheckpointError("runsc pause %s failed" % cid)
        rc, _ = procs.run(self.delegate.command(job.argv))
        job.timings = {"checkpoint_s": time.monotonic() - t1, "cuda_freeze_s": t1 - t0}
        if rc != 0:
            raise CheckpointError(failure_reason(req.inv.global_value("log"), rc, "runsc"))

    def checkpoint_failed(self, job, error):
        """Any failure before the commit: the manifest removed, the sandbox computing again."""
        from runc_grit.checkpoint import manifest
        req = job.req
        manifest.remove(job.image_dir)
        state = _release(self.delegate, req.cid, job.was_paused, job.helper, job.frozen, req.log)
        what = getattr(error, "message", None) or str(error)
        raise CheckpointError("checkpoint of %s failed; the container was not checkpointed %s: "
                              "%s" % (req.cid, "and keeps running" if state == "running" else
                                      "(it is %s now)" % (state or "gone"), what)) from None

    def manifest_sections(self, job):
        return ({"path": None, "version": None},
                sandbox.manifest_section(job.helper, job.frozen) if job.helper else None)

    def checkpoint_ends(self, job):
        """The source resumed (--leave-running) or stopped, as runc's dump ends it."""
        req = job.req
        if job.leave_running:
            _release(self.delegate, req.cid, job.was_paused, job.helper, job.frozen, req.log)
        else:
            _stop_source(self.delegate, req, req.runtime_state)
        req.log.debug("runsc checkpoint of %s committed to %s (%d files, %.3fs, %d CUDA "
                      "processes)" % (req.cid, job.image_dir, len(job.manifest["images"]),
                                      job.timings["checkpoint_s"], len(job.frozen)))
