"""GPU steps of a container checkpoint, run from CRIU's action script and from runc-grit.

  pre-dump     (tasks not yet frozen): lock every CUDA process (with timeout), then
               checkpoint each (VRAM -> host RAM), so CRIU dumps plain memory.
  post-resume  (tasks running again): restore each CUDA process (remapping GPUs when the
               destination's differ), unlock it, and check that it is `running`.
  epilogue     (runc-grit, after the runtime's checkpoint returned): when the dump failed or
               ran with --leave-running, restore and unlock every process the pre-dump hook
               touched, so the source keeps computing.
Both hooks are idempotent (runc runs every hook twice): a second call finds its marker and
returns before loading CUDA. cuda.json in the container's state dir records what was done.
"""
import json
import os
import subprocess
import threading
import time

from runc_grit.errors import GritError

RECORD = "cuda.json"


# --- discovery ---------------------------------------------------------------------------

def _ns(pid):
    try:
        return os.readlink("/proc/%d/ns/pid" % pid)
    except OSError:
        return None


def _all_pids():
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            out.append(int(name))
    return out


def _descendants(root):
    children = {}
    for pid in _all_pids():
        try:
            with open("/proc/%d/stat" % pid, "rb") as f:
                data = f.read()
        except OSError:
            continue
        ppid = int(data[data.rfind(b")") + 2:].split()[1])
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return sorted(out)


def container_pids(init_pid):
    """Host pids of the container whose init is init_pid: its pid namespace, or (when it
    shares the host's) the init's process tree."""
    init_pid = int(init_pid)
    ns = _ns(init_pid)
    if ns is None:
        return []
    if ns == _ns(os.getpid()):
        return _descendants(init_pid)
    return sorted(p for p in _all_pids() if _ns(p) == ns)


# --- records -----------------------------------------------------------------------------

def _st_path(st, name=RECORD):
    return os.path.join(st.dir, name) if st is not None else None


def read_record(st):
    if st is None:
        return {}
    return st.read(RECORD, default={}) or {}


def _write_record(st, rec):
    if st is not None:
        st.write(rec, RECORD)


def reset_records(st):
    for name in (RECORD, "cuda-pre-dump.done", "cuda-post-resume.done"):
        try:
            os.unlink(os.path.join(st.dir, name))
        except FileNotFoundError:
            pass


def _marker(st, action, init_pid):
    return _st_path(st, "cuda-%s.done" % action)


def _done(st, action, init_pid):
    p = _marker(st, action, init_pid)
    if not p:
        return False
    try:
        with open(p) as f:
            return f.read().strip() == str(init_pid)
    except OSError:
        return False


def _mark(st, action, init_pid):
    p = _marker(st, action, init_pid)
    if p:
        with open(p, "w") as f:
            f.write("%s\n" % init_pid)


def hook_timings(st):
    return {k: v for k, v in (read_record(st).get("timings") or {}).items()
            if isinstance(v, (int, float))}


def manifest_section(st):
    rec = read_record(st)
    procs = rec.get("processes") or {}
    if not procs:
        return None
    return {
        "driver_version": rec.get("driver_version"),
        "devices": rec.get("devices") or [],
        "processes": [{"pid": int(p), "vram_bytes": v.get("vram_bytes"),
                       "devices": v.get("devices") or []} for p, v in sorted(procs.items())],
    }


# --- GPU inventory (NVML, else nvidia-smi) -------------------------------------------------

def inventory():
    """{"driver_version", "devices": [{index, uuid, name, memory_total}], "apps": {pid: [(uuid, bytes)]}}
    or None when this node shows no NVIDIA GPU."""
    try:
        return _inventory_nvml()
    except Exception:  # noqa: BLE001 - NVML missing or failing: try nvidia-smi
        pass
    return _inventory_smi()


def _inventory_or_none():
    try:
        return inventory()
    except Exception:  # noqa: BLE001 - the manifest then lacks the GPU inventory
        return None


def _inventory_nvml():
    import pynvml as n
    n.nvmlInit()
    try:
        drv = n.nvmlSystemGetDriverVersion()
        drv = drv.decode() if isinstance(drv, bytes) else drv
        devices, apps = [], {}
        for i in range(n.nvmlDeviceGetCount()):
            h = n.nvmlDeviceGetHandleByIndex(i)
            uuid = n.nvmlDeviceGetUUID(h)
            uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
            name = n.nvmlDeviceGetName(h)
            name = name.decode() if isinstance(name, bytes) else name
            try:
                minor = n.nvmlDeviceGetMinorNumber(h)
            except n.NVMLError:
                minor = i
            devices.append({"index": i, "minor": minor, "uuid": uuid, "name": name,
                            "memory_total": int(n.nvmlDeviceGetMemoryInfo(h).total)})
            for p in n.nvmlDeviceGetComputeRunningProcesses(h):
                apps.setdefault(int(p.pid), []).append((uuid, p.usedGpuMemory))
        return {"driver_version": drv, "devices": devices, "apps": apps}
    finally:
        n.nvmlShutdown()


def _smi(args):
    try:
        p = subprocess.run(["nvidia-smi"] + args, capture_output=True, timeout=60,
                           stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if p.returncode != 0:
        return None
    return [[c.strip() for c in ln.split(",")] for ln in p.stdout.decode().splitlines() if ln.strip()]


def _inventory_smi():
    rows = _smi(["--query-gpu=index,uuid,name,memory.total,driver_version",
                 "--format=csv,noheader,nounits"])
    if not rows:
        return None
    devices = [{"index": int(r[0]), "minor": int(r[0]), "uuid": r[1], "name": r[2],
                "memory_total": int(float(r[3])) << 20} for r in rows]
    apps = {}
    for r in _smi(["--query-compute-apps=pid,gpu_uuid,used_memory",
                   "--format=csv,noheader,nounits"]) or []:
        try:
            apps.setdefault(int(r[0]), []).append((r[1], int(float(r[2])) << 20))
        except (ValueError, IndexError):
            continue
    return {"driver_version": rows[0][4], "devices": devices, "apps": apps}


# --- helper ------------------------------------------------------------------------------

def _helper(conf, required=False):
    """The configured helper, or None when CUDA is off or (auto) this node has no driver."""
    cuda = conf.cuda
    if cuda.get("enabled") == "never":
        return None
    from runc_grit.cuda import helper as _h
    try:
        return _h.make(cuda)
    except GritError:
        if cuda.get("enabled") == "always" or required:
            raise
        return None


# --- hook actions ------------------------------------------------------------------------

def pre_dump(init_pid, st, conf, log=None):
    """Lock, then checkpoint, every CUDA process of the container. Idempotent."""
    if _done(st, "pre-dump", init_pid):
        return []
    t0 = time.monotonic()
    if conf.cuda.get("enabled") == "never":
        _mark(st, "pre-dump", init_pid)
        return []
    # NVML (or nvidia-smi) runs while the helper loads the driver: both are start-up costs
    inv_box = []
    inv_thread = threading.Thread(target=lambda: inv_box.append(_inventory_or_none()), daemon=True)
    inv_thread.start()
    helper = _helper(conf)
    if helper is None:
        _mark(st, "pre-dump", init_pid)
        return []
    t_helper = time.monotonic()
    pids = container_pids(init_pid)
    cuda = {}
    for p in pids:
        s = helper.state(p)
        if s is not None:
            cuda[p] = s
    rec = read_record(st)
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
    _write_record(st, rec)  # before acting: the epilogue must know whom to resume
    timeout = int(conf.cuda.get("lock_timeout_ms", 10000))
    t1 = time.monotonic()
    for p, s in cuda.items():
        if s == "running":
            helper.lock(p, timeout)
            rec["processes"][str(p)]["locked"] = True
            _write_record(st, rec)
    t2 = time.monotonic()
    for p in cuda:
        if helper.state(p) == "locked":
            helper.checkpoint(p)
            rec["processes"][str(p)]["checkpointed"] = True
    t3 = time.monotonic()
    for p in cuda:
        s = helper.state(p)
        if s != "checkpointed":
            raise GritError("pid %d: CUDA state %s after checkpoint" % (p, s), kind="gpu")
    rec["timings"].update({"discovery_s": t1 - t_helper, "cuda_lock_s": t2 - t1,
                           "cuda_checkpoint_s": t3 - t2,
                           "pre_dump_hook_s": time.monotonic() - t0})
    _write_record(st, rec)
    _mark(st, "pre-dump", init_pid)
    return sorted(cuda)


def device_pairs(source_devices, dest_devices):
    """GPU UUID pairs for a restore: none when every source GPU is here, else source GPUs
    (by index) onto destination GPUs (by index). Pure."""
    src = [d["uuid"] for d in sorted(source_devices, key=lambda d: d.get("index", 0))]
    dst = [d["uuid"] for d in sorted(dest_devices, key=lambda d: d.get("index", 0))]
    if not src or set(src) <= set(dst):
        return []
    if len(dst) < len(src):
        raise GritError("checkpoint used %d GPU(s); only %d here" % (len(src), len(dst)), kind="gpu")
    return [(s, d) for s, d in zip(src, dst) if s != d] or []


def _visible_devices(inv, bundle):
    """The destination GPUs this container sees: its /dev/nvidiaN devices, else all."""
    devs = inv["devices"] if inv else []
    if not bundle:
        return devs
    try:
        from runc_grit import spec as _spec
        sp = _spec.load(bundle)
    except GritError:
        return devs
    minors = set()
    for d in (sp.get("linux") or {}).get("devices") or []:
        path = d.get("path", "")
        if path.startswith("/dev/nvidia") and path[11:].isdigit():
            minors.add(int(path[11:]))
    chosen = [d for d in devs if d.get("minor", d["index"]) in minors]
    return chosen or devs


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
    from runc_grit import spec as _spec
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
    from runc_grit import manifest
    try:
        m = manifest.load(image_dir)
    except GritError:
        return None
    return (m or {}).get("gpu")


def post_resume(init_pid, st, conf, image_dir=None, log=None, pairs=None):
    """Restore and unlock every checkpointed CUDA process; each must end `running`.
    ``pairs``: the GPU remapping runc-grit chose before the restore (check_destination);
    None: work it out here from the image's manifest and this node's GPUs."""
    if _done(st, "post-resume", init_pid):
        return []
    t0 = time.monotonic()
    helper = _helper(conf)
    if helper is None:
        _mark(st, "post-resume", init_pid)
        return []
    pids = container_pids(init_pid)
    states = {}
    for p in pids:
        s = helper.state(p)
        if s is not None:
            states[p] = s
    if pairs is None and any(s == "checkpointed" for s in states.values()):
        pairs = []
        src = _manifest_gpu(image_dir)
        if src and src.get("devices"):
            inv = inventory()
            bundle = (st.read() or {}).get("bundle") if st is not None else None
            pairs = device_pairs(src["devices"], _visible_devices(inv, bundle))
    pairs = [tuple(x) for x in pairs or ()]
    if pairs and st is not None:
        # CRIU brought back the source's /dev (a tmpfs, dumped with its contents): the
        # source GPU's node is there, the destination's is not, and the driver cannot open
        # the GPU it remaps onto. Make /dev hold the GPUs of this container's spec.
        sync_gpu_nodes(init_pid, (st.read() or {}).get("bundle"))
    for p, s in states.items():
        if s == "checkpointed":
            helper.restore(p, pairs)
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
    _mark(st, "post-resume", init_pid)
    return sorted(states)


def resume_failure(st, expect_cuda):
    """After a restore: why CUDA did not resume (the post-resume hook's error), or None.
    CRIU ignores a failing post-resume script, so runc-grit must look for itself.
    expect_cuda: the image holds CUDA state, so the hook must have completed."""
    if st is None or os.path.exists(_st_path(st, "cuda-post-resume.done")):
        return None
    err = None
    try:
        with open(_st_path(st, "hooks.jsonl")) as f:
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


def epilogue(st, conf, log=None):
    """After a failed dump or a --leave-running one: put every CUDA process the pre-dump
    hook touched back to `running`. Returns the pids resumed."""
    rec = read_record(st)
    procs = rec.get("processes") or {}
    if not procs:
        return []
    helper = _helper(conf, required=True)
    resumed, failed = [], []
    for p in sorted(int(x) for x in procs):
        if not os.path.exists("/proc/%d" % p):
            continue
        try:
            s = helper.state(p)
            if s == "checkpointed":
                helper.restore(p)
                s = helper.state(p)
            if s == "locked":
                helper.unlock(p)
                resumed.append(p)
            elif s == "running" and procs[str(p)].get("locked"):
                resumed.append(p)
            if helper.state(p) != "running":
                failed.append(p)
        except GritError as e:
            failed.append(p)
            if log:
                log.error("CUDA resume of pid %d failed: %s" % (p, e.message))
    rec["epilogue"] = {"resumed": resumed, "failed": failed}
    _write_record(st, rec)
    if failed:
        raise GritError("CUDA processes %s could not be resumed" % failed, kind="gpu")
    return resumed


def check_destination(m, conf, bundle=None):
    """Refuse a checkpoint with CUDA state this node cannot host (count, model, driver).
    Returns the GPU UUID pairs the restore remaps (possibly none), or None when the
    checkpoint holds no CUDA state."""
    g = (m or {}).get("gpu") or {}
    if not g.get("processes"):
        return None
    src = g.get("devices") or []
    if conf.cuda.get("enabled") == "never":
        raise GritError("checkpoint holds CUDA state but cuda.enabled is 'never' here", kind="gpu")
    if not src:
        # the source recorded no GPU inventory: all we can check is that a helper is here
        _helper(conf, required=True)
        return []
    inv = inventory()
    if not inv or not inv["devices"]:
        raise GritError("checkpoint holds CUDA state of %d GPU(s) (%s); this node has no NVIDIA GPU"
                        % (len(src), ", ".join(sorted({d.get("name", "?") for d in src})) or "?"),
                        kind="gpu")
    if len(inv["devices"]) < len(src):
        raise GritError("checkpoint used %d GPU(s); this node has %d" % (len(src), len(inv["devices"])),
                        kind="gpu")
    if conf.cuda.get("require_same_gpu_model", True):
        have = {d["name"] for d in inv["devices"]}
        for d in src:
            if d.get("name") and d["name"] not in have:
                raise GritError("checkpoint GPU model %s; this node has %s"
                                % (d["name"], ", ".join(sorted(have))), kind="gpu")
    want = g.get("driver_version")
    if want and inv.get("driver_version") and want.split(".")[0] != inv["driver_version"].split(".")[0]:
        raise GritError("checkpoint made with NVIDIA driver %s; this node has %s"
                        % (want, inv["driver_version"]), kind="gpu")
    return device_pairs(src, _visible_devices(inv, bundle))
