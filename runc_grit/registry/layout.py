"""How a checkpoint is laid out as an OCI image, both ways.

The image unpacks (as any image's layers do) into checkpointctl's tree, which containerd's
CRI restores (it recognises the image by `org.criu.checkpoint.container.name`):

  checkpoint/grit-manifest.json       layer 0, alone: the signed manifest, fetched first
  config.dump spec.dump status.dump   a "meta" layer: what containerd's CRI reads (not signed,
  ...                                 never read by runc-grit's pull)
  checkpoint/<image files>            the files the manifest lists, small ones packed into
                                      layers of up to blob_size, each larger file in parts of
                                      blob_size bytes, `checkpoint/NAME.grit-part-NNNNN`, one
                                      layer each (pushed and pulled in parallel)

Layers are uncompressed tars (CRIU images of GPU memory barely compress, and a tar streams
straight into the file it belongs to), written deterministically (no times, owners or
record padding): the same file content is the same blob, so a registry that holds it is not
sent it again.
"""
import json
import os
import platform
import tarfile

from runc_grit.errors import RegistryError

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"
ROLE = "dev.runc-grit.layer"          # manifest | meta | files (layer annotation)
PART = ".grit-part-"
DIR = "checkpoint/"
BLOCK = 512
MANIFEST_NAME = "grit-manifest.json"
# checkpointctl's top-level files, the ones a CRI checkpoint archive holds besides checkpoint/
CRI_FILES = ("config.dump", "spec.dump", "status.dump", "network.status", "rootfs-diff.tar",
             "deleted.files", "container.log", "dump.log", "stats-dump", "pod.options",
             "pod.dump")
MAX_LAYERS = 100000


class Entry:
    """One tar entry of a layer: arcname, read from (fd, offset, length)."""
    __slots__ = ("arcname", "fd", "offset", "length")

    def __init__(self, arcname, fd, offset, length):
        self.arcname, self.fd, self.offset, self.length = arcname, fd, offset, length


class Layer:
    __slots__ = ("role", "entries", "digest", "size", "skipped")

    def __init__(self, role, entries):
        self.role, self.entries = role, entries
        self.digest, self.skipped = None, False
        self.size = sum(BLOCK + padded(e.length) for e in entries) + 2 * BLOCK


def padded(n):
    return (n + BLOCK - 1) // BLOCK * BLOCK


def header(arcname, size):
    """A USTAR header with nothing in it that varies between pushes of the same content."""
    ti = tarfile.TarInfo(arcname)
    ti.size, ti.mode, ti.mtime, ti.type = size, 0o600, 0, tarfile.REGTYPE
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    try:
        return ti.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")
    except ValueError as e:
        raise RegistryError("cannot name %s in a layer: %s" % (arcname, e)) from None


def part_name(name, index):
    return "%s%s%s%05d" % (DIR, name, PART, index)


def plan(files, manifest_fd, manifest_size, meta, blob_size):
    """The layers of an image. files: [(name, fd, size)] the manifest lists; meta: [(arcname,
    fd, size)] top-level CRI files."""
    layers = [Layer("manifest", [Entry(DIR + MANIFEST_NAME, manifest_fd, 0, manifest_size)])]
    if meta:
        layers.append(Layer("meta", [Entry(a, fd, 0, n) for a, fd, n in meta]))
    small = []
    for name, fd, size in files:
        if size > blob_size:
            for i, off in enumerate(range(0, size, blob_size)):
                layers.append(Layer("files", [Entry(part_name(name, i), fd, off,
                                                    min(blob_size, size - off))]))
        else:
            small.append(Entry(DIR + name, fd, 0, size))
    group, used = [], 0
    for e in small:
        if group and used + e.length > blob_size:
            layers.append(Layer("files", group))
            group, used = [], 0
        group.append(e)
        used += e.length
    if group:
        layers.append(Layer("files", group))
    return layers


def chunks(layer, piece=4 << 20):
    """The bytes of a layer blob, in pieces of up to `piece` bytes."""
    zero = bytes(BLOCK)
    for e in layer.entries:
        yield header(e.arcname, e.length)
        off, end = e.offset, e.offset + e.length
        while off < end:
            data = os.pread(e.fd, min(piece, end - off), off)
            if not data:
                raise RegistryError("%s shrank while it was pushed" % e.arcname)
            yield data
            off += len(data)
        if e.length % BLOCK:
            yield zero[:BLOCK - e.length % BLOCK]
    yield zero + zero


def descriptor(media_type, digest, size, annotations=None):
    d = {"mediaType": media_type, "digest": digest, "size": size}
    if annotations:
        d["annotations"] = annotations
    return d


def arch():
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def config_blob(layers):
    cfg = {"architecture": arch(), "os": "linux", "config": {},
           "rootfs": {"type": "layers", "diff_ids": [l.digest for l in layers]},
           "history": [{"created_by": "runc-grit push (%s layer)" % l.role} for l in layers]}
    return json.dumps(cfg, sort_keys=True, separators=(",", ":")).encode()


def annotations(m, config_dump):
    """checkpointctl build's annotations (containerd's CRI restores an image that has
    org.criu.checkpoint.container.name), from the manifest and config.dump."""
    ann = (m.get("container") or {}).get("annotations") or {}
    cd = config_dump or {}
    out = {
        "org.criu.checkpoint.container.name": ann.get("io.kubernetes.cri.container-name") or
        cd.get("name") or m["container"]["id"],
        "org.criu.checkpoint.runtime.name": "runc-grit/%s" % (m.get("runtime") or {}).get("name", ""),
        "org.criu.checkpoint.engine.name": "runc-grit",
        "org.criu.checkpoint.host.arch": (m.get("node") or {}).get("arch", ""),
        "org.criu.checkpoint.host.kernel": (m.get("node") or {}).get("kernel", ""),
        "org.criu.checkpoint.criu.version": str((m.get("criu") or {}).get("version", "")),
        "org.opencontainers.image.created": m.get("created", ""),
    }
    for key, src in (("org.criu.checkpoint.pod.name", "io.kubernetes.cri.sandbox-name"),
                     ("org.criu.checkpoint.pod.namespace", "io.kubernetes.cri.sandbox-namespace"),
                     ("org.criu.checkpoint.pod.id", "io.kubernetes.cri.sandbox-id")):
        if ann.get(src):
            out[key] = ann[src]
    if cd.get("rootfsImageName"):
        out["org.criu.checkpoint.rootfsImageName"] = cd["rootfsImageName"]
    if cd.get("rootfsImageRef"):
        out["org.criu.checkpoint.rootfsImageID"] = cd["rootfsImageRef"]
    return {k: v for k, v in out.items() if v}


def image_manifest(config_digest, config_size, layers, ann):
    return json.dumps({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": descriptor(CONFIG_TYPE, config_digest, config_size),
        "layers": [descriptor(LAYER_TYPE, l.digest, l.size, {ROLE: l.role}) for l in layers],
        "annotations": ann,
    }, sort_keys=True, separators=(",", ":")).encode()


def parse_header(buf, where):
    """(arcname, size) of a regular-file USTAR header, None at the end-of-archive block;
    anything else (links, devices, dirs, pax or GNU extensions, a bad checksum) refused."""
    if buf == bytes(BLOCK):
        return None
    try:
        ti = tarfile.TarInfo.frombuf(buf, "utf-8", "strict")
    except tarfile.TarError as e:
        raise RegistryError("%s: not a tar header: %s" % (where, e)) from None
    if ti.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
        raise RegistryError("%s: entry %r is not a regular file (type %r)"
                            % (where, ti.name, ti.type))
    return ti.name, ti.size


def target_of(arcname, sizes, blob_size):
    """(file name, offset, length) that a files-layer entry may hold: a listed file whole, or
    part N of one larger than blob_size. RegistryError for anything else."""
    if not arcname.startswith(DIR):
        raise RegistryError("entry %r is outside checkpoint/" % arcname)
    rest = arcname[len(DIR):]
    if rest in sizes:
        size = sizes[rest]
        if size > blob_size:
            raise RegistryError("entry %r: a file of %d bytes must come in parts" % (arcname, size))
        return rest, 0, size
    name, sep, index = rest.rpartition(PART)
    if sep and name in sizes and len(index) == 5 and index.isdigit():
        size, off = sizes[name], int(index) * blob_size
        if size > blob_size and off < size:
            return name, off, min(blob_size, size - off)
    raise RegistryError("entry %r is not a file the signed manifest lists" % arcname)


def join_parts(src, items):
    """containerd's CRI restore of a checkpoint image unpacks the layers as they are: a file
    pushed in parts is there as NAME.grit-part-00000, -00001, ... Join each listed file that is
    missing from its parts, through the dir's descriptor (src: an imagedir.ImageDir): parts
    opened once, never followed, refused unless regular and summing to the listed size; the
    file created O_EXCL; the parts removed. (Its digest is checked afterwards, with the rest.)
    Returns the names joined."""
    names = set(src.names())
    joined = []
    for name, size in items:
        first = "%s%s%05d" % (name, PART, 0)
        if name in names or first not in names:
            continue
        parts = []
        while "%s%s%05d" % (name, PART, len(parts)) in names:
            parts.append("%s%s%05d" % (name, PART, len(parts)))
        fds = []
        try:
            for p in parts:
                fds.append(src.open_regular(p, limit=size)[0])
            lengths = [os.fstat(fd).st_size for fd in fds]
            if sum(lengths) != size or any(n != lengths[0] for n in lengths[:-1]):
                raise RegistryError("%s: the parts of %s (%s bytes) do not make its %d bytes"
                                    % (src.where, name, "+".join(map(str, lengths)), size))
            out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                          | os.O_CLOEXEC, 0o600, dir_fd=src.fd)
            try:
                pos = 0
                for fd, n in zip(fds, lengths):
                    off = 0
                    while off < n:
                        k = os.copy_file_range(fd, out, n - off, off, pos + off)
                        if k == 0:
                            raise RegistryError("%s: %s shrank" % (src.where, name))
                        off += k
                    pos += n
            except BaseException:
                os.unlink(name, dir_fd=src.fd)  # no half-joined file left behind
                raise
            finally:
                os.close(out)
        finally:
            for fd in fds:
                os.close(fd)
        for p in parts:
            os.unlink(p, dir_fd=src.fd)
        joined.append(name)
    return joined
