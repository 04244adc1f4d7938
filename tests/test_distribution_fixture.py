"""tests/distribution.py itself: the real registry (Debian's docker-registry) comes up with
auth, takes a blob through the distribution API and stores it where blob_path says;
CuttingProxy cuts a blob download short."""
import base64
import hashlib
import http.client
import json
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request

import pytest

from distribution import OPENER, CuttingProxy, Distribution, basic_auth

pytestmark = pytest.mark.integration


@pytest.fixture
def dist(tmp_path):
    if not shutil.which("docker-registry"):
        pytest.skip("docker-registry not installed (install/deps.sh installs it)")
    d = Distribution(str(tmp_path / "registry"))
    yield d
    d.stop()


def _req(url, method="GET", data=None, auth=None, headers=None):
    h = dict(headers or {})
    if auth:
        h["Authorization"] = basic_auth(*auth)
    return urllib.request.Request(url, data=data, method=method, headers=h)


def _push_blob(dist, repo, data):
    """POST an upload, PUT its bytes with the digest (monolithic upload); the digest."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    creds = (dist.user, dist.password)
    with OPENER.open(_req("http://%s/v2/%s/blobs/uploads/" % (dist.host, repo), "POST",
                          b"", creds), timeout=30) as r:
        assert r.status == 202
        location = urllib.parse.urljoin("http://%s/" % dist.host, r.headers["Location"])
    sep = "&" if "?" in location else "?"
    url = location + sep + "digest=" + urllib.parse.quote(digest)
    with OPENER.open(_req(url, "PUT", data, creds,
                          {"Content-Type": "application/octet-stream"}), timeout=30) as r:
        assert r.status == 201
        assert r.headers["Docker-Content-Digest"] == digest
    return digest


def test_registry_auth_push_and_storage_layout(dist, tmp_path):
    assert dist.host.startswith("127.0.0.1:")
    assert dist.ref("a/b") == dist.host + "/a/b:latest"
    base = "http://%s/v2/" % dist.host
    with pytest.raises(urllib.error.HTTPError) as e:
        OPENER.open(_req(base), timeout=10)
    assert e.value.code == 401
    e.value.close()
    with pytest.raises(urllib.error.HTTPError) as e:
        OPENER.open(_req(base, auth=(dist.user, "wrong")), timeout=10)
    assert e.value.code == 401
    e.value.close()
    with OPENER.open(_req(base, auth=(dist.user, dist.password)), timeout=10) as r:
        assert r.status == 200

    data = os.urandom(3000)
    digest = _push_blob(dist, "t", data)
    with open(dist.blob_path(digest), "rb") as f:
        assert f.read() == data
    with OPENER.open(_req("http://%s/v2/t/blobs/%s" % (dist.host, digest),
                          auth=(dist.user, dist.password)), timeout=10) as r:
        assert r.read() == data

    auth = dist.write_auth_file(str(tmp_path / "auth.json"))
    assert os.stat(auth).st_mode & 0o777 == 0o600
    with open(auth) as f:
        got = json.load(f)
    assert base64.b64decode(got["auths"][dist.host]["auth"]).decode() == "grit:grit-secret"
    assert dist.blob_gets()[-1] == digest


def test_registry_without_auth(tmp_path):
    if not shutil.which("docker-registry"):
        pytest.skip("docker-registry not installed (install/deps.sh installs it)")
    d = Distribution(str(tmp_path / "open"), auth=False)
    try:
        with OPENER.open("http://%s/v2/" % d.host, timeout=10) as r:
            assert r.status == 200
    finally:
        d.stop()
    assert d.proc.returncode is not None


def test_cutting_proxy_cuts_a_blob_download(dist):
    data = os.urandom(1 << 20)
    digest = _push_blob(dist, "t", data)
    proxy = CuttingProxy(dist.host, cut_after=64 << 10)
    try:
        h, p = proxy.host.split(":")
        conn = http.client.HTTPConnection(h, int(p), timeout=30)
        conn.request("GET", "/v2/t/blobs/" + digest,
                     headers={"Authorization": basic_auth(dist.user, dist.password)})
        r = conn.getresponse()
        assert r.status == 200 and int(r.headers["Content-Length"]) == len(data)
        got = b""
        try:
            while True:
                chunk = r.read(8192)  # b"" at the early end of the stream
                if not chunk:
                    break
                got += chunk
        except (http.client.IncompleteRead, OSError):
            pass  # or an error, as the client sees it
        conn.close()
        # the headers count too: less than 64 KiB of the body came through
        assert 0 < len(got) < 64 << 10 and data.startswith(got)
        assert proxy.sent == 64 << 10
        # after the cut, a new connection gets no answer at all
        conn = http.client.HTTPConnection(h, int(p), timeout=30)
        with pytest.raises((http.client.HTTPException, OSError)):
            conn.request("GET", "/v2/")
            conn.getresponse()
        conn.close()
    finally:
        proxy.stop()
    # stop() closed the listening socket
    with pytest.raises(OSError):
        http.client.HTTPConnection(h, int(p), timeout=5).request("GET", "/v2/")
