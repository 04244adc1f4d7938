"""Can this node restore that checkpoint? Checked before CRIU runs; each refusal names both
sides. (GPU model, count and driver: gpu.check_destination.)"""
import platform
import re

from runc_grit.errors import GritError

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
        raise GritError("%s: cannot restore here: %s" % (where, "; ".join(found)), kind="source")
