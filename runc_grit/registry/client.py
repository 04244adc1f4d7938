"""The OCI distribution API (https://github.com/opencontainers/distribution-spec), over
requests: manifests, blobs, uploads, and the two auth schemes registries use (Basic, and
Bearer tokens from the registry's realm).

Why requests and not skopeo or oras: a restore must verify the signed manifest before it takes
any large blob, check every blob against its digest as it streams, write only into files it
opened itself (dirfd, O_EXCL) at offsets it computed, and stop at a deadline. skopeo copies a
whole image into a layout of its own first; oras-py writes to paths it names. Both would put
unverified bytes on disk, so runc-grit drives the API itself with the HTTP library the Python
field uses (connection pools, TLS against the node's CA store, redirects that drop credentials
when the host changes).

TLS by default; plain HTTP only for the hosts the config's registry.insecure lists.
Credentials: the config's registry.auth_file (docker config.json format), never anything a pod
chose.
"""
import base64
import json
import os
import re
import ssl
import time

from runc_grit.errors import RegistryError

MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json",
                  "application/vnd.oci.image.index.v1+json",
                  "application/vnd.docker.distribution.manifest.v2+json")
MANIFEST_LIMIT = 4 << 20
CONNECT_TIMEOUT = 10
READ_TIMEOUT = 60


def ca_bundle(conf_ca):
    """What TLS verification trusts: the config's CA file, else the node's CA store."""
    if conf_ca:
        return conf_ca
    paths = ssl.get_default_verify_paths()
    for p in (paths.cafile, paths.openssl_cafile, paths.capath, paths.openssl_capath):
        if p and os.path.exists(p):
            return p
    return True


def credentials(auth_file, host):
    """(user, password) for host from a docker config.json, or None."""
    if not auth_file:
        return None
    try:
        with open(auth_file, "rb") as f:
            data = json.loads(f.read(1 << 20))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise RegistryError("registry auth_file %s: %s" % (auth_file, e)) from None
    auths = data.get("auths") if isinstance(data, dict) else None
    if not isinstance(auths, dict):
        return None
    for key in (host, "https://" + host, "http://" + host, "https://%s/v1/" % host,
                "https://%s/v2/" % host):
        entry = auths.get(key)
        if not isinstance(entry, dict):
            continue
        if entry.get("auth"):
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise RegistryError("registry auth_file %s: the auth of %s is not base64 of "
                                    "user:password" % (auth_file, host)) from None
            return user, password
        if entry.get("username"):
            return entry["username"], entry.get("password", "")
    return None


_PARAM = re.compile(r'(\w+)="([^"]*)"')


class Client:
    """One registry host and repository. deadline: time.monotonic() past which every call
    fails (None: none)."""

    def __init__(self, ref, rconf, deadline=None, push=False, pool=8):
        import requests
        from requests.adapters import HTTPAdapter
        self.ref = ref
        self.host = ref.api_host
        self.insecure = ref.host in (rconf.get("insecure") or []) or \
            self.host in (rconf.get("insecure") or [])
        self.base = "%s://%s/v2/%s" % ("http" if self.insecure else "https", self.host, ref.repo)
        self.deadline = deadline
        self.scope = "repository:%s:%s" % (ref.repo, "pull,push" if push else "pull")
        self.creds = credentials(rconf.get("auth_file"), ref.host)
        self.session = requests.Session()
        self.session.verify = ca_bundle(rconf.get("ca_file"))
        self.session.trust_env = False  # no proxies or netrc from the environment
        adapter = HTTPAdapter(pool_connections=2, pool_maxsize=max(pool, 2), max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.auth_header = None

    # --- plumbing

    def _timeout(self):
        if self.deadline is None:
            return (CONNECT_TIMEOUT, READ_TIMEOUT)
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise RegistryError("registry %s: past the pull deadline (registry.timeout)"
                                % self.host)
        return (min(CONNECT_TIMEOUT, left), min(READ_TIMEOUT, left))

    def check_deadline(self):
        self._timeout()

    def request(self, method, url, ok=(200,), **kw):
        """One call; on 401 authenticate the way the registry asks, once, and retry."""
        import requests
        headers = dict(kw.pop("headers", {}) or {})
        for attempt in (0, 1):
            if self.auth_header:
                headers["Authorization"] = self.auth_header
            try:
                r = self.session.request(method, url, headers=headers,
                                         timeout=self._timeout(), **kw)
            except requests.exceptions.SSLError as e:
                raise RegistryError("registry %s: TLS: %s (plain HTTP only for the hosts in "
                                    "registry.insecure)" % (self.host, _short(e))) from None
            except requests.exceptions.RequestException as e:
                raise RegistryError("registry %s: %s %s: %s"
                                    % (self.host, method, _path(url), _short(e))) from None
            if r.status_code == 401 and attempt == 0 and self._authenticate(r):
                r.close()
                if hasattr(kw.get("data"), "seek"):
                    kw["data"].seek(0)
                continue
            break
        if r.status_code not in ok:
            self._fail(method, url, r)
        return r

    def _fail(self, method, url, r):
        detail = ""
        try:
            errs = r.json().get("errors") or []
            detail = "; ".join("%s: %s" % (e.get("code"), e.get("message")) for e in errs[:3])
        except (ValueError, AttributeError):
            pass
        r.close()
        what = {401: "unauthorized (check registry.auth_file)", 403: "forbidden",
                404: "not found"}.get(r.status_code, "HTTP %d" % r.status_code)
        raise RegistryError("registry %s: %s %s: %s%s" % (self.host, method, _path(url), what,
                                                          (" (%s)" % detail) if detail else ""))

    def _authenticate(self, r):
        """Set the Authorization header a 401 asks for; False when we cannot answer it."""
        challenge = r.headers.get("WWW-Authenticate", "")
        scheme = challenge.split(" ", 1)[0].lower()
        if scheme == "basic":
            if not self.creds:
                return False
            self.auth_header = "Basic " + base64.b64encode(
                ("%s:%s" % self.creds).encode()).decode()
            return True
        if scheme == "bearer":
            params = dict(_PARAM.findall(challenge))
            realm = params.get("realm")
            if not realm:
                return False
            if not realm.startswith("https://") and not self.insecure:
                raise RegistryError("registry %s: its token realm %s is not https"
                                    % (self.host, realm))
            q = {"scope": self.scope}
            if params.get("service"):
                q["service"] = params["service"]
            import requests
            try:
                t = self.session.get(realm, params=q, auth=self.creds, timeout=self._timeout())
            except requests.exceptions.RequestException as e:
                raise RegistryError("registry %s: token from %s: %s"
                                    % (self.host, realm, _short(e))) from None
            if t.status_code != 200:
                raise RegistryError("registry %s: token from %s: HTTP %d (check "
                                    "registry.auth_file)" % (self.host, realm, t.status_code))
            body = t.json()
            token = body.get("token") or body.get("access_token")
            if not token:
                return False
            self.auth_header = "Bearer " + token
            return True
        return False

    # --- the API

    def get_manifest(self, reference):
        """(bytes, media type, digest) of a manifest, at most MANIFEST_LIMIT bytes."""
        r = self.request("GET", "%s/manifests/%s" % (self.base, reference), stream=True,
                         headers={"Accept": ", ".join(MANIFEST_TYPES)})
        data = read_limited(r, MANIFEST_LIMIT, "manifest %s" % reference)
        import hashlib
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise RegistryError("registry %s: manifest %s: the registry sent content whose "
                                "digest is %s" % (self.host, reference, digest))
        return data, r.headers.get("Content-Type", "").split(";")[0], digest

    def put_manifest(self, reference, data, media_type):
        r = self.request("PUT", "%s/manifests/%s" % (self.base, reference), data=data,
                         headers={"Content-Type": media_type}, ok=(201, 200))
        r.close()
        return r.headers.get("Docker-Content-Digest")

    def has_blob(self, digest):
        r = self.request("HEAD", "%s/blobs/%s" % (self.base, digest), ok=(200, 404))
        r.close()
        return r.status_code == 200

    def open_blob(self, digest):
        """The streaming response of a blob (the caller reads and closes it)."""
        return self.request("GET", "%s/blobs/%s" % (self.base, digest), stream=True)

    def upload_blob(self, digest, size, body):
        """Monolithic upload: POST for a session, PUT the bytes with the digest."""
        r = self.request("POST", "%s/blobs/uploads/" % self.base, ok=(202,))
        r.close()
        loc = r.headers.get("Location")
        if not loc:
            raise RegistryError("registry %s: upload: no Location" % self.host)
        if loc.startswith("/"):
            loc = "%s://%s%s" % (self.base.split(":", 1)[0], self.host, loc)
        sep = "&" if "?" in loc else "?"
        r = self.request("PUT", "%s%sdigest=%s" % (loc, sep, digest), data=body,
                         headers={"Content-Type": "application/octet-stream",
                                  "Content-Length": str(size)}, ok=(201,))
        r.close()

    def close(self):
        self.session.close()


def read_limited(r, limit, what):
    out = bytearray()
    try:
        for chunk in r.iter_content(1 << 16):
            out += chunk
            if len(out) > limit:
                raise RegistryError("%s: larger than %d bytes" % (what, limit))
    finally:
        r.close()
    return bytes(out)


def _short(e):
    s = str(e)
    return s if len(s) < 300 else s[:300] + "..."


def _path(url):
    return "/" + url.split("/", 3)[-1] if "://" in url else url
