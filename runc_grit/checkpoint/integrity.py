"""Trusting a checkpoint before CRIU (as root) reads it: image digests and an HMAC signature.

The manifest lists every image file with its size and, when a signing key is configured (or
``verify: digest``), its sha256. The signature is HMAC-SHA256 over the manifest in canonical
JSON (sorted keys, no spaces) without its own ``signature`` field, so it covers the digests,
versions, annotations and GPU records. A restore checks the signature first, then every file
against the manifest, and only then runs the runtime.
"""
import hashlib
import hmac
import json
import os
import stat
from concurrent.futures import ThreadPoolExecutor

from runc_grit.errors import GritError

ALG = "hmac-sha256"


def sha256_file(path, bufsize=4 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(bufsize)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def sha256_files(paths, workers=None):
    """{path: sha256}, hashed in parallel (hashlib releases the GIL on large buffers)."""
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        return dict(zip(paths, pool.map(sha256_file, paths)))


# A file larger than this is hashed as pieces of this size, all pieces of all files in
# parallel: one 18 GB pages image would otherwise take one core ~12 s, at a checkpoint and
# again at the restore.
CHUNK = 64 << 20


def _sha256_range(job, bufsize=4 << 20):
    path, offset, length = job
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        end = offset + length
        while offset < end:
            b = os.pread(fd, min(bufsize, end - offset), offset)
            if not b:
                break
            h.update(b)
            offset += len(b)
    finally:
        os.close(fd)
    return h.hexdigest()


def digests(files, workers=None):
    """{path: digest} for files = {path: chunk size or None}: the sha256 of a whole file
    (None, or a file no larger than its chunk size), else the list of the sha256 of each
    chunk. Every chunk of every file is hashed in parallel, one thread per core."""
    jobs, shape = [], {}
    for path, chunk in files.items():
        size = os.stat(path).st_size
        if not chunk or size <= chunk:
            shape[path] = (len(jobs), None)
            jobs.append((path, 0, size))
        else:
            n = (size + chunk - 1) // chunk
            shape[path] = (len(jobs), n)
            jobs += [(path, i * chunk, min(chunk, size - i * chunk)) for i in range(n)]
    workers = workers or (os.cpu_count() or 1)
    with ThreadPoolExecutor(max(1, min(workers, len(jobs) or 1))) as pool:
        sums = list(pool.map(_sha256_range, jobs))
    return {p: sums[i] if n is None else sums[i:i + n] for p, (i, n) in shape.items()}


def load_key(path):
    """The signing key's bytes. A key others can read is refused: it would sign anything."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise GritError("signing_key %s: %s" % (path, e.strerror), kind="config") from None
    if not stat.S_ISREG(st.st_mode):
        raise GritError("signing_key %s: not a regular file" % path, kind="config")
    if st.st_mode & 0o077:
        raise GritError("signing_key %s: mode %o lets others read it; chmod 600"
                        % (path, st.st_mode & 0o777), kind="config")
    with open(path, "rb") as f:
        key = f.read().strip()
    if len(key) < 16:
        raise GritError("signing_key %s: shorter than 16 bytes" % path, kind="config")
    return key


def key_id(key):
    return hashlib.sha256(b"runc-grit key id\0" + key).hexdigest()[:16]


def canonical(m):
    body = {k: v for k, v in m.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign(m, key):
    """m with its signature set (in place, and returned)."""
    m["signature"] = {"alg": ALG, "key_id": key_id(key),
                      "value": hmac.new(key, canonical(m), hashlib.sha256).hexdigest()}
    return m


def verify(m, key, where):
    sig = m.get("signature")
    if not sig:
        raise GritError("%s: the checkpoint is not signed, and require_signature is set" % where,
                        kind="source")
    if sig.get("alg") != ALG:
        raise GritError("%s: unknown signature algorithm %r" % (where, sig.get("alg")),
                        kind="source")
    want = hmac.new(key, canonical(m), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(want, str(sig.get("value", ""))):
        if sig.get("key_id") != key_id(key):
            raise GritError("%s: signed with another key (key id %s; this node's is %s)"
                            % (where, sig.get("key_id"), key_id(key)), kind="source")
        raise GritError("%s: the manifest does not match its signature (edited after signing)"
                        % where, kind="source")


def check_signature(m, conf, where):
    """Apply the node's policy: verify when a key is configured; require when asked.
    Returns True when the signature was verified."""
    key_path = getattr(conf, "signing_key", None)
    required = bool(getattr(conf, "require_signature", False))
    if key_path:
        if m.get("signature") or required:
            verify(m, load_key(key_path), where)
            return True
        return False
    if required:
        raise GritError("%s: require_signature is set but no signing_key is configured" % where,
                        kind="config")
    return False
