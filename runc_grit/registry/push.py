"""`runc-grit push DIR REF`: a checkpoint into a registry as an OCI image (registry.layout).

DIR is a checkpoint image dir (grit-manifest.json and the files it lists), or a dir in
checkpointctl's layout (a CRI checkpoint archive unpacked: checkpoint/ plus config.dump,
spec.dump, status.dump, ...). Every listed file is opened once, refused unless regular and of
its listed size, and read through that descriptor. Layer digests are computed in parallel
first; a blob the registry already holds is not sent again; the others go up `jobs` at a time.
"""
import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

from runc_grit.checkpoint import imagedir
from runc_grit.checkpoint import manifest as _manifest
from runc_grit.checkpoint.integrity import CHUNK
from runc_grit.errors import RegistryError, SourceError
from runc_grit.registry import layout, reference
from runc_grit.registry.client import Client


class Body:
    """A layer's bytes for requests: iterated afresh each time, with a known length (so the
    upload is one PUT with Content-Length, not chunked)."""

    def __init__(self, layer):
        self.layer = layer

    def __iter__(self):
        return layout.chunks(self.layer)

    def __len__(self):
        return self.layer.size


def digest_of(layer):
    h = hashlib.sha256()
    for piece in layout.chunks(layer):
        h.update(piece)
    return "sha256:" + h.hexdigest()


def _layout_of(path):
    """(image dir, top dir of checkpointctl's layout or None)."""
    inner = os.path.join(path, "checkpoint")
    if os.path.isdir(inner) and not os.path.islink(inner) and \
            os.path.lexists(os.path.join(inner, _manifest.NAME)):
        return inner, path
    return path, None


def _memfd(name, data):
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    os.write(fd, data)
    return fd


def _meta(top, files, m, fds):
    """[(arcname, fd, size)] of the top-level CRI files: those of checkpointctl's layout as
    they are, else config.dump and spec.dump made from the checkpoint itself."""
    out = []
    if top is not None:
        with imagedir.ImageDir(os.path.realpath(top), "checkpoint %s" % top) as d:
            for name in layout.CRI_FILES:
                if name in d.names():
                    fd, st = d.open_regular(name, limit=None)
                    fds.append(fd)
                    out.append((name, fd, st.st_size))
        return out
    from runc_grit.checkpoint import archive
    data = json.dumps(archive._config_dump(m), indent=1).encode()
    fd = _memfd("config.dump", data)
    fds.append(fd)
    out.append(("config.dump", fd, len(data)))
    out += [("spec.dump", fd, size) for name, fd, size in files if name == "spec.dump"]
    return out


def push(path, ref_text, rconf, jobs=None, blob_size=None, log=None):
    """Push the checkpoint at path to ref_text. Returns a dict: ref (with the manifest's
    digest), digest, bytes, sent, skipped (blobs the registry had), seconds, digest_s."""
    ref = reference.parse(ref_text)
    jobs = jobs or rconf.get("jobs") or 8
    blob_size = blob_size or rconf.get("blob_size") or 512 << 20
    if blob_size % CHUNK or blob_size < CHUNK:
        raise RegistryError("blob size %d: must be a multiple of %d" % (blob_size, CHUNK))
    image_dir, top = _layout_of(path)
    where = "checkpoint %s" % path
    fds = []
    t0 = time.monotonic()
    try:
        with imagedir.ImageDir(os.path.realpath(image_dir), where) as src:
            raw = src.read(_manifest.NAME, 16 << 20)
            if raw is None:
                raise SourceError("%s: no %s, not a complete checkpoint" % (where, _manifest.NAME))
            try:
                m = json.loads(raw)
            except ValueError as e:
                raise SourceError("%s: unreadable %s: %s" % (where, _manifest.NAME, e)) from None
            _manifest.validate(m, where)
            files = []
            for item in m["images"]:
                fd, _ = src.open_regular(item["name"], size=item["size"])
                fds.append(fd)
                files.append((item["name"], fd, item["size"]))
            mfd = _memfd(_manifest.NAME, raw)
            fds.append(mfd)
        config_dump = None
        meta = _meta(top, files, m, fds)
        for name, fd, size in meta:
            if name == "config.dump" and size < (1 << 20):
                try:
                    config_dump = json.loads(os.pread(fd, size, 0))
                except ValueError:
                    config_dump = None
        layers = layout.plan(files, mfd, len(raw), meta, blob_size)
        with ThreadPoolExecutor(jobs) as pool:
            for layer, d in zip(layers, pool.map(digest_of, layers)):
                layer.digest = d
        t_digest = time.monotonic() - t0
        client = Client(ref, rconf, push=True, pool=jobs)
        try:
            sent = _upload(client, layers, jobs)
            cfg = layout.config_blob(layers)
            cfg_digest = "sha256:" + hashlib.sha256(cfg).hexdigest()
            if not client.has_blob(cfg_digest):
                client.upload_blob(cfg_digest, len(cfg), cfg)
            ann = layout.annotations(m, config_dump)
            ann["dev.runc-grit.blob-size"] = str(blob_size)
            man = layout.image_manifest(cfg_digest, len(cfg), layers, ann)
            digest = "sha256:" + hashlib.sha256(man).hexdigest()
            client.put_manifest(ref.tag or digest, man, layout.MANIFEST_TYPE)
        finally:
            client.close()
    finally:
        for fd in fds:
            os.close(fd)
    total = sum(l.size for l in layers)
    return {"ref": str(reference.Reference(ref.host, ref.repo, ref.tag, digest)),
            "digest": digest, "bytes": total, "sent": sent,
            "skipped": sum(1 for l in layers if l.skipped),
            "layers": len(layers), "seconds": time.monotonic() - t0, "digest_s": t_digest}


def _upload(client, layers, jobs):
    def one(layer):
        if client.has_blob(layer.digest):
            layer.skipped = True
            return 0
        client.upload_blob(layer.digest, layer.size, Body(layer))
        return layer.size
    seen, unique = set(), []
    for l in layers:   # the same content twice (two empty files) is one blob
        if l.digest not in seen:
            seen.add(l.digest)
            unique.append(l)
    with ThreadPoolExecutor(jobs) as pool:
        return sum(pool.map(one, unique))
