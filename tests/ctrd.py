"""A private containerd for the tests: its own root, state, sockets and namespace, started
from the distro's binary, with runc-grit registered the way a node would register it.
Also builds a busybox OCI image archive from this machine's files (no registry).
"""
import gzip
import hashlib
import io
import json
import os
import signal
import subprocess
import tarfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
IMAGE = "docker.io/library/grit-busybox:test"


def _blob(layout, data, media_type):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with open(os.path.join(layout, "blobs", "sha256", digest[7:]), "wb") as f:
        f.write(data)
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def build_image_archive(path, name=IMAGE, cmd=("sh",)):
    """An OCI image archive (oci-layout + index.json) with one layer: a busybox rootfs."""
    from runc_grit.oci.bundle import make_rootfs
    work = path + ".d"
    rootfs = make_rootfs(os.path.join(work, "rootfs"))
    layout = os.path.join(work, "layout")
    os.makedirs(os.path.join(layout, "blobs", "sha256"))
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as t:
        for d, dirs, files in os.walk(rootfs):
            dirs.sort()
            for n in sorted(dirs) + sorted(files):
                full = os.path.join(d, n)
                t.add(full, arcname=os.path.relpath(full, rootfs), recursive=False)
    layer_tar = raw.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_tar).hexdigest()
    layer = _blob(layout, gzip.compress(layer_tar, mtime=0),
                  "application/vnd.oci.image.layer.v1.tar+gzip")
    config = _blob(layout, json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": list(cmd), "Env": ["PATH=/bin"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode(),
        "application/vnd.oci.image.config.v1+json")
    manifest = _blob(layout, json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config, "layers": [layer]}).encode(),
        "application/vnd.oci.image.manifest.v1+json")
    manifest["annotations"] = {"io.containerd.image.name": name,
                               "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1]}
    manifest["platform"] = {"architecture": "amd64", "os": "linux"}
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [manifest]}, f)
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    with tarfile.open(path, "w") as t:
        for n in sorted(os.listdir(layout)):
            t.add(os.path.join(layout, n), arcname=n)
    return path


def grit_wrapper(path, env_path=None):
    """An executable that runs the installed runc-grit (what BinaryName points at)."""
    from conftest import GRIT_BIN
    with open(path, "w") as f:
        f.write("#!/bin/sh\nexec %s \"$@\"\n" % GRIT_BIN)
    os.chmod(path, 0o755)
    return path


class Containerd:
    """containerd --config <private config>; ctr against its socket, in its own namespace."""

    def __init__(self, d, env, extra_toml="", disabled=("io.containerd.grpc.v1.cri",), ns=None):
        self.dir = d
        self.sock = os.path.join(d, "c.sock")
        self.ns = ns or "grit-" + uuid.uuid4().hex[:8]
        self.config = os.path.join(d, "containerd.toml")
        dis = ", ".join('"%s"' % p for p in disabled)
        with open(self.config, "w") as f:
            f.write('version = 2\nroot = "%s/root"\nstate = "%s/state"\n'
                    'disabled_plugins = [%s]\n[grpc]\n  address = "%s"\n'
                    '[ttrpc]\n  address = "%s.ttrpc"\n[metrics]\n  address = ""\n%s\n'
                    % (d, d, dis, self.sock, self.sock, extra_toml))
        self.env = dict(env)
        self.log = open(os.path.join(d, "containerd.log"), "wb")
        self.proc = subprocess.Popen(["containerd", "--config", self.config], env=self.env,
                                     stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        end = time.time() + 30
        while time.time() < end:
            if os.path.exists(self.sock) and self.ctr("version").returncode == 0:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError("containerd did not start: %s" % self.log_tail())

    def log_tail(self, n=4000):
        with open(os.path.join(self.dir, "containerd.log"), "rb") as f:
            return f.read()[-n:].decode("utf-8", "replace")

    def ctr(self, *args, timeout=120):
        return subprocess.run(["ctr", "-a", self.sock, "-n", self.ns] + list(args),
                              capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def tasks(self):
        p = self.ctr("task", "ls")
        out = {}
        for ln in p.stdout.decode().splitlines()[1:]:
            parts = ln.split()
            if len(parts) >= 3:
                out[parts[0]] = parts[2]
        return out

    def _shims(self):
        """pids of the shims this containerd started (their argv names our socket)."""
        out = []
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open("/proc/%s/cmdline" % name, "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"containerd-shim-runc-v2") and self.sock.encode() in argv:
                out.append(int(name))
        return out

    def stop(self):
        for cid in list(self.tasks()):
            self.ctr("task", "kill", "-s", "SIGKILL", cid)
        time.sleep(0.5)
        for cid in list(self.tasks()):
            self.ctr("task", "delete", "-f", cid)
        for ln in self.ctr("container", "ls", "-q").stdout.decode().split():
            self.ctr("container", "delete", ln)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for pid in self._shims():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.log.close()
        subprocess.run(["umount", "-R", os.path.join(self.dir, "root")], capture_output=True)
        try:  # the runc shim's per-namespace root, empty once every task is deleted
            os.rmdir(os.path.join("/run/containerd/runc", self.ns))
        except OSError:
            pass
