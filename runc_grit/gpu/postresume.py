"""GPU phase after the resume (CRIU's post-resume action, tasks running again): restore every
checkpointed CUDA process, remapping GPUs when the destination's differ, unlock it, and check
that it runs. CRIU ignores a failing post-resume script, so runc-grit asks resume_failure()."""
import json
import os
import subprocess
import time

from runc_grit.errors import GritError
from runc_grit.gpu import destination, discovery
from runc_grit.gpu import helper as _helper
from runc_grit.gpu import records


def gpu_node_script(spec_devices, present):
    """Shell commands that make a container's /dev/nvidiaN nodes those of its spec: create
    the missing ones, remove GPU nodes the spec does not list. Pure."""
    want = {}
    for d in spec_devices or []:
        path = d.get("path", "")
        if path.startswith("/dev/nvidia") and d.get("type", "c") == "c":
            want[path] = d
    cmds = []
    for path, d in sorted(want.items()):
        if path not in present:
            cmds.append("mknod -m %o %s c %d %d && chown %d:%d %s" % (
                d.get("fileMode", 0o666) & 0o7777, path, int(d["major"]), int(d["minor"]),
                int(d.get("uid", 0)), int(d.get("gid", 0)), path))
    for path in sorted(present):
        if path[11:].isdigit() and path not in want:
            cmds.append("rm -f %s" % path)
    return cmds


def sync_gpu_nodes(init_pid, bundle):
    """Apply gpu_node_script inside the container's mount namespace (nsenter)."""
    if not bundle:
        return
    from runc_grit.oci import spec as _spec
    try:
        devices = ((_spec.load(bundle).get("linux") or {}).get("devices")) or []
    except GritError:
        return
    root = "/proc/%d/root/dev" % int(init_pid)
    try:
        present = {"/dev/" + n for n in os.listdir(root) if n.startswith("nvidia")}
    except OSError as e:
        raise GritError("cannot read the container's /dev: %s" % e.strerror, kind="gpu") from None
    cmds = gpu_node_script(devices, present)
    if not cmds:
        return
    try:
        p = subprocess.run(["nsenter", "-t", str(int(init_pid)), "-m", "--", "sh", "-ec",
                            "; ".join(cmds)], capture_output=True, timeout=30,
                           stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise GritError("GPU device nodes for the remap: %s" % e, kind="gpu") from None
    if p.returncode != 0:
        raise GritError("GPU device nodes for the remap: %s"
                        % p.stderr.decode("utf-8", "replace").strip()[-300:], kind="gpu")


def _manifest_gpu(image_dir):
    if not image_dir:
        return None
    from runc_grit.checkpoint import manifest
    try:
        m = manifest.load(image_dir)
    except GritError:
        return None
    return (m or {}).get("gpu")


def post_resume(init_pid, st, conf, image_dir=None, log=None, pairs=None):
    """Restore and unlock every checkpointed CUDA process; each must end `running`.
    ``pairs``: the GPU remapping runc-grit chose before the restore (check_destination);
    None: work it out here from the image's manifest and this node's GPUs."""
    if records.done(st, "post-resume", init_pid):
        return []
    t0 = time.monotonic()
    helper = _helper.for_config(conf)
    if helper is None:
        records.mark(st, "post-resume", init_pid)
        return []
    states = discovery.cuda_states(helper, init_pid)
    if pairs is None and any(s == "checkpointed" for s in states.values()):
        pairs = []
        src = _manifest_gpu(image_dir)
        if src and src.get("devices"):
            inv = discovery.inventory()
            bundle = (st.read() or {}).get("bundle") if st is not None else None
            pairs = destination.device_pairs(src["devices"], destination.visible_devices(inv, bundle))
    pairs = [tuple(x) for x in pairs or ()]
    if pairs and st is not None:
        # CRIU brought back the source's /dev (a tmpfs, dumped with its contents): the
        # source GPU's node is there, the destination's is not, and the driver cannot open
        # the GPU it remaps onto. Make /dev hold the GPUs of this container's spec.
        sync_gpu_nodes(init_pid, (st.read() or {}).get("bundle"))
    # all at once: the driver copies each process's memory back on its own
    _helper.for_each([p for p, s in states.items() if s == "checkpointed"],
                     lambda p: helper.restore(p, pairs))
    t1 = time.monotonic()
    for p in states:
        if helper.state(p) == "locked":
            helper.unlock(p)
    bad = {p: helper.state(p) for p in states}
    bad = {p: s for p, s in bad.items() if s != "running"}
    if bad:
        raise GritError("CUDA processes not running after restore: %s"
                        % ", ".join("%d=%s" % kv for kv in sorted(bad.items())), kind="gpu")
    if st is not None:
        rec = {"init_pid": int(init_pid), "restored": sorted(states), "device_pairs": pairs,
               "timings": {"cuda_restore_s": t1 - t0, "post_resume_hook_s": time.monotonic() - t0}}
        st.write(rec, "cuda-restore.json")
    records.mark(st, "post-resume", init_pid)
    return sorted(states)


def resume_failure(st, expect_cuda):
    """After a restore: why CUDA did not resume (the post-resume hook's error), or None.
    CRIU ignores a failing post-resume script, so runc-grit must look for itself.
    expect_cuda: the image holds CUDA state, so the hook must have completed."""
    if st is None or os.path.exists(records.st_path(st, "cuda-post-resume.done")):
        return None
    err = None
    try:
        with open(records.st_path(st, "hooks.jsonl")) as f:
            for ln in f:
                try:
                    rec = json.loads(ln)
                except ValueError:
                    continue
                if rec.get("action") == "post-resume" and rec.get("error"):
                    err = rec["error"]
    except OSError:
        pass
    if err:
        return err
    return "the post-resume hook did not run" if expect_cuda else None
