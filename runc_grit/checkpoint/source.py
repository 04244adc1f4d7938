"""Which checkpoint a create asks to restore from, and whether it may be used.

A restore runs CRIU as root on files a pod points at, so the source is checked before any
runtime or CRIU process starts: it must resolve (symlinks followed) to a directory inside one
of checkpoint_roots, hold only regular files and the images of its format (checkpoint.images),
and carry a valid grit-manifest.json whose files match (unless accept_raw_criu).
"""
import os

from runc_grit.checkpoint import images, imagedir, provenance, staging, tenant
from runc_grit.checkpoint import manifest as _manifest
from runc_grit.checkpoint.admission import admit, authenticate, check_regular
from runc_grit.errors import SourceError

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
        raise SourceError("annotation %s: %r is neither 'fail' nor 'fresh'" % (POLICY, policy))
    for key in RESTORE_FROM:
        if ann.get(key):
            return RestoreRequest(ann[key], key, policy)
    base = ann.get(GRIT_CHECKPOINT)
    if base:
        name = next((ann[k] for k in CONTAINER_NAME_KEYS if ann.get(k)), None)
        if not name:
            raise SourceError("annotation %s needs the container name (%s)"
                            % (GRIT_CHECKPOINT, CONTAINER_NAME_KEYS[0]))
        if "/" in name or name in (".", ".."):
            raise SourceError("container name %r cannot name a checkpoint directory" % name)
        return RestoreRequest(os.path.join(base, name, "checkpoint"), GRIT_CHECKPOINT, policy)
    return None


def _inside(path, roots):
    return any(path == r or os.path.commonpath([path, r]) == r for r in roots)


def resolve(path, roots):
    """Real path of a restore source, after the root and symlink checks."""
    if not isinstance(path, str) or not os.path.isabs(path) or "\0" in path:
        raise SourceError("restore source %r: not an absolute path" % (path,))
    real_roots = [os.path.realpath(r) for r in roots if os.path.isdir(r)]
    if not real_roots:
        raise SourceError("restore source %s: no checkpoint_roots exist on this node (%s)"
                        % (path, ", ".join(roots) or "none configured"))
    real = os.path.realpath(path)
    if not _inside(real, real_roots):
        via = "" if real == os.path.normpath(path) else " (resolves to %s)" % real
        raise SourceError("restore source %s%s is outside the checkpoint roots %s"
                        % (path, via, ", ".join(real_roots)))
    if not os.path.exists(real):
        raise SourceError("restore source %s: no such directory" % path)
    if not os.path.isdir(real):
        raise SourceError("restore source %s: not a directory" % path)
    return real


def _digests_wanted(conf, signed):
    return getattr(conf, "verify", "size") == "digest" or signed


def validate(path, conf, image_format="CRIU", spec=None, deferred=None):
    """(image dir to restore from, manifest or None, the source's real path) for a restore
    source, or GritError(kind=source). image_format: what the restoring runtime reads, CRIU
    images or gVisor's checkpoint.img. spec: the destination's (its tenant and image).

    In order: the path (inside the checkpoint roots, symlinks resolved), the dir opened once
    (imagedir), the manifest's signature, its schema, the tenant and age, nothing unlisted;
    then either a root-only copy of exactly the listed files (staging) or, where this node
    made the dir and nothing changed since (provenance), the dir in place; last the images and
    every file's digest, on what the runtime will read. The caller restores from the dir
    returned and then hands it to release(). An oci:// source is pulled (registry.pull: the
    same checks, made while it streams) into the root-only cache, and read there.
    deferred: a list that takes the page images whose digests are left to the caller
    (checkpoint.pagecheck), instead of being checked here."""
    from runc_grit.registry import reference
    if reference.is_oci(path):
        return _from_registry(path, conf, image_format, spec, deferred)
    real = resolve(path, conf.checkpoint_roots)
    where = "restore source %s" % path
    with imagedir.ImageDir(real, where) as src:
        m, raw, signed = authenticate(src, conf, where, missing=(
            "the checkpoint is not signed, and require_signature is set"
            if conf.require_signature else None))
        if m is None and not conf.accept_raw_criu:
            raise SourceError("restore source %s: no %s, so not a complete runc-grit checkpoint "
                            "(set accept_raw_criu to allow raw CRIU dirs)" % (path, _manifest.NAME))
        if m is not None:
            items = admit(src, m, conf, spec, where)
        else:
            items = [(n, _size_of(src, n)) for n in sorted(src.names())]
        staging.sweep(conf.staging_dir)  # copies killed restores left behind
        mode = staging_mode(conf)
        root = _root_of(real, conf.checkpoint_roots)
        if mode == "none":
            staging.check_in_place(real, root, where)
        elif mode == "auto" and not (m is not None
                                     and provenance.made_here(src, conf.state_dir,
                                                              imagedir.RESTORE_OUTPUTS)
                                     and staging.in_place_problem(real, root) is None):
            mode = "copy"
        if mode == "copy":
            here = staging.stage(src, items, conf.staging_dir, where, raw, _manifest.NAME)
        else:
            check_regular(src, items)
            here = real
    try:
        images.check(here, image_format)
        if m is not None:
            _manifest.check_files(here, m, digest=_digests_wanted(conf, signed), where=where,
                                  defer=deferred)
    except BaseException:
        release(here, conf)
        raise
    return here, m, real


def _from_registry(path, conf, image_format, spec, deferred):
    """The pull (or the cache's entry) and the page images' digests where the pull left them
    to the restore: into deferred (checked beside the runtime), else checked now."""
    from runc_grit.registry import pull
    here, m, _, stats = pull.to_cache(path, conf, spec, defer_pages=deferred is not None)
    pages = stats["unverified"]
    try:
        images.check(here, image_format)
    except BaseException:
        release(here, conf)
        raise
    if pages and deferred is not None:
        deferred += pages
    elif pages:
        try:
            _manifest.check_digests(here, pages, "restore source %s" % path)
        except BaseException as e:
            release(here, conf, pages_ok=False if isinstance(e, SourceError) else None)
            raise
        pull.pages_passed(here)
    return here, m, path


def _size_of(src, name):
    """The size of a regular file in src (a raw CRIU dir, no manifest), else refused."""
    fd, st = src.open_regular(name, limit=None) or (None, None)
    if fd is None:
        raise SourceError("%s: %s vanished" % (src.where, name))
    os.close(fd)
    return st.st_size


def _annotations(spec):
    return (spec or {}).get("annotations") or {}


def is_kubernetes(spec):
    """A container kubelet made (CRI annotations): its restore image came from a pod spec."""
    return (spec.get("annotations") or {}).get("io.kubernetes.cri.container-type") == "container"


def verify_given(image_dir, conf, kubernetes=False, spec=None):
    """`restore --image-path DIR` called directly: DIR is the caller's (containerd unpacks a
    checkpoint archive into a dir of its own). Its manifest, when there is one, is
    authenticated first and every file verified in place; nothing unlisted may be there; the
    tenant rule holds. A Kubernetes container's image without one is refused unless the node
    accepts raw CRIU dirs and unsigned checkpoints. Returns the manifest."""
    where = "restore image %s" % image_dir
    if not os.path.isdir(image_dir):
        if kubernetes:
            raise SourceError("%s: no such directory" % where)
        return None
    with imagedir.ImageDir(os.path.realpath(image_dir), where) as src:
        m, _, signed = authenticate(src, conf, where, missing=(
            "not a checkpoint taken through runc-grit, and this node restores only those "
            "(require_signature, accept_raw_criu)"
            if kubernetes and (conf.require_signature or not conf.accept_raw_criu) else None))
        if m is None:
            return None
        tenant.check(m, _annotations(spec), conf, where)  # whose it is, before any work
        from runc_grit.registry import layout
        layout.join_parts(src, [(i["name"], i["size"]) for i in m["images"]])
        check_regular(src, admit(src, m, conf, spec, where))
    images.check_entries(image_dir)
    _manifest.check_files(image_dir, m, digest=_digests_wanted(conf, signed), where=where)
    return m


def staging_mode(conf):
    return getattr(conf, "staging", "auto")


def release(image_dir, conf, pages_ok=None):
    """After a restore: a staged copy goes (a source used in place stays; a pulled one
    stays in the cache, unlocked). pages_ok: how the check of deferred page digests went
    (a pulled entry whose pages failed it is removed from the cache)."""
    staging.discard(image_dir, conf.staging_dir)
    import sys
    pull = sys.modules.get("runc_grit.registry.pull")  # loaded only by a registry restore
    if pull is not None:
        pull.release(image_dir, pages_ok)


def _root_of(real, roots):
    for r in roots:
        rr = os.path.realpath(r)
        if _inside(real, [rr]):
            return rr
    return real
