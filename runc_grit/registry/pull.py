"""Pull a checkpoint image (registry.layout) into a root-only dir, trusting nothing the
registry says until it is checked:

1. the image manifest (at most 4 MiB; by digest when the reference has one, and then its
   content must hash to it), its layers all uncompressed tars, at most MAX_LAYERS;
2. layer 0 alone: the signed grit-manifest.json (at most 16 MiB), authenticated (signature,
   then schema), then admitted (tenant, age) for the destination spec: before any large blob;
3. the blob sizes the OCI manifest claims bounded by the file sizes the signed manifest lists;
4. the files layers, `jobs` at a time, each streamed once: its sha256 computed as it arrives
   and compared with its descriptor's digest at its end, every tar entry a regular file the
   signed manifest lists (whole, or one part of it) and written with pwrite at its offset into
   a file this pull created (O_EXCL, never followed), each 64 MiB chunk of content checked
   against the signed manifest's digests as it completes (the memory pages, pages-N.img, of
   a restore whose runtime gates the resume excepted: those are checked beside CRIU, as a
   local dir's are, by checkpoint.pagecheck, and this pull hashes them once, for the blob
   digest); no region written twice;
5. every listed file complete. Only then does the dir get its final name.

Anything else (a bad credential, a missing blob, a digest mismatch, a dropped connection, the
deadline) raises RegistryError and the dir is removed: nothing is left.
"""
import hashlib
import json
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

from runc_grit.checkpoint import imagedir
from runc_grit.checkpoint import manifest as _manifest
from runc_grit.checkpoint.integrity import CHUNK
from runc_grit.errors import RegistryError
from runc_grit.registry import cache, layout, reference
from runc_grit.registry.client import Client, MANIFEST_TYPES

PIECE = 4 << 20
INDEX_TYPE = MANIFEST_TYPES[1]
_held = {}  # cache entry -> lock fd, while a restore reads it


class Blob:
    """A blob's response read exactly to its descriptor's size, hashed as it goes."""

    def __init__(self, client, desc, cancel, where):
        self.client, self.desc, self.cancel, self.where = client, desc, cancel, where
        self.left = desc["size"]
        self.hash = hashlib.sha256()
        self.r = client.open_blob(desc["digest"])

    def read(self, n):
        """Exactly n bytes (n <= what is left), in pieces of up to PIECE."""
        out = []
        while n:
            if self.cancel.is_set():
                raise RegistryError("%s: stopped (another blob failed)" % self.where)
            self.client.check_deadline()
            if n > self.left:
                raise RegistryError("%s: blob %s is longer than the %d bytes its descriptor "
                                    "says" % (self.where, self.desc["digest"], self.desc["size"]))
            try:
                data = self.r.raw.read(min(n, PIECE), decode_content=False)
            except Exception as e:  # urllib3's ProtocolError, timeouts, resets
                raise RegistryError("%s: blob %s: the registry stopped sending: %s"
                                    % (self.where, self.desc["digest"], e)) from None
            if not data:
                raise RegistryError("%s: blob %s ended after %d of %d bytes (the registry "
                                    "stopped sending)" % (self.where, self.desc["digest"],
                                                          self.desc["size"] - self.left,
                                                          self.desc["size"]))
            self.hash.update(data)
            self.left -= len(data)
            n -= len(data)
            out.append(data)
        return out[0] if len(out) == 1 else b"".join(out)

    def finish(self):
        if self.left:
            raise RegistryError("%s: blob %s: %d bytes after the end of its tar"
                                % (self.where, self.desc["digest"], self.left))
        got = "sha256:" + self.hash.hexdigest()
        if got != self.desc["digest"]:
            raise RegistryError("%s: blob %s does not match its digest (got %s): refused"
                                % (self.where, self.desc["digest"], got))

    def close(self):
        self.r.close()


class Content:
    """The signed manifest's digests of one file region, checked chunk by chunk."""

    def __init__(self, item, offset, length, where, check=True):
        self.item, self.where = item, where
        self.pos, self.end = offset, offset + length
        ch = item.get("sha256_chunks")
        self.size = ch["size"] if ch else (item["size"] if "sha256" in item else 0)
        if not check:
            self.size = 0
        if self.size and offset % self.size:
            raise RegistryError("%s: %s: a part at offset %d does not start a digest chunk"
                                % (where, item["name"], offset))
        self.h = hashlib.sha256() if self.size else None

    def update(self, data):
        if self.h is None:
            return
        mv = memoryview(data)
        while len(mv):
            room = self.size - self.pos % self.size
            self.h.update(mv[:room])
            n = min(room, len(mv))
            self.pos += n
            mv = mv[n:]
            if self.pos % self.size == 0 or self.pos == self.item["size"]:
                self._check()

    def _check(self):
        ch = self.item.get("sha256_chunks")
        want = ch["digests"][(self.pos - 1) // self.size] if ch else self.item["sha256"]
        if self.h.hexdigest() != want:
            raise RegistryError("%s: %s does not match the signed manifest at byte %d: refused"
                                % (self.where, self.item["name"], self.pos))
        self.h = hashlib.sha256()

    def finish(self):
        if self.h is not None and self.pos != self.end:
            raise RegistryError("%s: %s: short part" % (self.where, self.item["name"]))


def _json(data, what):
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise RegistryError("%s: not JSON: %s" % (what, e)) from None
    if not isinstance(doc, dict):
        raise RegistryError("%s: not a JSON object" % what)
    return doc


def resolve(client, ref, where):
    """(image manifest dict, its digest): an index is resolved to this node's platform."""
    data, mtype, digest = client.get_manifest(ref.reference)
    doc = _json(data, "%s: manifest" % where)
    if mtype == INDEX_TYPE or doc.get("mediaType") == INDEX_TYPE:
        want = layout.arch()
        for d in doc.get("manifests") or []:
            p = d.get("platform") or {}
            if p.get("os") == "linux" and p.get("architecture") == want:
                data, _, digest = client.get_manifest(d["digest"])
                doc = _json(data, "%s: manifest" % where)
                break
        else:
            raise RegistryError("%s: the index has no linux/%s image" % (where, want))
    return doc, digest


def check_image(doc, where):
    """(manifest layer, files layers, blob_size) of a checkpoint image manifest."""
    layers = doc.get("layers")
    if not isinstance(layers, list) or not layers or len(layers) > layout.MAX_LAYERS:
        raise RegistryError("%s: not a runc-grit checkpoint image (layers)" % where)
    for d in layers:
        if not isinstance(d, dict) or d.get("mediaType") != layout.LAYER_TYPE or \
                not isinstance(d.get("size"), int) or d["size"] < 0 or \
                not isinstance(d.get("digest"), str) or not d["digest"].startswith("sha256:") \
                or len(d["digest"]) != 71:
            raise RegistryError("%s: layer %r: not an uncompressed tar layer with a sha256 "
                                "digest; refused" % (where, d))
    roles = [(d.get("annotations") or {}).get(layout.ROLE) for d in layers]
    if roles[0] != "manifest" or layers[0]["size"] > (16 << 20) + 4 * layout.BLOCK:
        raise RegistryError("%s: its first layer is not runc-grit's signed manifest; this is "
                            "not a checkpoint pushed by runc-grit" % where)
    try:
        blob_size = int((doc.get("annotations") or {}).get("dev.runc-grit.blob-size", ""))
    except ValueError:
        blob_size = 0
    if blob_size < CHUNK or blob_size % CHUNK:
        raise RegistryError("%s: blob size %r is not a multiple of %d" % (where, blob_size, CHUNK))
    files = [d for d, r in zip(layers[1:], roles[1:]) if r != "meta"]
    return layers[0], files, blob_size


def fetch_manifest(client, desc, dfd, where):
    """Layer 0: exactly one entry, checkpoint/grit-manifest.json. Written into the dir;
    returns its bytes."""
    blob = Blob(client, desc, threading.Event(), where)
    try:
        head = layout.parse_header(blob.read(layout.BLOCK), where)
        if head is None or head[0] != layout.DIR + layout.MANIFEST_NAME or head[1] > (16 << 20):
            raise RegistryError("%s: layer 0 does not hold %s alone" % (where, _manifest.NAME))
        raw = blob.read(head[1])
        blob.read(layout.padded(head[1]) - head[1])
        if layout.parse_header(blob.read(layout.BLOCK), where) is not None:
            raise RegistryError("%s: layer 0 holds more than %s" % (where, _manifest.NAME))
        blob.read(layout.BLOCK)
        blob.finish()
    finally:
        blob.close()
    fd = os.open(_manifest.NAME, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                 | os.O_CLOEXEC, 0o600, dir_fd=dfd)
    with os.fdopen(fd, "wb") as f:
        f.write(raw)
    return raw


def bound_sizes(m, files, blob_size, where):
    """The OCI manifest's blob sizes may not exceed what the signed manifest lists (plus tar
    headers); returns the (name, offset) regions expected."""
    expected = set()
    for item in m["images"]:
        size = item["size"]
        offs = range(0, size, blob_size) if size > blob_size else (0,)
        expected |= {(item["name"], off) for off in offs}
    listed = sum(i["size"] for i in m["images"])
    cap = listed + 2 * layout.BLOCK * (len(expected) + len(files))
    claimed = sum(d["size"] for d in files)
    if len(files) > len(expected) or claimed > cap:
        raise RegistryError("%s: the image's %d files layers claim %d bytes; the signed "
                            "manifest lists %d bytes in %d files: refused"
                            % (where, len(files), claimed, listed, len(m["images"])))
    return expected


class Writer:
    """Streams files layers into the pre-created files of the dir."""

    def __init__(self, client, m, dfd, blob_size, expected, where, unchecked=()):
        self.client, self.blob_size, self.where = client, blob_size, where
        self.unchecked = frozenset(unchecked)  # names whose signed digests the restore checks
        self.items = {i["name"]: i for i in m["images"]}
        self.sizes = {n: i["size"] for n, i in self.items.items()}
        self.expected, self.done = expected, set()
        self.lock, self.cancel = threading.Lock(), threading.Event()
        self.fds = {}
        for name, size in self.sizes.items():
            fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600, dir_fd=dfd)
            self.fds[name] = fd
            os.ftruncate(fd, size)

    def close(self):
        for fd in self.fds.values():
            os.close(fd)

    def layer(self, desc):
        blob = Blob(self.client, desc, self.cancel, self.where)
        try:
            while True:
                head = layout.parse_header(blob.read(layout.BLOCK), self.where)
                if head is None:
                    blob.read(layout.BLOCK)
                    break
                self._entry(blob, *head)
            blob.finish()
        finally:
            blob.close()
        return desc["size"]

    def _entry(self, blob, arcname, length):
        try:
            name, off, want = layout.target_of(arcname, self.sizes, self.blob_size)
        except RegistryError as e:
            raise RegistryError("%s: %s" % (self.where, e.message)) from None
        if length != want:
            raise RegistryError("%s: entry %s has %d bytes, the signed manifest makes it %d"
                                % (self.where, arcname, length, want))
        with self.lock:
            if (name, off) in self.done:
                raise RegistryError("%s: entry %s comes twice" % (self.where, arcname))
            self.done.add((name, off))
        content = Content(self.items[name], off, length, self.where,
                          check=name not in self.unchecked)
        fd, pos, end = self.fds[name], off, off + length
        while pos < end:
            data = blob.read(min(PIECE, end - pos))
            os.pwrite(fd, data, pos)
            content.update(data)
            pos += len(data)
        content.finish()
        if length % layout.BLOCK:
            blob.read(layout.BLOCK - length % layout.BLOCK)

    def run(self, files, jobs):
        got, first = 0, None
        with ThreadPoolExecutor(max(1, min(jobs, len(files) or 1))) as pool:
            # the largest first: no big blob left alone at the end while the other workers idle
            futs = [pool.submit(self.layer, d)
                    for d in sorted(files, key=lambda d: d["size"], reverse=True)]
            for f in as_completed(futs):
                try:
                    got += f.result()
                except BaseException as e:
                    self.cancel.set()
                    if first is None or (isinstance(first, RegistryError)
                                         and "stopped (another" in first.message):
                        first = e
        if first is not None:
            raise first
        missing = self.expected - self.done
        if missing:
            name, off = sorted(missing)[0]
            raise RegistryError("%s: the image lacks %s (bytes from %d) that the signed "
                                "manifest lists" % (self.where, name, off))
        return got


def fetch(ref, conf, spec, where, final, doc, digest, tmp_root, admit=True, defer_pages=False):
    """Pull the image doc (already resolved) into tmp_root's new dir, named final once
    complete. Returns (final, manifest, signed, stats). admit: check the tenant and age for
    spec (a restore) before any large blob; `runc-grit pull` leaves that to the restore.
    defer_pages: the page images' signed digests are left to the caller (stats["unverified"]
    lists their items); only their blob digests are checked here."""
    from runc_grit.checkpoint import admission
    rconf = conf.registry
    t0 = time.monotonic()
    mdesc, files, blob_size = check_image(doc, where)
    tmp = cache.incoming(tmp_root)
    try:
        client = Client(ref, rconf, deadline=_deadline(rconf), pool=rconf.get("jobs") or 8)
        dfd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            fetch_manifest(client, mdesc, dfd, where)
            with imagedir.ImageDir(tmp, where) as src:
                m, _, signed = admission.authenticate(src, conf, where, missing="no manifest")
                if admit:
                    admission.admit(src, m, conf, spec, where)
            t_auth = time.monotonic() - t0
            expected = bound_sizes(m, files, blob_size, where)
            unverified = page_items(m) if defer_pages else []
            w = Writer(client, m, dfd, blob_size, expected, where,
                       unchecked=[i["name"] for i in unverified])
            try:
                got = w.run(files, rconf.get("jobs") or 8)
            finally:
                w.close()
        finally:
            os.close(dfd)
            client.close()
        held = cache.lock(tmp)  # follows the dir through the rename: no trim in between
        won = cache.commit(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not won:
        cache.unlock(held)
        held = None
    secs = time.monotonic() - t0
    return final, m, signed, {"digest": digest, "bytes": got, "seconds": secs,
                              "auth_s": t_auth, "layers": len(files) + 1,
                              "unverified": unverified, "won": won, "lock": held}


def page_items(m):
    """The manifest's page images (pages-N.img) that carry digests."""
    return [i for i in m["images"] if _manifest.has_digest(i) and _manifest.is_page_data(i["name"])]


def _deadline(rconf):
    return time.monotonic() + float(rconf.get("timeout") or 600)


def to_cache(source_text, conf, spec=None, defer_pages=False):
    """A restore's pull: (dir, manifest, signed, stats) of the checkpoint at oci://REF, from
    the cache when this digest was pulled before (authenticated and admitted again), else
    pulled into it. The entry is locked (shared) until release(). stats["unverified"]: the
    page images whose signed digests the caller checks (pulled with defer_pages, or an entry
    no check of its pages has passed on yet); then release() says how that check went."""
    from runc_grit.checkpoint import admission
    ref = reference.parse(source_text)
    where = "restore source %s" % source_text
    root = cache.ensure(cache.cache_dir(conf))
    stats = {"cached": True}
    digest = ref.digest
    doc = None
    if digest is None or not os.path.isdir(cache.entry(root, digest)):
        client = Client(ref, conf.registry, deadline=_deadline(conf.registry))
        try:
            doc, digest = resolve(client, ref, where)
        finally:
            client.close()
    path = cache.entry(root, digest)
    fd = cache.lock(path) if os.path.isdir(path) else None
    if fd is None and doc is None:  # the entry went (trimmed) since it was seen: pull it
        client = Client(ref, conf.registry, deadline=_deadline(conf.registry))
        try:
            doc, digest = resolve(client, ref, where)
        finally:
            client.close()
    try:
        if fd is not None:
            with imagedir.ImageDir(path, where) as src:
                m, _, signed = admission.authenticate(src, conf, where, missing="no manifest")
                items = admission.admit(src, m, conf, spec, where)
                admission.check_regular(src, items)
            os.utime(path)
            stats["unverified"] = [] if cache.pages_verified(path) else page_items(m)
        else:
            if defer_pages:
                cache.unmark(path)  # a mark an entry of this name left: not this pull's
            path, m, signed, stats = fetch(ref, conf, spec, where, path, doc, digest, root,
                                           defer_pages=defer_pages)
            fd = stats.pop("lock")
            if stats["won"]:
                if not stats["unverified"]:
                    cache.mark_pages_verified(path)
            else:  # another pull's dir has the name: its pages as any entry's
                fd = cache.lock(path)
                if fd is None:
                    raise RegistryError("%s: the pulled checkpoint left the cache before it "
                                        "could be used; try again" % where)
                stats["unverified"] = [] if cache.pages_verified(path) else page_items(m)
            stats["cached"] = False
            cache.trim(root, (conf.registry or {}).get("cache_bytes", 0), keep=(path,))
    except BaseException:
        cache.unlock(fd)
        raise
    _held[path] = fd
    return path, m, signed, stats


def pages_passed(path):
    """The entry's page images matched the signed digests (checked by the restore)."""
    if path in _held:
        cache.mark_pages_verified(path)


def release(path, pages_ok=None):
    """The restore is done with the entry. pages_ok: its check of the page images passed
    (the entry is marked verified) or failed (the entry is removed, unless another restore
    reads it); None: no check ran."""
    if pages_ok:
        pages_passed(path)
    fd = _held.pop(path, None)
    cache.unlock(fd)
    if pages_ok is False and fd is not None:
        cache.evict(path)


def to_dir(source_text, out, conf):
    """`runc-grit pull REF DIR`: DIR (new) gets the verified checkpoint."""
    from runc_grit.errors import UsageError
    ref = reference.parse(source_text)
    out = os.path.abspath(out)
    if os.path.lexists(out):
        raise UsageError("%s exists; pull into a new dir" % out)
    parent = os.path.dirname(out)
    if not os.path.isdir(parent):
        raise UsageError("%s: no such directory" % parent)
    where = "pull of %s" % source_text
    client = Client(ref, conf.registry, deadline=_deadline(conf.registry))
    try:
        doc, digest = resolve(client, ref, where)
    finally:
        client.close()
    r = fetch(ref, conf, None, where, out, doc, digest, parent, admit=False)
    cache.unlock(r[3].pop("lock"))
    del r[3]["unverified"]  # none: a plain pull checks everything
    if not r[3].pop("won"):
        raise UsageError("%s appeared during the pull; nothing was written into it" % out)
    return r
