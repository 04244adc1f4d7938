"""Whose a checkpoint is: the source's Kubernetes namespace, pod and image, recorded in the
signed manifest, and the rule a restore follows.

A checkpoint holds its process's memory, secrets included. It belongs to the namespace
(tenant) of the pod it was taken from: a restore into a container of another namespace is
refused unless the node's config names that pair (`tenant_transfers`), and a restore into
another image digest is refused where both sides name one (repositories and tags:
checkpoint.compat).
A container outside Kubernetes (no CRI annotations) is the tenant "" (the node's root
callers): its checkpoints restore into other such containers, never into a pod's.
"""
from runc_grit.errors import SourceError

# (what, containerd's CRI annotation, CRI-O's)
FIELDS = (
    ("namespace", "io.kubernetes.cri.sandbox-namespace", "io.kubernetes.pod.namespace"),
    ("pod_name", "io.kubernetes.cri.sandbox-name", "io.kubernetes.pod.name"),
    ("pod_uid", "io.kubernetes.cri.sandbox-uid", "io.kubernetes.pod.uid"),
    ("container_name", "io.kubernetes.cri.container-name", "io.kubernetes.container.name"),
    ("image", "io.kubernetes.cri.image-name", "io.kubernetes.cri-o.ImageName"),
)
# an annotation that names the image by digest (CRI-O's); containerd's image name may too
IMAGE_REF_KEYS = ("io.kubernetes.cri-o.ImageRef",)


def _digest_of(ref):
    """The sha256 digest a reference names ('r/app@sha256:...' or a bare 'sha256:...')."""
    if not ref:
        return None
    _, at, digest = ref.rpartition("@")
    if at and digest.startswith("sha256:"):
        return digest
    return ref if ref.startswith("sha256:") and len(ref) == 71 else None


def of(annotations):
    """The source section of a manifest, from a container's annotations. Pure."""
    ann = annotations or {}
    out = {}
    for what, *keys in FIELDS:
        val = next((ann[k] for k in keys if ann.get(k)), None)
        if val:
            out[what] = val
    digest = _digest_of(out.get("image"))
    for k in IMAGE_REF_KEYS:
        digest = digest or _digest_of(ann.get(k))
    if digest:
        out["image_digest"] = digest
    return out


def of_manifest(m):
    """The source of a checkpoint: its signed `source` section, else (older manifests) what
    its recorded annotations say."""
    src = (m or {}).get("source")
    if isinstance(src, dict):
        return src
    return of(((m or {}).get("container") or {}).get("annotations"))


def problems(src, dst, transfers=()):
    """Why a checkpoint from src may not restore into dst (both: of()'s dicts): a list. Pure.
    transfers: the config's allowed (from namespace, to namespace) pairs."""
    out = []
    a, b = src.get("namespace") or "", dst.get("namespace") or ""
    if a != b and (a, b) not in {(t.get("from", ""), t.get("to", "")) for t in transfers}:
        out.append("the checkpoint belongs to %s; this container is %s (a checkpoint holds its "
                   "process's memory: config tenant_transfers may allow a namespace pair)"
                   % (_tenant(a), _tenant(b)))
    da, db = src.get("image_digest"), dst.get("image_digest")
    if da and db and da != db:  # (names, tags: checkpoint.compat)
        out.append("checkpoint of image %s (%s); this container runs image %s (%s)"
                   % (src.get("image"), da, dst.get("image"), db))
    return out


def _tenant(ns):
    return "namespace %s" % ns if ns else "no Kubernetes namespace (a node-local container)"


def check(m, dst_annotations, conf, where):
    """Refuse (GritError) a restore of manifest m into a container with these annotations
    that crosses a tenant or image boundary."""
    if m is None:
        return
    found = problems(of_manifest(m), of(dst_annotations),
                     getattr(conf, "tenant_transfers", None) or ())
    if found:
        raise SourceError("%s: refused: %s" % (where, "; ".join(found)))
