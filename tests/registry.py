"""A tiny read-only OCI registry on 127.0.0.1 for the tests: it serves one OCI image layout
dir (ctrd.build_image_layout) under one repository name, in a thread.

The distribution API subset containerd's resolver and fetcher use: `GET /v2/`, manifests by
tag or digest (`HEAD` and `GET`, with the manifest's media type as Content-Type and
Docker-Content-Digest), and blobs by digest. Nothing can be pushed. containerd talks plain
http to a loopback registry without being told: 2.x tries https first and falls back to http
when the answer is an HTTP one (handled below). Every request is recorded in `requests`
(method, path), so a test can show what containerd fetched.
"""
import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MANIFEST_RE = re.compile(r"^/v2/(?P<name>.+)/manifests/(?P<ref>[^/]+)$")
BLOB_RE = re.compile(r"^/v2/(?P<name>.+)/blobs/(?P<digest>sha256:[0-9a-f]{64})$")


class Registry:
    def __init__(self, layout, name):
        self.layout = layout
        self.name = name
        self.requests = []
        with open(os.path.join(layout, "index.json")) as f:
            index = json.load(f)
        self.tags = {}      # tag -> manifest descriptor
        self.manifests = {}  # digest -> manifest descriptor
        for desc in index["manifests"]:
            self.manifests[desc["digest"]] = desc
            tag = desc.get("annotations", {}).get("org.opencontainers.image.ref.name")
            if tag:
                self.tags[tag] = desc
        registry = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # no stderr noise; requests are recorded
                pass

            def handle_one_request(self):
                # containerd tries https first on a loopback registry with a port, and falls
                # back to http when the answer to its TLS hello starts with "HTTP/" (what Go's
                # own http server sends); Python's would answer it without a status line
                if self.rfile.peek(1)[:1] == b"\x16":
                    registry.requests.append(("TLS", "hello"))
                    self.wfile.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                                     b"Connection: close\r\n\r\n")
                    self.close_connection = True
                    return
                super().handle_one_request()

            def do_GET(self):
                registry._serve(self, body=True)

            def do_HEAD(self):
                registry._serve(self, body=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.host = "127.0.0.1:%d" % self.port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                       name="registry-%d" % self.port)
        self.thread.start()

    def ref(self, tag):
        """The image reference containerd pulls: 127.0.0.1:PORT/NAME:TAG."""
        return "%s/%s:%s" % (self.host, self.name, tag)

    def _blob_path(self, digest):
        return os.path.join(self.layout, "blobs", "sha256", digest.split(":", 1)[1])

    def _serve(self, h, body):
        path = h.path.split("?", 1)[0]
        self.requests.append((h.command, path))
        if path in ("/v2", "/v2/"):
            return self._send(h, 200, b"{}", "application/json", body)
        m = MANIFEST_RE.match(path)
        if m and m.group("name") == self.name:
            ref = m.group("ref")
            desc = self.manifests.get(ref) if ref.startswith("sha256:") else self.tags.get(ref)
            if desc is None:
                return self._error(h, 404, "MANIFEST_UNKNOWN", body)
            return self._send_blob(h, desc["digest"], desc["mediaType"], body)
        m = BLOB_RE.match(path)
        if m and m.group("name") == self.name:
            return self._send_blob(h, m.group("digest"), "application/octet-stream", body)
        return self._error(h, 404, "NAME_UNKNOWN" if m else "UNSUPPORTED", body)

    def _send_blob(self, h, digest, media_type, body):
        try:
            with open(self._blob_path(digest), "rb") as f:
                data = f.read()
        except OSError:
            return self._error(h, 404, "BLOB_UNKNOWN", body)
        return self._send(h, 200, data, media_type, body, {"Docker-Content-Digest": digest})

    def _error(self, h, code, what, body):
        data = json.dumps({"errors": [{"code": what, "message": what.lower()}]}).encode()
        return self._send(h, code, data, "application/json", body)

    @staticmethod
    def _send(h, code, data, ctype, body, headers=None):
        h.send_response(code)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(data)))
        h.send_header("Docker-Distribution-API-Version", "registry/2.0")
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        if body:
            h.wfile.write(data)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)
