"""`runc-grit export` / `import`: one archive to move a checkpoint between nodes.

The layout is checkpointctl's (Podman, CRI-O): CRIU's images under ``checkpoint/``, and at the
top ``rootfs-diff.tar``, ``deleted.files``, ``spec.dump`` (the container's OCI spec),
``config.dump`` (id, name, image, times) and runc-grit's ``grit-manifest.json``. zstd-compressed
by default. Import unpacks it back into one image dir (the flat layout CRIU and runc-grit
read) and checks it like a restore would: manifest, signature, every file.
"""
import io
import json
import os
import subprocess
import tarfile

from runc_grit.checkpoint import manifest as _manifest
from runc_grit.errors import GritError, SourceError, UsageError

TOP = ("rootfs-diff.tar", "deleted.files", "spec.dump", "config.dump", _manifest.NAME)


def _config_dump(m):
    ann = m["container"].get("annotations") or {}
    return {"id": m["container"]["id"],
            "name": ann.get("io.kubernetes.cri.container-name") or m["container"]["id"],
            "rootfsImageName": ann.get("io.kubernetes.cri.image-name", ""),
            "createdTime": m["created"], "checkpointedTime": m["created"],
            "runtime": "runc-grit/" + (m["runtime"].get("name") or "")}


def export(image_dir, out, compress=True, progress=None):
    """Write the archive; returns bytes of image data. progress(n) is called as bytes go."""
    m = _manifest.load(image_dir)
    if m is None:
        raise SourceError("%s: no %s, not a complete checkpoint" % (image_dir, _manifest.NAME))
    _manifest.check_files(image_dir, m)
    tmp = out + ".tmp"
    sink = open(tmp, "wb")
    proc = None
    if compress:
        proc = subprocess.Popen(["zstd", "-q", "-T0", "-c"], stdin=subprocess.PIPE, stdout=sink)
        stream = proc.stdin
    else:
        stream = sink
    total = 0
    try:
        with tarfile.open(fileobj=stream, mode="w|") as tar:
            data = json.dumps(_config_dump(m), indent=1).encode()
            info = tarfile.TarInfo("config.dump")
            info.size, info.mode = len(data), 0o600
            tar.addfile(info, io.BytesIO(data))
            d = tarfile.TarInfo("checkpoint")
            d.type, d.mode = tarfile.DIRTYPE, 0o700
            tar.addfile(d)
            for item in m["images"] + [{"name": _manifest.NAME}]:
                name = item["name"]
                arc = name if name in TOP else "checkpoint/" + name
                tar.add(os.path.join(image_dir, name), arcname=arc, recursive=False)
                total += item.get("size", 0)
                if progress:
                    progress(item.get("size", 0))
    finally:
        if proc:
            proc.stdin.close()
            rc = proc.wait()
        sink.close()
    if proc and rc != 0:
        os.unlink(tmp)
        raise GritError("zstd failed (%d) writing %s" % (rc, out))
    os.replace(tmp, out)
    return total


def import_(archive, image_dir, conf=None):
    """Unpack archive into image_dir (which must not exist yet) and verify it."""
    if os.path.lexists(image_dir):
        raise UsageError("%s exists; import into a new dir" % image_dir)
    with open(archive, "rb") as f:
        magic = f.read(4)
    tmp = image_dir + ".importing"
    os.makedirs(tmp, mode=0o700)
    proc = None
    try:
        src = open(archive, "rb")
        if magic == b"\x28\xb5\x2f\xfd":  # zstd frame
            proc = subprocess.Popen(["zstd", "-q", "-dc"], stdin=src, stdout=subprocess.PIPE)
            stream = proc.stdout
        else:
            stream = src
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for mem in tar:
                parts = mem.name.split("/")
                if parts[0] == "checkpoint" and len(parts) == 2:
                    name = parts[1]
                elif len(parts) == 1 and parts[0] in TOP:
                    name = parts[0]
                elif mem.isdir() and mem.name.rstrip("/") == "checkpoint":
                    continue
                else:
                    raise SourceError("%s: unexpected member %r" % (archive, mem.name))
                if not mem.isfile() or not name or name.startswith(".") or "\0" in name:
                    raise SourceError("%s: member %r is not a plain file" % (archive, mem.name))
                if name == "config.dump":
                    continue  # made from the manifest at export; an image dir holds only
                    # what its manifest lists
                f = tar.extractfile(mem)
                with open(os.path.join(tmp, name), "xb") as out:
                    while True:
                        b = f.read(1 << 20)
                        if not b:
                            break
                        out.write(b)
        src.close()
        if proc and proc.wait() != 0:
            raise SourceError("%s: zstd could not decompress it" % archive)
        m = _manifest.load(tmp)
        if m is None:
            raise SourceError("%s: no %s inside" % (archive, _manifest.NAME))
        signed = False
        if conf is not None:
            from runc_grit.checkpoint import integrity
            signed = integrity.check_signature(m, conf, "archive %s" % archive)
        _manifest.check_files(tmp, m, digest=signed or all(_manifest.has_digest(i) for i in m["images"]))
        os.rename(tmp, image_dir)
        return m
    except BaseException:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
        raise
