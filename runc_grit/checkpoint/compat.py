"""Can this node restore that checkpoint? Checked before CRIU runs; each refusal names both
sides. (GPU model, count and driver: gpu.check_destination.)"""
import platform
import re

from runc_grit.errors import SourceError

IMAGE_ANNOTATIONS = ("io.kubernetes.cri.image-name", "io.kubernetes.cri-o.ImageName")


def version_tuple(text):
    """'4.1.1' / 'v1.1.5+ds1' / '6.1.0-28-amd64' -> (4, 1, 1) / (1, 1, 5) / (6, 1, 0)."""
    m = re.search(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?", text or "")
    return tuple(int(x or 0) for x in m.groups()) if m else None


def _older(mine, theirs):
    a, b = version_tuple(mine), version_tuple(theirs)
    return a is not None and b is not None and a < b


def image_format(runtime_name):
    """runc, crun, nvidia-container-runtime (and wrappers) write CRIU images; runsc its own."""
    from runc_grit.runtimes import names
    return names.image_format(runtime_name)


def problems(m, here, spec_annotations):
    """Why this node cannot restore m (a list of reasons; empty when it can). Pure.
    here: {"criu": version, "runtime": name, "kernel": release, "arch": machine}."""
    out = []
    src_criu = (m.get("criu") or {}).get("version")
    if _older(here.get("criu"), src_criu):
        out.append("checkpoint made with CRIU %s; this node has CRIU %s, which is older"
                   % (src_criu, here.get("criu")))
    src_rt = (m.get("runtime") or {}).get("name")
    if src_rt and here.get("runtime") and image_format(src_rt) != image_format(here["runtime"]):
        out.append("checkpoint made by runtime %s (%s images); this node restores with %s "
                   "(%s images)" % (src_rt, image_format(src_rt), here["runtime"],
                                    image_format(here["runtime"])))
    node = m.get("node") or {}
    if _older(here.get("kernel"), node.get("kernel")):
        out.append("checkpoint made on kernel %s; this node runs %s, which is older"
                   % (node.get("kernel"), here.get("kernel")))
    if node.get("arch") and here.get("arch") and node["arch"] != here["arch"]:
        out.append("checkpoint made on %s; this node is %s" % (node["arch"], here["arch"]))
    src_ann = (m.get("container") or {}).get("annotations") or {}
    for key in IMAGE_ANNOTATIONS:
        a, b = src_ann.get(key), (spec_annotations or {}).get(key)
        if a and b and not same_image(a, b):
            out.append("checkpoint of image %s; this container runs image %s" % (a, b))
    return out


def _image_parts(ref):
    """'reg/repo:tag' / 'reg/repo@sha256:...' -> (repository, tag or None, digest or None)."""
    ref, _, digest = ref.partition("@")
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        return ref[:colon], ref[colon + 1:], digest or None
    return ref, None, digest or None


def same_image(a, b):
    """The same image, as far as the two references tell: the same repository, and the same
    tag where both name one, the same digest where both name one. (containerd's checkpoint
    restore names the image by its digest, the source spec by its tag.) Pure."""
    ra, ta, da = _image_parts(a)
    rb, tb, db = _image_parts(b)
    if ra != rb:
        return False
    if da and db:
        return da == db
    if ta and tb and not (da or db):
        return ta == tb
    return True


def here(runtime_name, criu_version):
    return {"criu": criu_version, "runtime": runtime_name, "kernel": platform.release(),
            "arch": platform.machine()}


def check(m, where, runtime_name, criu_version, spec_annotations):
    if not m:
        return
    found = problems(m, here(runtime_name, criu_version), spec_annotations)
    if found:
        raise SourceError("%s: cannot restore here: %s" % (where, "; ".join(found)))


# --- environment variables that name devices or claims ---------------------------------------
# A restored process keeps the environment it had at the checkpoint (it is memory), while the
# new container's config.json carries the destination's. The GPU variables the runtime's
# remap handles: the CUDA state is moved onto the destination's GPUs by UUID, whatever index
# or UUID the process's copy of the variable still says. Claim-specific variables (DRA
# drivers, device plugins) name something the destination does not have: refused unless
# config device_env is "warn".
REMAPPED_ENV = ("NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES")


def is_claim_var(name):
    return ("RESOURCE_CLAIM" in name or name.startswith("GPU_DEVICE_")
            or name.startswith("DRA_") or name.startswith("NVIDIA_DRA_"))


def device_env_changes(src_spec, dst_spec):
    """(remapped, claims): [(name, source value, this container's value)] of the variables
    above that differ. Pure."""
    from runc_grit.oci import spec as _spec
    a, b = _spec.env(src_spec), _spec.env(dst_spec)
    names = sorted(n for n in set(a) | set(b) if n in REMAPPED_ENV or is_claim_var(n))
    diff = [(n, a.get(n, ""), b.get(n, "")) for n in names if a.get(n, "") != b.get(n, "")]
    return ([d for d in diff if d[0] in REMAPPED_ENV], [d for d in diff if d[0] not in REMAPPED_ENV])


def check_device_env(image_dir, dst_spec, conf, log, where):
    """Refuse (or, device_env: warn, log) a restore whose claim-specific variables differ from
    the checkpoint's (its spec.dump); log the GPU variables the remap handles."""
    import json
    import os
    try:
        with open(os.path.join(image_dir, "spec.dump")) as f:
            src = json.load(f)
    except (OSError, ValueError):
        return
    remapped, claims = device_env_changes(src, dst_spec)
    fmt = "; ".join
    if remapped and log is not None:
        log.warning("%s: %s: the restored process keeps the checkpoint's value in its "
                    "environment; its CUDA state is remapped onto this container's GPUs by UUID"
                    % (where, fmt("%s was %r, is %r here" % d for d in remapped)))
    if claims:
        msg = "%s: %s: claim-specific variables the restored process would keep" % (
            where, fmt("%s was %r, is %r here" % d for d in claims))
        if getattr(conf, "device_env", "refuse") != "warn":
            raise SourceError(msg + " (config device_env: warn restores anyway)")
        if log is not None:
            log.warning(msg)
