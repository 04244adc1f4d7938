"""GPU phase on the destination, before anything runs: can this node host a checkpoint's
CUDA state (GPU count, model, driver), and onto which of its GPUs (UUID pairs for the
restore) do the source's go? The destination's GPUs are those of the new container's spec."""
from runc_grit.errors import GritError, GpuError
from runc_grit.gpu import discovery, grants
from runc_grit.gpu import helper as _helper


def device_pairs(source_devices, dest_devices):
    """GPU UUID pairs for a restore: none when every source GPU is here, else source GPUs
    (by index) onto destination GPUs (by index). Pure."""
    src = [d["uuid"] for d in sorted(source_devices, key=lambda d: d.get("index", 0))]
    dst = [d["uuid"] for d in sorted(dest_devices, key=lambda d: d.get("index", 0))]
    if not src or set(src) <= set(dst):
        return []
    if len(dst) < len(src):
        raise GpuError("checkpoint used %d GPU(s); only %d here" % (len(src), len(dst)))
    return [(s, d) for s, d in zip(src, dst) if s != d] or []


def _spec_of(bundle):
    from runc_grit.oci import spec as _spec
    try:
        return _spec.load(bundle)
    except GritError:
        return None


def visible_devices(inventory, bundle, nvidia_runtime=False, spec=None):
    """The node's GPUs the container's spec grants (gpu.grants): never all of them for a
    spec that names none."""
    devs = inventory["devices"] if inventory else []
    if spec is None and bundle:
        spec = _spec_of(bundle)
    return grants.of_spec(spec, nvidia_runtime).select(devs)


def _models(src):
    return ", ".join(sorted({d.get("name", "?") for d in src})) or "model unknown"


def check_grant(m, spec, nvidia_runtime=False):
    """Refuse (GritError) a checkpoint holding CUDA state for a spec that grants fewer GPUs
    than it used: nothing is read from the node. Returns the Grant."""
    g = (m or {}).get("gpu") or {}
    src = g.get("devices") or []
    grant = grants.of_spec(spec, nvidia_runtime)
    used = "the checkpoint holds CUDA state of %d process(es) on %d GPU(s) (%s)" % (
        len(g.get("processes") or ()), len(src), _models(src)) if src else \
        "the checkpoint holds CUDA state of %d process(es)" % len(g.get("processes") or ())
    if grant.empty():
        raise GpuError("%s; this container's spec grants %s" % (used, grant.describe()))
    if grant.count() is not None and grant.count() < max(1, len(src)):
        raise GpuError("%s; this container's spec grants %d GPU(s) (%s)"
                        % (used, grant.count(), grant.describe()))
    return grant


def wants_inventory(m, conf, spec, nvidia_runtime=False):
    """Will check_destination read this node's GPU inventory for manifest m and this spec?
    (Not for a spec that grants no GPU: that is refused before the node is asked.)"""
    g = (m or {}).get("gpu") or {}
    return (bool(g.get("processes") and g.get("devices")) and conf.cuda.get("enabled") != "never"
            and spec is not None and not grants.of_spec(spec, nvidia_runtime).empty())


def check_destination(m, conf, bundle=None, spec=None, nvidia_runtime=False,
                      get_inventory=None):
    """Refuse a checkpoint with CUDA state this container or node cannot host (the GPUs its
    spec grants, count, model, driver). Returns the GPU UUID pairs the restore remaps
    (possibly none), or None when the checkpoint holds no CUDA state. get_inventory: the
    node's inventory, already under way (a Future's result)."""
    g = (m or {}).get("gpu") or {}
    if not g.get("processes"):
        return None
    src = g.get("devices") or []
    if conf.cuda.get("enabled") == "never":
        raise GpuError("checkpoint holds CUDA state but cuda.enabled is 'never' here")
    if spec is None and bundle:
        spec = _spec_of(bundle)
    grant = check_grant(m, spec, nvidia_runtime)
    if not src:
        # the source recorded no GPU inventory: all we can check is that a helper is here
        _helper.for_config(conf, required=True)
        return []
    inventory = (get_inventory or discovery.inventory)()
    if not inventory or not inventory["devices"]:
        raise GpuError("checkpoint holds CUDA state of %d GPU(s) (%s); this node has no NVIDIA GPU"
                        % (len(src), _models(src)))
    if len(inventory["devices"]) < len(src):
        raise GpuError("checkpoint used %d GPU(s); this node has %d" % (len(src), len(inventory["devices"])))
    if conf.cuda.get("require_same_gpu_model", True):
        have = {d["name"] for d in inventory["devices"]}
        for d in src:
            if d.get("name") and d["name"] not in have:
                raise GpuError("checkpoint GPU model %s; this node has %s"
                                % (d["name"], ", ".join(sorted(have))))
    want = g.get("driver_version")
    if want and inventory.get("driver_version") and want.split(".")[0] != inventory["driver_version"].split(".")[0]:
        raise GpuError("checkpoint made with NVIDIA driver %s; this node has %s"
                        % (want, inventory["driver_version"]))
    visible = grant.select(inventory["devices"])
    if len(visible) < len(src):
        raise GpuError("the checkpoint used %d GPU(s); this container's spec grants %s, of which "
                        "%d are on this node" % (len(src), grant.describe(), len(visible)))
    return device_pairs(src, visible)
