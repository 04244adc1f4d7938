"""A real OCI registry for the tests: Debian's docker-registry (CNCF distribution 2.8) on
127.0.0.1:<free port>, filesystem storage under the test's dir, htpasswd (bcrypt) auth,
plain HTTP. And CuttingProxy: a TCP proxy that drops the connection after N bytes of answer,
a registry that stops mid-pull. Stdlib only (and the docker-registry / htpasswd programs)."""
import base64
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request


# `htpasswd -Bbn grit grit-secret`, for machines without apache2-utils (the GPU device)
DEFAULT_HTPASSWD = b"grit:$2y$05$0yssU7lksoky1Nndkcj7j.QBGAeyMzz.cYXS6qk776/2phLpGhN7C\n"

# urllib without the environment's http_proxy: the registry is on loopback
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def basic_auth(user, password):
    return "Basic " + base64.b64encode(("%s:%s" % (user, password)).encode()).decode()


class Distribution:
    """Debian's docker-registry (CNCF distribution) on 127.0.0.1:<free port>, filesystem
    storage under workdir, htpasswd (bcrypt) auth on unless auth=False, plain HTTP.
    Started by the constructor (up when GET /v2/ answers: 401 with auth, 200 without);
    stop() ends it."""

    START_TIMEOUT = 20

    def __init__(self, workdir, user="grit", password="grit-secret", auth=True):
        os.makedirs(workdir, exist_ok=True)
        self.dir, self.user, self.password, self.auth = workdir, user, password, auth
        self.storage = os.path.join(workdir, "data")
        self.log = os.path.join(workdir, "registry.log")
        self.config = os.path.join(workdir, "config.yml")
        self.proc = self._log = None
        self.htpasswd = None
        if auth:
            self.htpasswd = os.path.join(workdir, "htpasswd")
            if (user, password) == ("grit", "grit-secret") and not shutil.which("htpasswd"):
                line = DEFAULT_HTPASSWD
            else:
                line = subprocess.run(["htpasswd", "-Bbn", user, password], capture_output=True,
                                      check=True, timeout=30).stdout
            with open(self.htpasswd, "wb") as f:
                f.write(line.strip() + b"\n")
        # the port is free when picked, not when the registry binds it: try another on a clash
        for attempt in range(3):
            self.host = "127.0.0.1:%d" % free_port()
            self._write_config()
            if self._start():
                return
            if "address already in use" not in self.log_tail().lower() or attempt == 2:
                tail = self.log_tail()
                self.stop()
                raise RuntimeError("docker-registry did not come up on %s in %ds:\n%s"
                                   % (self.host, self.START_TIMEOUT, tail))
            self.stop()

    def _write_config(self):
        conf = ["version: 0.1",
                "log:", "  level: info", "  accesslog:", "    disabled: false",
                "storage:", "  filesystem:", "    rootdirectory: %s" % self.storage,
                "  delete:", "    enabled: true",
                "http:", "  addr: %s" % self.host]
        if self.auth:
            conf += ["auth:", "  htpasswd:", "    realm: grit-test", "    path: %s" % self.htpasswd]
        with open(self.config, "w") as f:
            f.write("\n".join(conf) + "\n")

    def _start(self):
        """Starts the process; True once GET /v2/ gives the expected answer."""
        self._log = open(self.log, "ab")
        self.proc = subprocess.Popen(["docker-registry", "serve", self.config], stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        want = 401 if self.auth else 200
        deadline = time.monotonic() + self.START_TIMEOUT
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with OPENER.open("http://%s/v2/" % self.host, timeout=2) as r:
                    code = r.status
            except urllib.error.HTTPError as e:
                code = e.code
            except OSError:
                code = None
            if code == want:
                return True
            time.sleep(0.1)
        return False

    def ref(self, repo, tag="latest"):
        return "%s/%s:%s" % (self.host, repo, tag)

    def blob_path(self, digest):
        """The file holding that blob's bytes in the registry's storage."""
        algo, hexd = digest.split(":", 1)
        return os.path.join(self.storage, "docker", "registry", "v2", "blobs", algo,
                            hexd[:2], hexd, "data")

    def _auth(self):
        return basic_auth(self.user, self.password)

    def manifest(self, repo, tag):
        """The manifest's bytes as the registry serves them (OCI media type accepted)."""
        req = urllib.request.Request("http://%s/v2/%s/manifests/%s" % (self.host, repo, tag),
                                     headers={"Authorization": self._auth(), "Accept":
                                              "application/vnd.oci.image.manifest.v1+json"})
        with OPENER.open(req, timeout=30) as r:
            return r.read()

    def put_blob(self, repo, data):
        """Upload data as a blob of repo (monolithic POST + PUT); returns its digest."""
        import hashlib
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        req = urllib.request.Request("http://%s/v2/%s/blobs/uploads/" % (self.host, repo),
                                     method="POST", data=b"",
                                     headers={"Authorization": self._auth()})
        with OPENER.open(req, timeout=30) as r:
            loc = r.headers["Location"]
        if loc.startswith("/"):
            loc = "http://%s%s" % (self.host, loc)
        req = urllib.request.Request(loc + ("&" if "?" in loc else "?") + "digest=" + digest,
                                     method="PUT", data=data,
                                     headers={"Authorization": self._auth(),
                                              "Content-Type": "application/octet-stream"})
        with OPENER.open(req, timeout=60):
            pass
        return digest

    def put_manifest(self, repo, tag, data,
                     media_type="application/vnd.oci.image.manifest.v1+json"):
        req = urllib.request.Request("http://%s/v2/%s/manifests/%s" % (self.host, repo, tag),
                                     method="PUT", data=data,
                                     headers={"Authorization": self._auth(),
                                              "Content-Type": media_type})
        with OPENER.open(req, timeout=30):
            pass

    def write_auth_file(self, path, user=None, password=None, host=None):
        """A docker config.json ({"auths": {host: {"auth": base64(user:pass)}}}), mode 0600;
        host defaults to this registry's (a proxy's host, say, otherwise)."""
        cred = "%s:%s" % (user if user is not None else self.user,
                          password if password is not None else self.password)
        data = {"auths": {host or self.host: {"auth": base64.b64encode(cred.encode()).decode()}}}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # also when the file was there before
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        return path

    def blob_gets(self):
        """Digests of the blobs GET so far, in order (from its access log)."""
        with open(self.log, errors="replace") as f:
            text = f.read()
        return re.findall(r'"GET /v2/[^ ]+/blobs/(sha256:[0-9a-f]{64})', text)

    def log_tail(self, n=4000):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()[-n:]
        except OSError:
            return ""

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._log is not None:
            self._log.close()


class CuttingProxy:
    """A TCP proxy on 127.0.0.1:<free port> (host) to target_host ("HOST:PORT"). Once
    cut_after bytes of answers (server -> client, all connections together) went through,
    every connection is closed, at once: the client sees exactly cut_after bytes of answer
    in all and then the end of the stream, as from a registry that stops mid-pull.
    Connections made after that are closed at their first answer byte."""

    def __init__(self, target_host, cut_after):
        self.target, self.cut_after = target_host, cut_after
        self.sent = 0
        self.cut = False
        self.stopped = False
        self.lock = threading.Lock()
        self.conns = set()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.host = "127.0.0.1:%d" % self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        h, p = self.target.rsplit(":", 1)
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return  # stop(): the listening socket is shut down
            try:
                u = socket.create_connection((h, int(p)), timeout=10)
                u.settimeout(None)
            except OSError:
                c.close()
                continue
            with self.lock:
                if self.stopped:
                    c.close(), u.close()
                    return
                self.conns.update((c, u))
            threading.Thread(target=self._pipe, args=(c, u, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(u, c, True), daemon=True).start()

    def _pipe(self, src, dst, answer):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if answer:
                    with self.lock:
                        left = max(0, self.cut_after - self.sent)
                        data = data[:left]
                        self.sent += len(data)
                        if self.sent >= self.cut_after:
                            self.cut = True
                if data:
                    dst.sendall(data)
                if self.cut:
                    self._cut_all()
                    return
        except OSError:
            pass
        self._close(src, dst)

    def _close(self, *socks):
        with self.lock:
            for s in socks:
                self.conns.discard(s)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)  # wakes the other direction's recv
            except OSError:
                pass
            s.close()

    def _cut_all(self):
        with self.lock:
            socks = list(self.conns)
        self._close(*socks)

    def stop(self):
        with self.lock:
            self.stopped = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes accept(); close() alone would not
        except OSError:
            pass
        self.sock.close()
        self._cut_all()
