"""GPU phase after the resume (CRIU's post-resume action, tasks running again): restore every
checkpointed CUDA process, remapping GPUs when the destination's differ, unlock it, and check
that it runs. CRIU ignores a failing post-resume script, so runc-grit asks resume_failure()."""
import json
import os
import time

from runc_grit.errors import GritError, GpuError
from runc_grit.gpu import destination, discovery
from runc_grit.gpu import helper as _helper
from runc_grit.gpu import records


def sync_gpu_nodes(init_pid, bundle):
    """/dev of the restored container made to hold the GPUs of its spec (gpu.devnodes)."""
    if not bundle:
        return
    from runc_grit.oci import spec as _spec
    try:
        spec = _spec.load(bundle)
    except GritError:
        return
    _sync_nodes(init_pid, spec)


def _sync_nodes(init_pid, spec):
    """gpu.devnodes.sync, with the runtime (nvidia or not) runc-grit restores through."""
    from runc_grit.gpu import devnodes
    return devnodes.sync(init_pid, spec, os.environ.get("RUNC_GRIT_NVIDIA_RUNTIME") == "1",
                         discovery.inventory_or_none)


def post_restore(init_pid, st):
    """CRIU's post-restore (tasks restored, not yet running): the container's /dev holds the
    GPU nodes its spec grants and no others. Returns (made, removed)."""
    bundle = (st.read() or {}).get("bundle") if st is not None else None
    from runc_grit.oci import spec as _spec
    if not bundle:
        raise GpuError("post-restore: the container's bundle is not known")
    return _sync_nodes(init_pid, _spec.load(bundle))


def _has_gpu_nodes(spec):
    return any(str(d.get("path", "")).startswith("/dev/nvidia")
               for d in ((spec or {}).get("linux") or {}).get("devices") or [])


def wants_gpu_nodes(m, spec, image_dir=None):
    """Must a restore of m (from image_dir) into spec make /dev's GPU nodes the spec's? When
    the checkpoint came from a container with GPUs (its manifest, its spec.dump), or the spec
    grants some."""
    if (m or {}).get("gpu") or _has_gpu_nodes(spec):
        return True
    try:
        with open(os.path.join(image_dir, "spec.dump")) as f:
            return _has_gpu_nodes(json.load(f))
    except (OSError, ValueError, TypeError):
        return False


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
            inventory = discovery.inventory()
            bundle = (st.read() or {}).get("bundle") if st is not None else None
            pairs = destination.device_pairs(src["devices"], destination.visible_devices(
                inventory, bundle, os.environ.get("RUNC_GRIT_NVIDIA_RUNTIME") == "1"))
    pairs = [tuple(x) for x in pairs or ()]
    if pairs and st is not None and not os.environ.get("RUNC_GRIT_GPU_NODES"):
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
        raise GpuError("CUDA processes not running after restore: %s"
                        % ", ".join("%d=%s" % kv for kv in sorted(bad.items())))
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
