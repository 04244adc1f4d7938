"""Which GPUs a container's spec grants, read the way the NVIDIA stack grants them.

  linux.devices         /dev/nvidiaN character devices (what the device plugin, CDI and
                        nvidia-container-runtime's modes all end in): GPU minor N
  CDI                   `cdi.k8s.io/*` annotations naming `nvidia.com/gpu=<index|uuid|all>`
                        (containerd's CRI puts a pod's CDI devices there)
  NVIDIA_VISIBLE_DEVICES  in process.env, acted on only by the nvidia runtime (runc-grit
                        delegating to nvidia-container-runtime) or the NVIDIA prestart /
                        createRuntime hook in the spec: `all`, indexes, UUIDs; `void`,
                        `none` and empty grant none

A restore of CUDA state needs as many GPUs as the checkpoint used; a spec that grants none is
never given the node's GPUs by default.
"""
from runc_grit.oci import spec as _spec

CDI_PREFIX = "cdi.k8s.io/"
CDI_KIND = "nvidia.com/gpu="
NONE_VALUES = ("", "void", "none")


class Grant:
    """GPUs a spec grants: `all`, or minors (from device nodes) and names (indexes / UUIDs
    from CDI or NVIDIA_VISIBLE_DEVICES), and where each came from."""

    def __init__(self):
        self.all = False
        self.minors = set()
        self.names = set()
        self.ways = []

    def empty(self):
        return not (self.all or self.minors or self.names)

    def count(self):
        """How many GPUs at least (None: all of the node's)."""
        if self.all:
            return None
        return max(len(self.minors), len(self.names))

    def describe(self):
        if self.empty():
            return ("no GPU (no /dev/nvidiaN in linux.devices, no nvidia.com/gpu CDI device, "
                    "NVIDIA_VISIBLE_DEVICES unset, void or none, or no NVIDIA runtime/hook to "
                    "act on it)")
        return "; ".join(self.ways)

    def select(self, devices):
        """The node's devices ({index, minor, uuid}) this grant names, in index order."""
        if self.all:
            return list(devices)
        out = []
        for d in devices:
            if (d.get("minor", d.get("index")) in self.minors or str(d.get("index")) in self.names
                    or d.get("uuid") in self.names):
                out.append(d)
        return out


def has_nvidia_hook(spec):
    hooks = (spec or {}).get("hooks") or {}
    for stage in ("prestart", "createRuntime", "createContainer"):
        for h in hooks.get(stage) or []:
            if "nvidia" in str(h.get("path", "")):
                return True
    return False


def is_gpu_node(name):
    """nvidiaN (a name in /dev): a GPU's node, not nvidiactl, nvidia-uvm, ..."""
    return name.startswith("nvidia") and name[6:].isdigit()


def gpu_devices(spec):
    """{name in /dev: OCI device} of the spec's linux.devices GPU nodes (/dev/nvidiaN,
    character devices). Pure."""
    out = {}
    for d in ((spec or {}).get("linux") or {}).get("devices") or []:
        path = str(d.get("path", ""))
        if path.startswith("/dev/") and is_gpu_node(path[5:]) and d.get("type", "c") == "c":
            out[path[5:]] = d
    return out


def _add_names(g, values, way):
    vals = [v.strip() for v in values if v.strip()]
    if not vals:
        return
    if "all" in vals:
        g.all = True
    else:
        g.names.update(vals)
    g.ways.append("%s %s" % (way, ",".join(vals)))


def of_spec(spec, nvidia_runtime=False):
    """The Grant of an OCI spec (dict). nvidia_runtime: the delegate is NVIDIA's runtime,
    which acts on NVIDIA_VISIBLE_DEVICES. Pure."""
    g = Grant()
    minors = sorted(int(name[6:]) for name in gpu_devices(spec))
    if minors:
        g.minors.update(minors)
        g.ways.append("linux.devices %s" % ",".join("/dev/nvidia%d" % m for m in minors))
    for key, val in sorted(((spec or {}).get("annotations") or {}).items()):
        if key.startswith(CDI_PREFIX):
            _add_names(g, [v[len(CDI_KIND):] for v in str(val).split(",")
                           if v.strip().startswith(CDI_KIND)], "CDI %s" % key)
    env = _spec.env(spec)
    if "NVIDIA_VISIBLE_DEVICES" in env and (nvidia_runtime or has_nvidia_hook(spec)):
        val = env["NVIDIA_VISIBLE_DEVICES"].strip()
        if val.lower() not in NONE_VALUES:
            vals = val.split(",")
            if all(v.strip().startswith(CDI_KIND) for v in vals):  # CDI names in the variable
                vals = [v.strip()[len(CDI_KIND):] for v in vals]
            _add_names(g, vals, "NVIDIA_VISIBLE_DEVICES")
    return g
