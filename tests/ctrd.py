"""A private containerd for the tests: its own root, state, sockets and namespace, started
from the containerd on PATH (1.6, 1.7 or 2.x: the config is written in the form that version
reads, config version 2 or 3), with runc-grit registered the way a node would register it.
Also builds a busybox OCI image (a layout dir and an archive) from this machine's files.
"""
import functools
import contextlib
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import tarfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
IMAGE = "docker.io/library/grit-busybox:test"
PAUSE = "docker.io/library/grit-pause:test"
ANNOTATIONS = '["grit.dev/*", "kybernate.io/*"]'


@functools.lru_cache(maxsize=None)
def _version_of(path):
    out = subprocess.run([path, "--version"], capture_output=True, text=True,
                         timeout=30).stdout
    # "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3"
    # "containerd github.com/containerd/containerd/v2 2.1.9+unknown"
    parts = out.split()
    m = re.match(r"v?(\d+)\.(\d+)(?:\.(\d+))?", parts[2] if len(parts) > 2 else "")
    if not m:
        raise RuntimeError("cannot read the version of %s from %r" % (path, out))
    return tuple(int(x or 0) for x in m.groups())


def containerd_version(binary="containerd"):
    """(major, minor, patch) of the containerd on PATH, or None when there is none."""
    path = shutil.which(binary)
    return _version_of(os.path.realpath(path)) if path else None


def config_version():
    """The config version the containerd on PATH is written for: 3 for 2.x, else 2."""
    v = containerd_version()
    return 3 if v and v[0] >= 2 else 2


def cri_plugins(version=None):
    """The CRI plugin tables of a config version: (images, runtime, grpc). containerd 2.x split
    1.x's one `io.containerd.grpc.v1.cri` into an image service, a runtime and the gRPC server."""
    if (version or config_version()) >= 3:
        return ("io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime",
                "io.containerd.grpc.v1.cri")
    return ("io.containerd.grpc.v1.cri",) * 3


def runtime_toml(name, binary=None, version=None, annotations=True):
    """A CRI runtime handler: runc's shim (io.containerd.runc.v2), BinaryName = binary."""
    rt = '%s.containerd.runtimes.%s' % ('[plugins."%s"' % cri_plugins(version)[1], name)
    out = '%s]\n  runtime_type = "io.containerd.runc.v2"\n' % rt
    if annotations:
        out += "  pod_annotations = %s\n  container_annotations = %s\n" % (ANNOTATIONS,
                                                                          ANNOTATIONS)
    if binary:
        out += '%s.options]\n  BinaryName = "%s"\n' % (rt, binary)
    return out


def cri_toml(d, wrapper, sandbox_image=PAUSE, version=None):
    """The CRI plugin's settings for a private containerd in d: host-network pods only (CNI
    dirs empty), the sandbox image imported (no pull), runtime handlers runc and grit
    (BinaryName = wrapper), the way the node installer registers it."""
    version = version or config_version()
    images, runtime, grpc = ('[plugins."%s"' % p for p in cri_plugins(version))
    v = containerd_version() or (0, 0, 0)
    # 2.1 reads the CNI binary dirs as a list (bin_dir is deprecated there)
    cni_bin = ('bin_dirs = ["%s/cni-bin"]' if v >= (2, 1) else 'bin_dir = "%s/cni-bin"') % d
    if version >= 3:
        out = f"""
{images}]
  snapshotter = "overlayfs"
{images}.pinned_images]
  sandbox = "{sandbox_image}"
{grpc}]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
{runtime}]
"""
    else:
        out = f"""
{grpc}]
  sandbox_image = "{sandbox_image}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"""
    out += f"""  # root lacks CAP_SYS_RESOURCE here: the sandbox oom_score_adj -998 fails runc init
  restrict_oom_score_adj = true
{runtime}.cni]
  {cni_bin}
  conf_dir = "{d}/cni-conf"
{runtime}.containerd]
  default_runtime_name = "runc"
"""
    if version < 3:
        out += '  snapshotter = "overlayfs"\n'
    return out + runtime_toml("runc", None, version, annotations=False) + runtime_toml(
        "grit", wrapper, version)


def _blob(layout, data, media_type):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with open(os.path.join(layout, "blobs", "sha256", digest[7:]), "wb") as f:
        f.write(data)
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def build_image_archive(path, name=IMAGE, cmd=("sh",)):
    """An OCI image archive (oci-layout + index.json) with one layer: a busybox rootfs.
    The layout it was made from stays in path + ".d/layout" (registry.Registry serves it)."""
    layout = build_image_layout(path + ".d", name, cmd)
    with tarfile.open(path, "w") as t:
        for n in sorted(os.listdir(layout)):
            t.add(os.path.join(layout, n), arcname=n)
    return path


def build_image_layout(work, name=IMAGE, cmd=("sh",), rootfs=None):
    """An OCI image layout dir (work/layout) with one image: a busybox rootfs layer (or the
    given rootfs dir)."""
    from runc_grit.oci.bundle import make_rootfs
    rootfs = rootfs or make_rootfs(os.path.join(work, "rootfs"))
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
    return layout


def grit_wrapper(path, record=None):
    """An executable that runs the installed runc-grit (what BinaryName points at). With
    record, each call's argv is first appended to that file, one line each."""
    from conftest import GRIT_BIN
    rec = ""
    if record:
        rec = "printf '%%s\\n' \"$*\" >> %s\n" % record
    with open(path, "w") as f:
        f.write("#!/bin/sh\n%sexec %s \"$@\"\n" % (rec, GRIT_BIN))
    os.chmod(path, 0o755)
    return path


def recorded(record):
    """The argv lines a recording grit_wrapper wrote, each as a list of words."""
    try:
        with open(record) as f:
            return [ln.split() for ln in f if ln.strip()]
    except OSError:
        return []


class Containerd:
    """containerd --config <private config>; ctr against its socket, in its own namespace."""

    def __init__(self, d, env, extra_toml="", disabled=("io.containerd.grpc.v1.cri",), ns=None):
        self.dir = d
        self.sock = os.path.join(d, "c.sock")
        self.ns = ns or "grit-" + uuid.uuid4().hex[:8]
        self.config = os.path.join(d, "containerd.toml")
        self.version = containerd_version()
        cv = config_version()
        dis = ", ".join('"%s"' % p for p in disabled)
        # containerd 2.x starts NRI by default, on /var/run/nri/nri.sock: keep it in d
        nri = ('[plugins."io.containerd.nri.v1.nri"]\n  socket_path = "%s/nri.sock"\n' % d
               if cv >= 3 else "")
        with open(self.config, "w") as f:
            f.write('version = %d\nroot = "%s/root"\nstate = "%s/state"\n'
                    'disabled_plugins = [%s]\n[grpc]\n  address = "%s"\n'
                    '[ttrpc]\n  address = "%s.ttrpc"\n[metrics]\n  address = ""\n%s%s\n'
                    % (cv, d, d, dis, self.sock, self.sock, nri, extra_toml))
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
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
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
        for m in mounts_under(self.dir):  # e.g. a sandbox's shm left by a failed teardown
            subprocess.run(["umount", "-l", m], capture_output=True)
        try:  # the runc shim's per-namespace root, empty once every task is deleted
            os.rmdir(os.path.join("/run/containerd/runc", self.ns))
        except OSError:
            pass
        remove_empty_cgroups(self.ns)


def remove_empty_cgroups(name):
    """containerd puts a task's cgroup under /<namespace>/ and never removes that parent:
    take it away (in each hierarchy) once it is empty."""
    root = "/sys/fs/cgroup"
    dirs = [os.path.join(root, name)]
    if not os.path.exists(os.path.join(root, "cgroup.controllers")):  # v1 / hybrid
        dirs = [os.path.join(root, h, name) for h in os.listdir(root)]
    for d in dirs:
        try:
            os.rmdir(d)
        except OSError:
            pass


def mounts_under(path):
    """Mount points under path (this mount namespace), deepest first."""
    out = []
    prefix = os.path.realpath(path).rstrip("/") + "/"
    with open("/proc/self/mountinfo") as f:
        for ln in f:
            mp = ln.split()[4].replace("\\040", " ")
            if mp.startswith(prefix):
                out.append(mp)
    return sorted(set(out), key=len, reverse=True)


def cri_containerd(d, env, wrapper, images=((IMAGE, ("sh",)), (PAUSE, ("sleep", "2147483647")))):
    """A private containerd in d with its CRI plugin on (namespace k8s.io, what kubelet uses),
    runtime handler grit = wrapper, and the images imported (name, cmd) into that namespace."""
    c = Containerd(d, env, extra_toml=cri_toml(d, wrapper), disabled=(), ns="k8s.io")
    for name, cmd in images:
        arch = build_image_archive(os.path.join(d, name.split("/")[-1] + ".tar"), name, cmd)
        p = c.ctr("images", "import", arch)
        if p.returncode != 0:
            c.stop()
            raise RuntimeError("ctr images import %s: %s" % (name, p.stderr.decode()))
    return c


@contextlib.contextmanager
def cri_session(c, grit_env):
    """A CRI client of containerd c (tests/cri_client.py); at the end every pod it ran
    (client.pods) is removed and containerd stopped."""
    from cri_client import CRI
    try:
        client = CRI(c.sock)
        client.version()
        client.ctrd, client.grit, client.pods = c, grit_env, []
        yield client
        for pod in client.pods:
            try:
                client.remove_pod(pod)
            except Exception:  # noqa: BLE001 - best effort, containerd stops next
                pass
    finally:
        c.stop()
