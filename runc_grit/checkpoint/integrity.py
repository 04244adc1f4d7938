"""Trusting a checkpoint before CRIU (as root) reads it: image digests and a signature.

The manifest lists every image file with its size and, when the node signs (or
``verify: digest``), its sha256. The signature covers the manifest in canonical JSON (sorted
keys, no spaces) without its own ``signature`` field, so it covers the digests, versions,
annotations and GPU records. A restore checks the signature first, then every file against
the manifest, and only then runs the runtime.

Signatures are Ed25519: each node signs with its own private key (``signing_key``: a PEM
PKCS8 file, mode 600) and verifies with the public keys it trusts (``trusted_keys``: PEM
files or dirs of ``*.pub``, and always its own), so a node that can verify cannot sign for
another. A ``signing_key`` that is not a PEM private key is the legacy symmetric secret
(HMAC-SHA256): the same bytes sign and verify, which suits one node only. ``cryptography``
is imported only when a key is read, never on the runtime's pass-through path.
"""
import base64
import binascii
import hashlib
import hmac
import json
import os
import stat
from concurrent.futures import ThreadPoolExecutor

from runc_grit.errors import ConfigError, SourceError

ED25519 = "ed25519"
HMAC = "hmac-sha256"  # the legacy symmetric mode: one node only


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


def sha256_range(job, bufsize=4 << 20):
    path, offset, length = job   # path: a name, or a descriptor the caller keeps open
    h = hashlib.sha256()
    fd = path if isinstance(path, int) else os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        end = offset + length
        while offset < end:
            b = os.pread(fd, min(bufsize, end - offset), offset)
            if not b:
                break
            h.update(b)
            offset += len(b)
    finally:
        if fd is not path:
            os.close(fd)
    return h.hexdigest()


def digests(files, workers=None, known=None):
    """{path: digest} for files = {path: chunk size or None}: the sha256 of a whole file
    (None, or a file no larger than its chunk size), else the list of the sha256 of each
    chunk. Every chunk of every file is hashed in parallel, one thread per core. known:
    {path: digests of its first whole chunks}, taken already (while CRIU wrote the file)."""
    jobs, shape = [], {}
    for path, chunk in files.items():
        size = os.stat(path).st_size
        if not chunk or size <= chunk:
            shape[path] = ([], len(jobs), None)
            jobs.append((path, 0, size))
        else:
            n = (size + chunk - 1) // chunk
            have = list((known or {}).get(path) or [])[:size // chunk]
            shape[path] = (have, len(jobs), n - len(have))
            jobs += [(path, i * chunk, min(chunk, size - i * chunk))
                     for i in range(len(have), n)]
    workers = workers or (os.cpu_count() or 1)
    with ThreadPoolExecutor(max(1, min(workers, len(jobs) or 1))) as pool:
        sums = list(pool.map(sha256_range, jobs))
    return {p: sums[i] if n is None else have + sums[i:i + n]
            for p, (have, i, n) in shape.items()}


def canonical(m):
    body = {k: v for k, v in m.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# --- keys -----------------------------------------------------------------------------------

def _pem_label(data):
    """'PRIVATE KEY', 'PUBLIC KEY', ... for PEM text, else None."""
    text = data.lstrip()
    if not text.startswith(b"-----BEGIN "):
        return None
    line = text.split(b"\n", 1)[0].strip()
    return line[len(b"-----BEGIN "):].rstrip(b"-").strip().decode("ascii", "replace")


def public_key_id(public):
    """A public key's id, as manifests name it: sha256 of its raw 32 bytes, first 16 hex."""
    from cryptography.hazmat.primitives import serialization
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


class HmacKey:
    """The legacy symmetric secret: the bytes that verify also sign, so every node that can
    check a checkpoint can forge one. For a single node only (doctor warns)."""
    alg = HMAC
    symmetric = True
    public = None

    def __init__(self, secret, path=None):
        self.secret, self.path = secret, path
        self.key_id = hashlib.sha256(b"runc-grit key id\0" + secret).hexdigest()[:16]

    def mac(self, m):
        return hmac.new(self.secret, canonical(m), hashlib.sha256).hexdigest()

    def sign(self, m):
        """m with its signature set (in place, and returned)."""
        m["signature"] = {"alg": HMAC, "key_id": self.key_id, "value": self.mac(m)}
        return m


class Ed25519Key:
    """A node's own private key: it signs; its public key (public) verifies."""
    alg = ED25519
    symmetric = False

    def __init__(self, private, path=None):
        self.private, self.path = private, path
        self.public = private.public_key()
        self.key_id = public_key_id(self.public)

    def sign(self, m):
        """m with its signature set (in place, and returned)."""
        value = base64.b64encode(self.private.sign(canonical(m))).decode("ascii")
        m["signature"] = {"alg": ED25519, "key_id": self.key_id, "value": value}
        return m


def load_signer(path):
    """The node's signing key: an Ed25519Key (a PEM private key), else the legacy HmacKey (any
    other bytes, at least 16). A key file others can read is refused: it would sign anything."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise ConfigError("signing_key %s: %s" % (path, e.strerror)) from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError("signing_key %s: not a regular file" % path)
    if st.st_mode & 0o077:
        raise ConfigError("signing_key %s: mode %o lets others read it; chmod 600"
                        % (path, st.st_mode & 0o777))
    with open(path, "rb") as f:
        data = f.read()
    label = _pem_label(data)
    if label is None:
        secret = data.strip()
        if len(secret) < 16:
            raise ConfigError("signing_key %s: shorter than 16 bytes" % path)
        return HmacKey(secret, path)
    if label != "PRIVATE KEY":
        raise ConfigError("signing_key %s: a PEM %s, not a PKCS8 private key (signing_key is this "
                        "node's own Ed25519 private key, from runc-grit keygen; public keys go "
                        "in trusted_keys)" % (path, label))
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise ConfigError("signing_key %s: cannot read the private key: %s" % (path, e)) from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigError("signing_key %s: a %s, not an Ed25519 key (runc-grit keygen makes one)"
                        % (path, type(key).__name__.lstrip("_")))
    return Ed25519Key(key, path)


def _parse_public(data, path):
    label = _pem_label(data)
    if label != "PUBLIC KEY":
        what = "a private key: trust its public key instead" if label and "PRIVATE" in label \
            else "not a PEM public key"
        raise ConfigError("trusted key %s: %s" % (path, what))
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as e:
        raise ConfigError("trusted key %s: cannot read it: %s" % (path, e)) from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ConfigError("trusted key %s: a %s, not an Ed25519 key"
                        % (path, type(key).__name__.lstrip("_")))
    return key


def _trust_path_stat(path):
    """os.stat(path), refused when others could change what it holds: whoever can write a
    trusted key (or add one to a trusted dir) makes this node accept their checkpoints."""
    st = os.stat(path)
    if st.st_mode & 0o022 or st.st_uid not in (0, os.geteuid()):
        raise ConfigError("trusted_keys %s: others can change it (mode %o, owner uid %d): whoever "
                        "can write it can make this node trust their key; chown root, chmod go-w"
                        % (path, st.st_mode & 0o7777, st.st_uid))
    return st


def load_public(path):
    """A trusted Ed25519 public key from a PEM file (SubjectPublicKeyInfo)."""
    try:
        st = _trust_path_stat(path)
    except OSError as e:
        raise ConfigError("trusted key %s: %s" % (path, e.strerror)) from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError("trusted key %s: not a regular file" % path)
    with open(path, "rb") as f:
        return _parse_public(f.read(), path)


def trusted_keys(conf, own=None):
    """{key_id: (public key, where from)}: own's public key (the node's signing key, if
    Ed25519) and every key that trusted_keys names (a PEM file, or a dir of *.pub files). A
    path that does not exist is skipped: the default trusted.d may not have been made."""
    out = {}
    if own is not None and own.public is not None:
        out[own.key_id] = (own.public, "own key %s" % own.path)
    for p in getattr(conf, "trusted_keys", None) or ():
        try:
            st = _trust_path_stat(p)
            files = [p]
            if stat.S_ISDIR(st.st_mode):
                files = [os.path.join(p, n) for n in sorted(os.listdir(p))
                         if n.endswith(".pub") and not n.startswith(".")]
        except FileNotFoundError:
            continue
        except OSError as e:
            raise ConfigError("trusted_keys %s: %s" % (p, e.strerror)) from None
        for f in files:
            key = load_public(f)
            out.setdefault(public_key_id(key), (key, f))
    return out


def _trust_paths(conf):
    return [p for p in getattr(conf, "trusted_keys", None) or () if os.path.exists(p)]


def key_id_of_file(path):
    """The id of a key file: a PEM public key, a PEM private key (its public key's id) or a
    legacy HMAC secret."""
    with open(path, "rb") as f:
        data = f.read()
    if _pem_label(data) == "PUBLIC KEY":
        return public_key_id(_parse_public(data, path))
    return load_signer(path).key_id


def _create(path, data, mode):
    """path holding data with mode, complete or not at all, never over an existing file: a
    temp file beside it, linked into place (link refuses an existing name)."""
    import tempfile
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".%s." % os.path.basename(path))
    try:
        try:
            os.fchmod(fd, mode)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise ConfigError("%s exists; not overwritten" % path) from None
    finally:
        os.unlink(tmp)


def write_key_pair(out_dir, name="signing"):
    """A new Ed25519 key pair: out_dir/NAME.key (PKCS8 PEM, 0600) and out_dir/NAME.pub
    (SubjectPublicKeyInfo PEM, 0644). Refuses to overwrite either. Returns (key path, public
    key path, key id)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
    key_path = os.path.join(out_dir, name + ".key")
    pub_path = os.path.join(out_dir, name + ".pub")
    for p in (key_path, pub_path):
        if os.path.lexists(p):
            raise ConfigError("%s exists; not overwritten (remove it, or choose another --out)" % p)
    os.makedirs(out_dir, mode=0o755, exist_ok=True)
    private = ed25519.Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    pub = private.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    _create(key_path, pem, 0o600)
    try:
        _create(pub_path, pub, 0o644)
    except BaseException:
        os.unlink(key_path)
        raise
    try:
        dfd = os.open(out_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return key_path, pub_path, public_key_id(private.public_key())


# --- signing and verifying ------------------------------------------------------------------

def sign_manifest(m, conf):
    """m signed with the node's signing_key (in place, and returned). A node without one
    (one that only verifies, with trusted_keys) cannot sign: m is left unsigned, and nodes
    that require signatures refuse it."""
    key_path = getattr(conf, "signing_key", None)
    if key_path:
        return load_signer(key_path).sign(m)
    m.pop("signature", None)
    return m


def describe(keys):
    """trusted_keys()' answer in words: 'ID (where from), ...'."""
    return ", ".join("%s (%s)" % (kid, src) for kid, (_, src) in keys.items()) or "none"


def verify(m, conf, where):
    """Raise GritError unless m carries a valid signature of a key this node trusts."""
    sig = m.get("signature")
    if not sig:
        raise SourceError("%s: the checkpoint is not signed, and require_signature is set" % where)
    alg, kid = sig.get("alg"), sig.get("key_id")
    key_path = getattr(conf, "signing_key", None)
    own = load_signer(key_path) if key_path else None
    if alg == ED25519:
        keys = trusted_keys(conf, own)
        if kid not in keys:
            raise SourceError("%s: signed by key %s, which this node does not trust (trusted: %s)"
                            % (where, kid, describe(keys)))
        from cryptography.exceptions import InvalidSignature
        try:
            value = base64.b64decode(str(sig.get("value", "")), validate=True)
            keys[kid][0].verify(value, canonical(m))
        except (InvalidSignature, ValueError, binascii.Error):
            raise SourceError("%s: the manifest does not match its signature (edited after "
                            "signing)" % where) from None
        return
    if alg == HMAC:
        if own is None or not own.symmetric:
            raise SourceError("%s: signed with the symmetric (hmac-sha256) key %s, which this node "
                            "does not hold (%s)" % (where, kid, "its signing_key %s is an Ed25519 "
                                                    "key" % key_path if own else "no signing_key"))
        if not hmac.compare_digest(own.mac(m), str(sig.get("value", ""))):
            if kid != own.key_id:
                raise SourceError("%s: signed with another key (key id %s; this node's is %s)"
                                % (where, kid, own.key_id))
            raise SourceError("%s: the manifest does not match its signature (edited after "
                            "signing)" % where)
        return
    raise SourceError("%s: unknown signature algorithm %r" % (where, alg))


def check_signature(m, conf, where):
    """Apply the node's policy: verify when the node has keys to verify with (its signing_key,
    trusted_keys) and the manifest is signed or a signature is required; refuse when required
    and missing or invalid. Returns True when the signature was verified."""
    required = bool(getattr(conf, "require_signature", False))
    if not getattr(conf, "signing_key", None) and not _trust_paths(conf):
        if required:
            raise ConfigError("%s: require_signature is set but neither a signing_key nor any "
                            "trusted_keys are configured" % where)
        return False
    if m.get("signature") or required:
        verify(m, conf, where)
        return True
    return False
