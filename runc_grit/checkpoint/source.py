"""Which checkpoint a create asks to restore from, and whether it may be used.

A restore runs CRIU as root on files a pod points at, so the source is checked before any
runtime or CRIU process starts: it must resolve (symlinks followed) to a directory inside one
of checkpoint_roots, hold only regular files and the images of its format (checkpoint.images),
and carry a valid grit-manifest.json whose files match (unless accept_raw_criu).
"""
import os

from runc_grit.checkpoint import images
from runc_grit.checkpoint import manifest as _manifest
from runc_grit.checkpoint import staging
from runc_grit.errors import GritError

RESTORE_FROM = ("grit.dev/restore-from", "kybernate.io/restore-from")
GRIT_CHECKPOINT = "grit.dev/checkpoint"
POLICY = "grit.dev/restore-policy"
CONTAINER_NAME_KEYS = ("io.kubernetes.cri.container-name", "io.kubernetes.container.name")
# Sandbox (pause) containers are never restored.
SANDBOX_MARKS = (
    ("io.kubernetes.cri.container-type", "sandbox"),
    ("io.kubernetes.cri-o.ContainerType", "sandbox"),
    ("io.kubernetes.docker.type", "podsandbox"),
)


class RestoreRequest:
    __slots__ = ("path", "annotation", "policy")

    def __init__(self, path, annotation, policy):
        self.path = path
        self.annotation = annotation
        self.policy = policy

    def __repr__(self):
        return "RestoreRequest(%r, %r, %r)" % (self.path, self.annotation, self.policy)


def is_sandbox(ann):
    return any(ann.get(k) == v for k, v in SANDBOX_MARKS)


def requested(ann, default_policy="fail"):
    """The RestoreRequest the annotations ask for, or None. Raises on contradictions."""
    if is_sandbox(ann):
        return None
    policy = ann.get(POLICY, default_policy)
    if policy not in ("fail", "fresh"):
        raise GritError("annotation %s: %r is neither 'fail' nor 'fresh'" % (POLICY, policy),
                        kind="source")
    for key in RESTORE_FROM:
        if ann.get(key):
            return RestoreRequest(ann[key], key, policy)
    base = ann.get(GRIT_CHECKPOINT)
    if base:
        name = next((ann[k] for k in CONTAINER_NAME_KEYS if ann.get(k)), None)
        if not name:
            raise GritError("annotation %s needs the container name (%s)"
                            % (GRIT_CHECKPOINT, CONTAINER_NAME_KEYS[0]), kind="source")
        if "/" in name or name in (".", ".."):
            raise GritError("container name %r cannot name a checkpoint directory" % name,
                            kind="source")
        return RestoreRequest(os.path.join(base, name, "checkpoint"), GRIT_CHECKPOINT, policy)
    return None


def _inside(path, roots):
    return any(path == r or os.path.commonpath([path, r]) == r for r in roots)


def resolve(path, roots):
    """Real path of a restore source, after the root and symlink checks."""
    if not isinstance(path, str) or not os.path.isabs(path) or "\0" in path:
        raise GritError("restore source %r: not an absolute path" % (path,), kind="source")
    real_roots = [os.path.realpath(r) for r in roots if os.path.isdir(r)]
    if not real_roots:
        raise GritError("restore source %s: no checkpoint_roots exist on this node (%s)"
                        % (path, ", ".join(roots) or "none configured"), kind="source")
    real = os.path.realpath(path)
    if not _inside(real, real_roots):
        via = "" if real == os.path.normpath(path) else " (resolves to %s)" % real
        raise GritError("restore source %s%s is outside the checkpoint roots %s"
                        % (path, via, ", ".join(real_roots)), kind="source")
    if not os.path.exists(real):
        raise GritError("restore source %s: no such directory" % path, kind="source")
    if not os.path.isdir(real):
        raise GritError("restore source %s: not a directory" % path, kind="source")
    return real


def validate(path, conf, image_format="CRIU"):
    """(image dir to restore from, manifest or None, the source's real path) for a restore
    source, or GritError(kind=source). image_format: what the restoring runtime reads, CRIU images or
    gVisor's checkpoint.img. With `staging: copy` (the default) the dir returned is a
    root-only copy, and everything is verified there: the caller restores from it and then
    hands it to release()."""
    real = resolve(path, conf.checkpoint_roots)
    where = "restore source %s" % path
    images.check(real, image_format)  # early, for a clear reason; again on what is restored
    m = _manifest.load(real)
    if m is None and not conf.accept_raw_criu:
        raise GritError("restore source %s: no %s, so not a complete runc-grit checkpoint "
                        "(set accept_raw_criu to allow raw CRIU dirs)" % (path, _manifest.NAME),
                        kind="source")
    mode = staging_mode(conf)
    if mode == "auto":
        mode = "none" if staging.in_place_problem(real, _root_of(real, conf.checkpoint_roots)) \
            is None else "copy"
    if mode == "copy":
        if m is not None:
            names = [i["name"] for i in m["images"]] + [_manifest.NAME]
        else:
            names = [n for n in os.listdir(real) if os.path.isfile(os.path.join(real, n))]
        here = staging.stage(real, names, conf.staging_dir, where)
    else:
        staging.check_in_place(real, _root_of(real, conf.checkpoint_roots), where)
        here = real
    try:
        m = _verify(here, conf, image_format, where, m is not None)
    except BaseException:
        release(here, conf)
        raise
    return here, m, real


def _verify(image_dir, conf, image_format, where, want_manifest):
    """The images, the manifest (as read from image_dir itself), its signature, every file."""
    images.check(image_dir, image_format)
    m = _manifest.load(image_dir)
    if m is None:
        if want_manifest:
            raise GritError("%s: %s vanished while it was staged" % (where, _manifest.NAME),
                            kind="source")
        return None
    from runc_grit.checkpoint import integrity
    signed = integrity.check_signature(m, conf, where)
    _manifest.check_files(image_dir, m, digest=(getattr(conf, "verify", "size") == "digest"
                                                or signed), where=where)
    return m


def is_kubernetes(spec):
    """A container kubelet made (CRI annotations): its restore image came from a pod spec."""
    return (spec.get("annotations") or {}).get("io.kubernetes.cri.container-type") == "container"


def verify_given(image_dir, conf, kubernetes=False):
    """`restore --image-path DIR` called directly: DIR is the caller's (containerd unpacks a
    checkpoint archive into a dir of its own). Its manifest, when there is one, is verified in
    place (signature, every file); a Kubernetes container's image without one is refused
    unless the node accepts raw CRIU dirs and unsigned checkpoints. Returns the manifest."""
    where = "restore image %s" % image_dir
    m = _manifest.load(image_dir) if os.path.isdir(image_dir) else None
    if m is None:
        if kubernetes and (conf.require_signature or not conf.accept_raw_criu):
            raise GritError("%s: no %s: not a checkpoint taken through runc-grit, and this node "
                            "restores only those (require_signature, accept_raw_criu)"
                            % (where, _manifest.NAME), kind="source")
        return None
    images.check_entries(image_dir)
    return _verify(image_dir, conf, "CRIU", where, True)


def staging_mode(conf):
    return getattr(conf, "staging", "auto")


def release(image_dir, conf):
    """After a restore: a staged copy goes (a source used in place stays)."""
    staging.discard(image_dir, conf.staging_dir)


def _root_of(real, roots):
    for r in roots:
        rr = os.path.realpath(r)
        if _inside(real, [rr]):
            return rr
    return real
