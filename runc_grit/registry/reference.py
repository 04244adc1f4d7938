"""Image references: HOST[:PORT]/REPO[:TAG][@sha256:DIGEST], optionally prefixed oci://."""
import re

from runc_grit.errors import UsageError

SCHEME = "oci://"
_HOST = r"(?P<host>(?:[a-zA-Z0-9-]+\.)*[a-zA-Z0-9-]+(?::[0-9]{1,5})?|\[[0-9a-fA-F:]+\](?::[0-9]{1,5})?)"
_REPO = r"(?P<repo>[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)"
_TAG = r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"
_DIGEST = r"(?:@(?P<digest>sha256:[0-9a-f]{64}))?"
_RE = re.compile("^" + _HOST + "/" + _REPO + _TAG + _DIGEST + "$")
# Docker Hub's name and where its API is
_ALIASES = {"docker.io": "registry-1.docker.io", "index.docker.io": "registry-1.docker.io"}


class Reference:
    __slots__ = ("host", "repo", "tag", "digest")

    def __init__(self, host, repo, tag=None, digest=None):
        self.host, self.repo, self.tag, self.digest = host, repo, tag, digest

    @property
    def api_host(self):
        return _ALIASES.get(self.host, self.host)

    @property
    def reference(self):
        """What the manifests endpoint takes: the digest when there is one, else the tag."""
        return self.digest or self.tag or "latest"

    def with_digest(self, digest):
        return Reference(self.host, self.repo, self.tag, digest)

    def __str__(self):
        s = "%s/%s" % (self.host, self.repo)
        if self.tag:
            s += ":" + self.tag
        if self.digest:
            s += "@" + self.digest
        return s

    def __repr__(self):
        return "Reference(%r)" % str(self)

    def __eq__(self, other):
        return isinstance(other, Reference) and str(self) == str(other)

    def __hash__(self):
        return hash(str(self))


def is_oci(source):
    return isinstance(source, str) and source.startswith(SCHEME)


def parse(text):
    """A Reference, or UsageError saying what is wrong. The host part is required (no
    implicit Docker Hub): a checkpoint names the registry it lives in."""
    if not isinstance(text, str):
        raise UsageError("image reference %r: not a string" % (text,))
    s = text[len(SCHEME):] if text.startswith(SCHEME) else text
    m = _RE.match(s)
    if not m or ("." not in m.group("host") and ":" not in m.group("host")
                 and m.group("host") != "localhost"):
        raise UsageError("image reference %r: expected [oci://]HOST[:PORT]/REPOSITORY[:TAG]"
                         "[@sha256:DIGEST]" % text)
    return Reference(m.group("host"), m.group("repo"), m.group("tag"), m.group("digest"))
