"""Which checkpoint a create asks to restore from, and whether it may be used.

A restore runs CRIU as root on files a pod points at, so the source is checked before any
runtime or CRIU process starts: it must resolve (symlinks followed) to a directory inside one
of checkpoint_roots, hold only regular files and the images of its format (checkpoint.images),
and carry a valid grit-manifest.json whose files match (unless accept_raw_criu).
"""
import os

from runc_grit.checkpoint import images
from runc_grit.checkpoint import manifest as _manifest
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
    """(real image dir, manifest or None) for a restore source, or GritError(kind=source).
    image_format: what the restoring runtime reads, CRIU images or gVisor's checkpoint.img."""
    real = resolve(path, conf.checkpoint_roots)
    images.check(real, image_format)
    m = _manifest.load(real)
    if m is None:
        if not conf.accept_raw_criu:
            raise GritError("restore source %s: no %s, so not a complete runc-grit checkpoint "
                            "(set accept_raw_criu to allow raw CRIU dirs)" % (path, _manifest.NAME),
                            kind="source")
    else:
        from runc_grit.checkpoint import integrity
        signed = integrity.check_signature(m, conf, "restore source %s" % path)
        _manifest.check_files(real, m, digest=(getattr(conf, "verify", "size") == "digest"
                                               or signed))
    return real, m
