"""GPU phase before the dump (CRIU's pre-dump action, tasks not frozen yet): lock every CUDA
process of the container (with a timeout), then checkpoint each (device memory into host
memory), so that CRIU dumps plain memory. Idempotent: runc runs every hook twice."""
import threading
import time

from runc_grit.errors import GpuError
from runc_grit.gpu import discovery
from runc_grit.gpu import helper as _helper
from runc_grit.gpu import records


def wanted(conf):
    """Will the pre-dump find CUDA processes to act on here: CUDA not off, a helper (the
    driver, or a configured binary) present."""
    return conf.cuda.get("enabled") != "never" and _helper.for_config(conf) is not None


def may_have_cuda(init_pid, conf):
    """Whether the container whose init is init_pid can hold CUDA processes, told without its
    tasks running (a paused container is thawed for its CUDA steps only when it can)."""
    helper = _helper.for_config(conf)
    return helper is not None and any(helper.may_be_cuda(p)
                                      for p in discovery.container_pids(init_pid))


def refuse_uncheckpointable(pids, cuda):
    """A process that holds an NVIDIA device open but that the driver does not report as a
    CUDA process (one still creating its context, or a GPU client CUDA's checkpoint does not
    cover) keeps the device open through the dump, and CRIU cannot dump it. Say so before
    anything is locked, instead of CRIU's "Dumping FAILED"."""
    others = [p for p in pids if p not in cuda and discovery.holds_nvidia_device(p)]
    if others:
        raise GpuError("pid %s holds an NVIDIA device open but is not a CUDA process the "
                        "driver can checkpoint (still initialising CUDA, or a GPU client "
                        "such as NVML): CRIU cannot dump it; checkpoint once it runs CUDA"
                        % ", ".join(map(str, others)))


def pre_dump(init_pid, st, conf, log=None):
    """Lock, then checkpoint, every CUDA process of the container. Idempotent."""
    if records.done(st, "pre-dump", init_pid):
        return []
    t0 = time.monotonic()
    if conf.cuda.get("enabled") == "never":
        records.mark(st, "pre-dump", init_pid)
        return []
    # NVML (or nvidia-smi) runs while the helper loads the driver: both are start-up costs
    inv_box = []
    inv_thread = threading.Thread(target=lambda: inv_box.append(discovery.inventory_or_none()), daemon=True)
    inv_thread.start()
    helper = _helper.for_config(conf)
    if helper is None:
        records.mark(st, "pre-dump", init_pid)
        return []
    t_helper = time.monotonic()
    pids = discovery.container_pids(init_pid)
    cuda = discovery.cuda_states(helper, init_pid, pids)
    refuse_uncheckpointable(pids, cuda)
    rec = records.read_record(st)
    rec.update({"init_pid": int(init_pid), "helper": helper.name,
                "processes": {str(p): {"state_before": s} for p, s in cuda.items()},
                "timings": {"helper_init_s": t_helper - t0}})
    if cuda:
        inv_thread.join(120)
        inv = inv_box[0] if inv_box else None
        if inv:
            rec["driver_version"] = inv["driver_version"]
            used = {u for p in cuda for u, _ in inv["apps"].get(p, [])}
            rec["devices"] = [{k: d[k] for k in ("index", "uuid", "name", "memory_total")}
                              for d in inv["devices"] if d["uuid"] in used or not used]
            for p in cuda:
                a = inv["apps"].get(p, [])
                rec["processes"][str(p)]["vram_bytes"] = sum(b or 0 for _, b in a) if a else None
                rec["processes"][str(p)]["devices"] = [u for u, _ in a]
    records.write_record(st, rec)  # before acting: the epilogue must know whom to resume
    timeout = int(conf.cuda.get("lock_timeout_ms", 10000))
    t1 = time.monotonic()
    for p, s in cuda.items():
        if s == "running":
            helper.lock(p, timeout)
            rec["processes"][str(p)]["locked"] = True
            records.write_record(st, rec)
    t2 = time.monotonic()
    locked = [p for p in cuda if helper.state(p) == "locked"]
    _helper.for_each(locked, helper.checkpoint)  # all at once: as long as the largest
    for p in locked:
        rec["processes"][str(p)]["checkpointed"] = True
    t3 = time.monotonic()
    for p in cuda:
        s = helper.state(p)
        if s != "checkpointed":
            raise GpuError("pid %d: CUDA state %s after checkpoint" % (p, s))
    rec["timings"].update({"discovery_s": t1 - t_helper, "cuda_lock_s": t2 - t1,
                           "cuda_checkpoint_s": t3 - t2,
                           "pre_dump_hook_s": time.monotonic() - t0})
    records.write_record(st, rec)
    records.mark(st, "pre-dump", init_pid)
    return sorted(cuda)
