"""Which processes of a container use CUDA, and which GPUs this node has.

container_pids: the host pids of a container (its pid namespace, or its init's tree when it
shares the host's); the helper then tells which of them are CUDA processes. inventory: the
node's GPUs and their compute processes, from NVML, else nvidia-smi.
"""
import os
import subprocess


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


def holds_nvidia_device(pid):
    """Whether pid has an NVIDIA device node open (every CUDA process holds /dev/nvidiactl):
    necessary, not sufficient, for a CUDA process. Read from /proc: it works on frozen tasks."""
    d = "/proc/%d/fd" % int(pid)
    try:
        fds = os.listdir(d)
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(os.path.join(d, fd)).startswith("/dev/nvidia"):
                return True
        except OSError:
            continue
    return False


def cuda_states(helper, init_pid, pids=None):
    """{pid: CUDA state} of the container's processes (pids: already listed) the helper knows
    as CUDA processes."""
    out = {}
    for p in container_pids(init_pid) if pids is None else pids:
        s = helper.state(p)
        if s is not None:
            out[p] = s
    return out


def inventory():
    """{"driver_version", "devices": [{index, uuid, name, memory_total}], "apps": {pid: [(uuid, bytes)]}}
    or None when this node shows no NVIDIA GPU."""
    try:
        return _inventory_nvml()
    except Exception:  # noqa: BLE001 - NVML missing or failing: try nvidia-smi
        pass
    return _inventory_smi()


def inventory_or_none():
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
