"""Real runc + real CRIU through runc-grit: lifecycle, checkpoint, restore-on-create."""
import json
import os
import socket
import subprocess
import threading
import time

import pytest

from conftest import RUNTIME
from runc_grit.cli.harness import PipeReader

pytestmark = pytest.mark.integration


def start_counter(genv, name, cid, annotations=None, **kw):
    b = genv.bundle(name, annotations=annotations, **kw)
    p, out = genv.grit.create_with_pipes(b, cid)
    assert p.returncode == 0, genv.grit.log_error(b)
    assert genv.grit.run(b, "start", cid).returncode == 0, genv.grit.log_error(b)
    return b, out


def checkpoint(genv, b, cid, image, *extra):
    p = genv.grit.run(b, "checkpoint", "--image-path", image, "--work-path", image + "-work",
                      *extra, cid)
    assert p.returncode == 0, (genv.grit.log_error(b), p.stderr)
    return p


def assert_continues(before, after):
    assert before and after, (before, after)
    assert after[0] == before[-1] + 1, "restarted or skipped: before=%s after=%s" % (before[-3:], after[:3])
    assert after == list(range(after[0], after[0] + len(after)))


# --- 1. lifecycle equals runc's --------------------------------------------------------------

def _norm_state(s, cid):
    s = dict(s)
    for k in ("pid", "created", "bundle", "id", "annotations", "rootfs"):
        s.pop(k, None)
    return s


def _lifecycle(genv, call, cid, b):
    """create/start/state/ps/exec/pause/resume/kill/delete/list; outputs normalized."""
    res = {}

    def run(argv, **kw):  # runc-grit with this test's config (runtime, state dir), not the node's
        return subprocess.run(argv, env=genv.env, **kw)

    r_out, w_out = os.pipe()
    p = run(call(b, "create", "--bundle", b, "--pid-file", os.path.join(b, "init.pid"), cid),
            stdin=subprocess.DEVNULL, stdout=w_out, stderr=w_out, timeout=60)
    os.close(w_out)
    reader = PipeReader(r_out)
    res["create"] = p.returncode
    res["state_created"] = _norm_state(json.loads(run(call(None, "state", cid), capture_output=True).stdout), cid)
    res["start"] = run(call(b, "start", cid), capture_output=True).returncode
    time.sleep(0.3)
    res["state"] = _norm_state(json.loads(run(call(None, "state", cid), capture_output=True).stdout), cid)
    ps = run(call(None, "ps", "--format", "json", cid), capture_output=True)
    res["ps"] = (ps.returncode, len(json.loads(ps.stdout)) >= 1)
    ex = run(call(None, "exec", cid, "echo", "hello from exec"), capture_output=True)
    res["exec"] = (ex.returncode, ex.stdout)
    res["pause"] = run(call(None, "pause", cid), capture_output=True).returncode
    res["state_paused"] = json.loads(run(call(None, "state", cid), capture_output=True).stdout)["status"]
    res["resume"] = run(call(None, "resume", cid), capture_output=True).returncode
    lst = run(call(None, "list", "--format", "json"), capture_output=True)
    res["list"] = sorted(c["status"] for c in json.loads(lst.stdout) if c["id"] == cid)
    res["kill"] = run(call(None, "kill", cid, "KILL"), capture_output=True).returncode
    time.sleep(0.5)
    res["state_killed"] = json.loads(run(call(None, "state", cid), capture_output=True).stdout)["status"]
    res["delete"] = run(call(None, "delete", cid), capture_output=True).returncode
    res["state_deleted"] = run(call(None, "state", cid), capture_output=True).returncode
    res["output_seen"] = reader.wait_for(lambda r: len(r.ints()) >= 1)
    return res


def test_lifecycle_same_as_runc(genv):
    b1 = genv.bundle("b-runc")
    b2 = genv.bundle("b-grit")
    direct = _lifecycle(genv, lambda b, *a: [RUNTIME, "--root", genv.root] + list(a), "direct", b1)
    via = _lifecycle(genv, lambda b, *a: genv.grit.argv(b, *a), "viagrit", b2)
    assert direct["create"] == 0 and direct["state"]["status"] == "running"
    assert via == direct
    assert not os.path.exists(os.path.join(genv.state_dir, "viagrit"))  # delete cleaned state


# --- 2. checkpoint and restore-on-create -----------------------------------------------------

def test_checkpoint_and_restore_from_annotation(genv):
    b1, out1 = start_counter(genv, "src", "src")
    assert out1.wait_for(lambda r: len(r.ints()) >= 5)
    image = os.path.join(genv.ckroot, "img1")
    checkpoint(genv, b1, "src", image)
    assert out1.closed()
    before = out1.ints()
    man = json.load(open(os.path.join(image, "grit-manifest.json")))
    assert man["container"]["id"] == "src" and man["criu"]["version"].startswith("4.")
    assert {i["name"] for i in man["images"]} >= {"inventory.img", "pstree.img"}
    assert genv.grit.state("src") is None  # runc destroys a checkpointed container
    genv.grit.run(b1, "delete", "src")
    assert not os.path.exists(os.path.join(genv.state_dir, "src"))

    b2, out2 = start_counter(genv, "dst", "dst", annotations={"grit.dev/restore-from": image},
                             rootfs_from=os.path.join(b1, "rootfs"))
    assert out2.wait_for(lambda r: len(r.ints()) >= 5)
    assert_continues(before, out2.ints())
    st = genv.grit.state("dst")
    assert st["status"] == "running"
    assert open(os.path.join(b2, "init.pid")).read().strip() == str(st["pid"])
    # the restored container behaves like any other
    ex = genv.runc("exec", "dst", "echo", "inside")
    assert ex.stdout == b"inside\n"
    assert genv.grit.run(b2, "kill", "dst", "KILL").returncode == 0
    time.sleep(0.5)
    assert genv.grit.run(b2, "delete", "dst").returncode == 0
    assert genv.grit.state("dst") is None
    assert not os.path.exists(os.path.join(genv.state_dir, "dst"))


def test_restore_chain_and_leave_running(genv):
    b1, out1 = start_counter(genv, "a", "a")
    out1.wait_for(lambda r: len(r.ints()) >= 3)
    img_lr = os.path.join(genv.ckroot, "lr")
    checkpoint(genv, b1, "a", img_lr, "--leave-running")
    n = len(out1.ints())
    assert out1.wait_for(lambda r: len(r.ints()) >= n + 3), "source stopped after --leave-running"
    assert genv.grit.state("a")["status"] == "running"
    genv.grit.run(b1, "delete", "--force", "a")
    # restore the leave-running image, checkpoint the restored container again, restore again
    b2, out2 = start_counter(genv, "b", "b", annotations={"grit.dev/restore-from": img_lr},
                             rootfs_from=os.path.join(b1, "rootfs"))
    out2.wait_for(lambda r: len(r.ints()) >= 3)
    img2 = os.path.join(genv.ckroot, "chain")
    checkpoint(genv, b2, "b", img2)
    out2.closed()
    genv.grit.run(b2, "delete", "b")
    b3, out3 = start_counter(genv, "c", "c", annotations={"grit.dev/restore-from": img2},
                             rootfs_from=os.path.join(b1, "rootfs"))
    out3.wait_for(lambda r: len(r.ints()) >= 3)
    assert_continues(out2.ints(), out3.ints())
    # restored tasks run in the new container's own cgroups, not in the ones they were dumped
    # from (else runc freezes an empty cgroup at the next checkpoint and CRIU cannot seize)
    assert genv.cgroups_missing("c") == []


def test_restore_grit_layout(genv):
    b1, out1 = start_counter(genv, "g-src", "g-src")
    out1.wait_for(lambda r: len(r.ints()) >= 3)
    pod_dir = os.path.join(genv.ckroot, "default", "trainer-pod")
    checkpoint(genv, b1, "g-src", os.path.join(pod_dir, "trainer", "checkpoint"))
    out1.closed()
    genv.grit.run(b1, "delete", "g-src")
    ann = {"grit.dev/checkpoint": pod_dir, "io.kubernetes.cri.container-name": "trainer",
           "io.kubernetes.cri.container-type": "container"}
    _, out2 = start_counter(genv, "g-dst", "g-dst", annotations=ann,
                            rootfs_from=os.path.join(b1, "rootfs"))
    out2.wait_for(lambda r: len(r.ints()) >= 3)
    assert_continues(out1.ints(), out2.ints())


def test_sandbox_container_is_never_restored(genv):
    ann = {"grit.dev/checkpoint": os.path.join(genv.ckroot, "pod"),
           "io.kubernetes.cri.container-type": "sandbox",
           "io.kubernetes.cri.container-name": "POD"}
    _, out = start_counter(genv, "sb", "sb", annotations=ann)
    assert out.wait_for(lambda r: len(r.ints()) >= 2)
    assert out.ints()[0] == 1  # started fresh, no restore attempted


class ConsoleSocket:
    """Receives the pty master from runc over --console-socket, like containerd's shim."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(1)
        self.master = None
        self.reader = None
        self._t = threading.Thread(target=self._accept, daemon=True)
        self._t.start()

    def _accept(self):
        conn, _ = self.sock.accept()
        _, fds, _, _ = socket.recv_fds(conn, 4096, 1)
        conn.close()
        self.master = fds[0]
        self.reader = PipeReader(os.dup(self.master))

    def wait(self, timeout=10):
        self._t.join(timeout)
        return self.reader


def test_terminal_container_console_socket(genv):
    b1 = genv.bundle("t-src", terminal=True)
    cs1 = ConsoleSocket(os.path.join(genv.dir, "cs1.sock"))
    p, _ = genv.grit.create_with_pipes(b1, "t-src", console_socket=cs1.path)
    assert p.returncode == 0, genv.grit.log_error(b1)
    assert genv.grit.run(b1, "start", "t-src").returncode == 0
    out1 = cs1.wait()
    assert out1.wait_for(lambda r: len(r.ints()) >= 3)
    image = os.path.join(genv.ckroot, "tty")
    checkpoint(genv, b1, "t-src", image)
    time.sleep(0.3)
    before = out1.ints()
    genv.grit.run(b1, "delete", "t-src")
    b2 = genv.bundle("t-dst", terminal=True, annotations={"grit.dev/restore-from": image},
                     rootfs_from=os.path.join(b1, "rootfs"))
    cs2 = ConsoleSocket(os.path.join(genv.dir, "cs2.sock"))
    p, _ = genv.grit.create_with_pipes(b2, "t-dst", console_socket=cs2.path)
    assert p.returncode == 0, genv.grit.log_error(b2)
    assert genv.grit.run(b2, "start", "t-dst").returncode == 0
    out2 = cs2.wait()
    assert out2 is not None and out2.wait_for(lambda r: len(r.ints()) >= 3)
    assert_continues(before, out2.ints())


# --- 3. bad input: clear error, nothing created, nothing lost ---------------------------------

def _refused(genv, name, annotation_value, why, setup=None):
    ann = {"grit.dev/restore-from": annotation_value}
    b = genv.bundle(name, annotations=ann)
    if setup:
        setup(b)
    p, _ = genv.grit.create_with_pipes(b, name)
    assert p.returncode != 0
    lines = [json.loads(ln) for ln in open(os.path.join(b, "log.json"))]
    assert lines[-1]["level"] == "error" and why in lines[-1]["msg"], lines[-1]
    assert genv.grit.state(name) is None
    assert genv.runc("list", "-q").stdout.decode().split() == [] or name not in genv.runc("list", "-q").stdout.decode().split()
    assert not os.path.exists(os.path.join(genv.state_dir, name))
    return lines[-1]["msg"]


@pytest.fixture
def real_image(genv):
    b, out = start_counter(genv, "img-src", "img-src")
    out.wait_for(lambda r: len(r.ints()) >= 2)
    image = os.path.join(genv.ckroot, "good")
    checkpoint(genv, b, "img-src", image, "--leave-running")
    return b, out, image


def test_bad_sources_refused_and_source_keeps_running(genv, real_image, tmp_path):
    b, out, image = real_image
    import shutil
    _refused(genv, "r1", os.path.join(genv.ckroot, "missing"), "no such directory")
    outside = str(tmp_path / "outside")
    shutil.copytree(image, outside)
    _refused(genv, "r2", outside, "outside the checkpoint roots")
    os.symlink(outside, os.path.join(genv.ckroot, "escape"))
    _refused(genv, "r3", os.path.join(genv.ckroot, "escape"), "resolves to")
    notcriu = os.path.join(genv.ckroot, "notcriu")
    os.makedirs(notcriu)
    open(os.path.join(notcriu, "README"), "w").close()
    _refused(genv, "r4", notcriu, "no grit-manifest.json")  # authenticated before read
    corrupt = os.path.join(genv.ckroot, "corrupt")
    shutil.copytree(image, corrupt)
    with open(os.path.join(corrupt, "inventory.img"), "r+b") as f:
        f.write(b"\0\0\0\0")
    _refused(genv, "r5", corrupt, "corrupt inventory.img")
    # a body-corrupt inventory: caught by the digests, or (re-signed with the node's key) when
    # the privilege check cannot decode it
    corrupt2 = os.path.join(genv.ckroot, "corrupt2")
    shutil.copytree(image, corrupt2)
    with open(os.path.join(corrupt2, "inventory.img"), "r+b") as f:
        f.seek(8)
        f.write(b"\xff" * 16)
    _refused(genv, "r6a", corrupt2, "inventory.img does not match its sha256")
    from runc_grit.checkpoint import integrity, manifest
    key = integrity.load_signer(os.path.join(genv.dir, "node.key"))

    def resign(d):
        m = manifest.load(d)
        m["images"] = manifest.list_images(d, digest=True)
        manifest.write(d, key.sign(m))
    resign(corrupt2)
    _refused(genv, "r6b", corrupt2, "restore source %s: its images cannot be decoded" % corrupt2)
    # a body-corrupt mm image (which runc-grit does not read), re-signed: CRIU refuses it,
    # and runc-grit cleans up
    corrupt3 = os.path.join(genv.ckroot, "corrupt3")
    shutil.copytree(image, corrupt3)
    with open(os.path.join(corrupt3, "mm-1.img"), "r+b") as f:
        f.seek(8)
        f.write(b"\xff" * 16)
    resign(corrupt3)
    _refused(genv, "r6", corrupt3, "restore from")
    nomanifest = os.path.join(genv.ckroot, "raw")
    shutil.copytree(image, nomanifest)
    os.unlink(os.path.join(nomanifest, "grit-manifest.json"))
    _refused(genv, "r7", nomanifest, "no grit-manifest.json")
    # nothing lost: the source container kept counting all along
    n = len(out.ints())
    assert out.wait_for(lambda r: len(r.ints()) >= n + 2)


def test_malformed_config_json_and_bad_yaml(genv):
    b = genv.bundle("m1")
    with open(os.path.join(b, "config.json"), "w") as f:
        f.write('{"ociVersion": "1.0.2", "process": {')
    p, _ = genv.grit.create_with_pipes(b, "m1")
    assert p.returncode == 1 and "malformed config.json" in genv.grit.log_error(b)
    assert genv.grit.state("m1") is None
    with open(genv.config_path, "w") as f:
        f.write("checkpoint_roots: [\n")
    b2 = genv.bundle("m2", annotations={"grit.dev/restore-from": "/x"})
    p, _ = genv.grit.create_with_pipes(b2, "m2")
    assert p.returncode == 1 and "bad YAML" in genv.grit.log_error(b2)
    assert genv.grit.state("m2") is None


def test_fresh_policy_starts_fresh(genv):
    ann = {"grit.dev/restore-from": os.path.join(genv.ckroot, "missing"),
           "grit.dev/restore-policy": "fresh"}
    b, out = start_counter(genv, "fresh", "fresh", annotations=ann)
    assert out.wait_for(lambda r: len(r.ints()) >= 2)
    assert out.ints()[0] == 1
    lines = [json.loads(ln) for ln in open(os.path.join(b, "log.json"))]
    assert any(ln["level"] == "warning" and "fresh" in ln["msg"] for ln in lines)


def test_fresh_policy_after_criu_failure(genv, real_image):
    b, out, image = real_image
    import shutil
    corrupt = os.path.join(genv.ckroot, "corrupt-fresh")
    shutil.copytree(image, corrupt)
    with open(os.path.join(corrupt, "inventory.img"), "r+b") as f:
        f.seek(8)
        f.write(b"\xff" * 16)
    genv.write_config({"on_restore_failure": "fresh"})
    b2, out2 = start_counter(genv, "fresh2", "fresh2", annotations={"grit.dev/restore-from": corrupt})
    assert out2.wait_for(lambda r: len(r.ints()) >= 2)
    assert out2.ints()[0] == 1


def test_claim_specific_environment_that_differs_is_refused(genv):
    """The restored process keeps the checkpoint's environment: a variable naming a device
    claim (DRA) that differs in the new container's spec is refused, with both values
    (config device_env: warn restores it, with a warning)."""
    b, out = start_counter(genv, "src", "src", env=["GPU_DEVICE_0_RESOURCE_CLAIM=claim-1"])
    assert out.wait_for(lambda r: len(r.ints()) >= 3)
    img = os.path.join(genv.ckroot, "img")
    checkpoint(genv, b, "src", img)
    out.closed()
    ann = {"grit.dev/restore-from": img}
    b2 = genv.bundle("dst", annotations=ann, rootfs_from=os.path.join(b, "rootfs"),
                     env=["GPU_DEVICE_0_RESOURCE_CLAIM=claim-2"])
    p, _ = genv.grit.create_with_pipes(b2, "dst")
    assert p.returncode != 0
    assert ("GPU_DEVICE_0_RESOURCE_CLAIM was 'claim-1', is 'claim-2' here"
            in genv.grit.log_error(b2)), genv.grit.log_error(b2)
    assert genv.grit.state("dst") is None
    genv.write_config({"device_env": "warn"})
    p, out2 = genv.grit.create_with_pipes(b2, "dst")
    assert p.returncode == 0, genv.grit.log_error(b2)
    assert genv.grit.run(b2, "start", "dst").returncode == 0
    assert out2.wait_for(lambda r: len(r.ints()) >= 2)
    assert_continues(out.ints(), out2.ints())
    with open(os.path.join(b2, "log.json")) as f:
        assert any("claim-specific" in json.loads(ln)["msg"] and json.loads(ln)["level"] ==
                   "warning" for ln in f)


def _with_cgroupns(b):
    path = os.path.join(b, "config.json")
    with open(path) as f:
        spec = json.load(f)
    spec["linux"]["namespaces"].append({"type": "cgroup"})
    with open(path, "w") as f:
        json.dump(spec, f)
    return b


def test_restored_container_keeps_its_own_cgroup_namespace_through_a_chain(genv):
    """A spec with a cgroup namespace of its own (runc's default on cgroup v2, containerd's
    CRI there): CRIU restores cgroup namespaces as part of its cgroup work, so in the
    "ignore" mode the restored tasks landed in the node's cgroup namespace (runc's bats
    `checkpoint and restore (cgroupns)` found it through the privilege check). Each restored
    init must be in a cgroup namespace of its own, twice over."""
    host = os.readlink("/proc/self/ns/cgroup")
    b1 = _with_cgroupns(genv.bundle("cgns-src"))
    p, out1 = genv.grit.create_with_pipes(b1, "cgns-src")
    assert p.returncode == 0, genv.grit.log_error(b1)
    assert genv.grit.run(b1, "start", "cgns-src").returncode == 0
    assert out1.wait_for(lambda r: len(r.ints()) >= 3)
    assert os.readlink("/proc/%d/ns/cgroup" % genv.grit.state("cgns-src")["pid"]) != host
    img, prev, prev_out = os.path.join(genv.ckroot, "one"), ("cgns-src", b1), out1
    for hop in ("cgns-a", "cgns-b"):
        checkpoint(genv, prev[1], prev[0], img)
        prev_out.closed()
        genv.grit.run(prev[1], "delete", prev[0])
        b = genv.bundle(hop, annotations={"grit.dev/restore-from": img},
                        rootfs_from=os.path.join(b1, "rootfs"))
        _with_cgroupns(b)
        p, out = genv.grit.create_with_pipes(b, hop)
        assert p.returncode == 0, genv.grit.log_error(b)
        assert genv.grit.run(b, "start", hop).returncode == 0
        assert out.wait_for(lambda r: len(r.ints()) >= 3)
        assert_continues(prev_out.ints(), out.ints())
        pid = genv.grit.state(hop)["pid"]
        assert os.readlink("/proc/%d/ns/cgroup" % pid) != host, "restored into the node's cgroupns"
        img, prev, prev_out = os.path.join(genv.ckroot, "two"), (hop, b), out
    genv.grit.run(prev[1], "kill", prev[0], "KILL")
    time.sleep(0.3)
    genv.grit.run(prev[1], "delete", "--force", prev[0])
