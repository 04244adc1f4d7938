"""runc-grit in front of gVisor's runsc: the argv translation (pure, table tests), gVisor image
checks, and real runsc on the CPU: checkpoint through runc-grit, restore-on-create via the
annotation, and the CUDA two-step inside the sandbox with a recording fake helper."""
import json
import os
import shutil
import subprocess

import pytest

from runc_grit import argv as A
from runc_grit.checkpoint import images
from runc_grit.errors import GritError
from runc_grit.gpu import sandbox
from runc_grit.runtimes import runsc as gvisor

from conftest import FAKES, Env
from test_integration_runc import assert_continues

CTRD_GLOBALS = ["--root", "/run/containerd/runc/k8s.io", "--log", "/b/log.json",
                "--log-format", "json"]


def _inv(*args):
    return A.parse(list(args))


# --- argv translation (pure) ---------------------------------------------------------------

@pytest.mark.parametrize("argv, want, dropped", [
    # containerd's create -> runsc restore: globals kept, --detach first, image last
    (CTRD_GLOBALS + ["create", "--bundle", "/b", "--pid-file", "/b/init.pid",
                     "--console-socket", "/s.sock", "c1"],
     CTRD_GLOBALS + ["restore", "--detach", "--bundle", "/b", "--pid-file", "/b/init.pid",
                     "--console-socket", "/s.sock", "--image-path", "/img", "c1"], []),
    # runc-only create flags are dropped and reported
    (["create", "--no-pivot", "--no-new-keyring", "--preserve-fds", "2", "-b", "/b", "c1"],
     ["restore", "--detach", "--bundle", "/b", "--image-path", "/img", "c1"],
     ["no-pivot", "no-new-keyring", "preserve-fds"]),
    # runsc has no --criu; runc's --rootless auto has no runsc equivalent
    (["--criu", "/usr/sbin/criu", "--rootless", "auto", "--systemd-cgroup", "create", "c1"],
     ["--systemd-cgroup", "restore", "--detach", "--image-path", "/img", "c1"],
     ["criu", "rootless"]),
    (["--rootless=true", "create", "--pid-file=/p", "c1"],
     ["--rootless", "restore", "--detach", "--pid-file", "/p", "--image-path", "/img", "c1"], []),
    # run in the foreground stays in the foreground; run -d detaches
    (["run", "--bundle", "/b", "c1"], ["restore", "--bundle", "/b", "--image-path", "/img", "c1"],
     []),
    (["run", "-d", "--keep", "c1"], ["restore", "--detach", "--image-path", "/img", "c1"],
     ["keep"]),
])
def test_create_to_runsc_restore(argv, want, dropped):
    inv = _inv(*argv)
    out, gone = gvisor.create_to_restore(inv, "/img", detach=inv.command == "create"
                                         or inv.has("detach"))
    assert out == want
    assert sorted(gone) == sorted(dropped)


@pytest.mark.parametrize("argv, want, dropped", [
    # containerd's checkpoint: CRIU tuning flags mean nothing to runsc
    (CTRD_GLOBALS + ["checkpoint", "--image-path", "/img", "--work-path", "/w",
                     "--tcp-established", "--ext-unix-sk", "--shell-job", "--file-locks",
                     "--empty-ns", "network", "--manage-cgroups-mode", "soft", "c1"],
     CTRD_GLOBALS + ["checkpoint", "--image-path", "/img", "c1"],
     ["work-path", "tcp-established", "ext-unix-sk", "shell-job", "file-locks", "empty-ns",
      "manage-cgroups-mode"]),
    (["checkpoint", "--leave-running", "--image-path=/img", "c1"],
     ["checkpoint", "--leave-running", "--image-path", "/img", "c1"], []),
    (["create", "--bundle", "/b", "--no-pivot", "c1"], ["create", "--bundle", "/b", "c1"],
     ["no-pivot"]),
    (["restore", "-d", "--image-path", "/img", "--work-path", "/w", "--no-subreaper", "c1"],
     ["restore", "--detach", "--image-path", "/img", "c1"], ["work-path", "no-subreaper"]),
])
def test_to_runsc(argv, want, dropped):
    out, gone = gvisor.to_runsc(_inv(*argv))
    assert out == want
    assert sorted(gone) == sorted(dropped)


@pytest.mark.parametrize("flag, why", [
    (["--pre-dump"], "no pre-dump"), (["--parent-path", "/p"], "incremental"),
    (["--lazy-pages"], "lazy"), (["--page-server", "h:1"], "page server"),
    (["--status-fd", "3"], "status-fd"),
])
def test_runsc_checkpoint_refuses_what_runsc_cannot_do(flag, why):
    with pytest.raises(GritError, match=why):
        gvisor.to_runsc(_inv("checkpoint", "--image-path", "/i", *flag, "c1"))


def test_runsc_strategy():
    from runc_grit.checkpoint import compat
    from runc_grit.runtimes.delegate import Delegate
    from runc_grit.runtimes.selection import select
    s = select(Delegate.at("/usr/local/sbin/runsc"))
    assert isinstance(s, gvisor.Runsc) and s.image_format == "gVisor"
    assert s.checkpoint_problem() is None
    assert select(Delegate.at("/usr/sbin/runc")).image_format == "CRIU"
    assert s.globals(A.parse(["--criu", "c", "--root", "/r", "state"]).globals) == ["--root", "/r"]
    # a runsc checkpoint is refused by a runc node and the other way round
    m = {"runtime": {"name": "runsc"}, "criu": {}, "node": {}, "container": {}}
    assert "gVisor images" in compat.problems(m, {"runtime": "runc"}, {})[0]
    m["runtime"]["name"] = "runc"
    assert "CRIU images" in compat.problems(m, {"runtime": "runsc"}, {})[0]


def test_gvisor_image_checks(tmp_path):
    d = tmp_path / "img"
    d.mkdir()
    with pytest.raises(GritError, match="not a gVisor .runsc. image dir"):
        images.check_gvisor(str(d))
    (d / "checkpoint.img").write_bytes(b"\x58\x31\x31\x16CRIU")
    with pytest.raises(GritError, match="no gVisor state-file magic"):
        images.check_gvisor(str(d))
    (d / "checkpoint.img").write_bytes(images.GVISOR_MAGIC + b"\0" * 64)
    images.check_gvisor(str(d))
    os.symlink("/etc/shadow", d / "pages.img")
    with pytest.raises(GritError, match="symlink"):
        images.check_gvisor(str(d))


@pytest.mark.parametrize("spec, flags, gpu", [
    ({}, [], False),
    ({}, ["--nvproxy"], True),
    ({}, ["--nvproxy=true"], True),
    ({"linux": {"devices": [{"path": "/dev/nvidia0"}]}}, [], True),
    ({"process": {"env": ["NVIDIA_VISIBLE_DEVICES=all"]}}, [], True),
    ({"process": {"env": ["NVIDIA_VISIBLE_DEVICES=void"]}}, [], False),
    ({"annotations": {"cdi.k8s.io/gpu": "nvidia.com/gpu=0"}}, [], True),
])
def test_gpu_container_detection(spec, flags, gpu):
    assert sandbox.gpu_container(spec, flags) is gpu


# --- real runsc ----------------------------------------------------------------------------

class RunscEnv(Env):
    """A private runc-grit setup whose runtime is runsc (optionally through the recorder)."""

    def __init__(self, d, extra=None):
        self.record = os.path.join(d, "rec", "calls.log")
        os.makedirs(os.path.dirname(self.record))
        conf = {"runtime": "runsc", "runtime_flags": ["--network=none"]}
        conf.update(extra or {})
        super().__init__(d, conf)

    def use_recorder(self):
        """runsc through tests/fakes/runsc-recorder, logging into the same file as the
        sandbox's fake helper."""
        bindir = os.path.join(self.dir, "bin")
        os.makedirs(bindir)
        os.symlink(os.path.join(FAKES, "runsc-recorder"), os.path.join(bindir, "runsc"))
        self.env.update(REAL_RUNSC=shutil.which("runsc"), RUNSC_RECORD=self.record)
        self.grit.env.update(self.env)
        self.write_config({"runtime": os.path.join(bindir, "runsc"),
                           "runtime_flags": ["--network=none"]})

    def runc(self, *args, **kw):
        return subprocess.run(["runsc", "--root", self.root, "--network=none"] + list(args),
                              capture_output=True, timeout=60, **kw)

    def cleanup(self):
        for c in json.loads(self.runc("list", "--format", "json").stdout or b"[]") or []:
            self.runc("delete", "--force", c["id"])

    def gpu_bundle(self, name, helper=True, rootfs_from=None, annotations=None):
        b = self.bundle(name, args=["sh", "-c", WORKLOAD], rootfs_from=rootfs_from,
                        annotations=annotations, env=("NVIDIA_VISIBLE_DEVICES=all",))
        with open(os.path.join(b, "config.json")) as f:
            spec = json.load(f)
        spec["mounts"].append({"destination": "/grit-rec", "type": "bind",
                               "source": os.path.dirname(self.record),
                               "options": ["rbind", "rw"]})
        with open(os.path.join(b, "config.json"), "w") as f:
            json.dump(spec, f)
        dest = os.path.join(b, "rootfs", "usr", "local", "bin", "cuda-checkpoint")
        if helper:
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            for a in ("tr", "grep"):
                if not os.path.lexists(os.path.join(b, "rootfs", "bin", a)):
                    os.symlink("busybox", os.path.join(b, "rootfs", "bin", a))
            shutil.copy2(os.path.join(FAKES, "sandbox-cuda-checkpoint"), dest)
        elif os.path.lexists(dest):
            os.unlink(dest)
        return b

    def calls(self):
        try:
            with open(self.record) as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []

    def in_sandbox(self, cid, *cmd):
        p = self.runc("exec", cid, *cmd)
        return p.returncode, p.stdout.decode().strip()


# Two CUDA processes, a parent and its child (FAKE_CUDA=1 in their environment only), and a
# counter that is not a CUDA process.
WORKLOAD = ('FAKE_CUDA=1 sh -c "sleep 100000 & wait" & '
            'i=0; while true; do i=$((i+1)); echo "$i"; sleep 0.1; done')


@pytest.fixture
def renv(workdir):
    if not shutil.which("runsc"):
        if os.environ.get("CI") == "true":
            pytest.fail("CI lacks runsc (install/deps.sh installs it)")
        pytest.skip("runsc not installed")
    e = RunscEnv(workdir)
    yield e
    e.cleanup()


def _wait(pred, timeout=10.0):
    import time
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.1)
    return pred()


def _start(e, b, cid):
    p, out = e.grit.create_with_pipes(b, cid)
    assert p.returncode == 0, e.grit.log_error(b)
    assert e.grit.run(b, "start", cid).returncode == 0, e.grit.log_error(b)
    return out


def _checkpoint(e, b, cid, img, *extra):
    return e.grit.run(b, "checkpoint", "--image-path", img, "--work-path", img + "-work",
                      *extra, cid)


@pytest.mark.integration
def test_runsc_checkpoint_and_restore_on_create(renv):
    e = renv
    b = e.bundle("src")
    out = _start(e, b, "s1")
    assert out.wait_for(lambda r: len(r.ints()) >= 5)
    img = os.path.join(e.ckroot, "img")
    p = _checkpoint(e, b, "s1", img)
    assert p.returncode == 0, e.grit.log_error(b)
    assert out.closed(), "the source sandbox still writes after a checkpoint without leave-running"
    before = out.ints()
    m = json.load(open(os.path.join(img, "grit-manifest.json")))
    assert m["runtime"]["name"] == "runsc" and m["criu"]["version"] is None
    assert {i["name"] for i in m["images"]} >= {"checkpoint.img", "spec.dump"}
    assert "gpu" not in m  # no GPU container: no helper was asked for
    # the source has stopped, as after runc's dump (runsc itself would still say "paused":
    # its sandbox was killed while paused); a plain delete removes it
    assert e.grit.state("s1")["status"] == "stopped"
    assert e.runc("state", "s1").returncode == 0
    p = e.grit.run(b, "delete", "s1")
    assert p.returncode == 0, (p.stderr, e.grit.log_error(b))
    assert e.grit.state("s1") is None and e.runc("state", "s1").returncode != 0
    assert not os.path.exists(os.path.join(e.state_dir, "s1"))

    b2 = e.bundle("dst", annotations={"grit.dev/restore-from": img})
    p, out2 = e.grit.create_with_pipes(b2, "d1")
    assert p.returncode == 0, e.grit.log_error(b2)
    assert e.grit.run(b2, "start", "d1").returncode == 0, e.grit.log_error(b2)
    assert out2.wait_for(lambda r: len(r.ints()) >= 3)
    assert_continues(before, out2.ints())
    st = e.grit.state("d1")
    assert st["status"] == "running"
    # the rest of the lifecycle passes through to runsc
    assert e.grit.run(b2, "kill", "d1", "KILL").returncode == 0
    assert out2.closed(10)
    assert e.grit.run(b2, "delete", "--force", "d1").returncode == 0
    assert e.grit.state("d1") is None
    assert not os.path.exists(os.path.join(e.state_dir, "d1"))


@pytest.mark.integration
def test_runsc_leave_running_and_refusals(renv):
    e = renv
    b = e.bundle("src")
    out = _start(e, b, "s1")
    assert out.wait_for(lambda r: len(r.ints()) >= 3)
    img = os.path.join(e.ckroot, "img")
    p = _checkpoint(e, b, "s1", img, "--leave-running")
    assert p.returncode == 0, e.grit.log_error(b)
    n = len(out.ints())
    assert out.wait_for(lambda r: len(r.ints()) >= n + 3), "the source stopped"
    at = json.load(open(os.path.join(img, "grit-manifest.json")))
    assert at["container"]["leave_running"] is True
    # pre-dump: refused before runsc runs, the container untouched
    p = e.grit.run(b, "checkpoint", "--pre-dump", "--image-path", img + "-pre", "s1")
    assert p.returncode != 0 and "no pre-dump" in e.grit.log_error(b)
    assert not os.path.exists(img + "-pre")
    # a CRIU image dir is not a gVisor one: refused before runsc runs
    criu_dir = os.path.join(e.ckroot, "criu")
    os.makedirs(criu_dir)
    with open(os.path.join(criu_dir, "inventory.img"), "wb") as f:
        f.write(b"\x16\x31\x31\x58" + b"\0" * 60)
    b3 = e.bundle("bad", annotations={"grit.dev/restore-from": criu_dir})
    p, _ = e.grit.create_with_pipes(b3, "bad")
    assert p.returncode != 0  # unsigned: refused before anything is read
    assert "not signed" in e.grit.log_error(b3)
    e.write_config({"runtime": "runsc", "runtime_flags": ["--network=none"],
                    "require_signature": False, "accept_raw_criu": True})
    p, _ = e.grit.create_with_pipes(b3, "bad")
    assert p.returncode != 0
    assert "not a gVisor (runsc) image dir" in e.grit.log_error(b3)
    assert e.grit.state("bad") is None and not os.path.exists(os.path.join(e.state_dir, "bad"))
    # a flipped byte in checkpoint.img: refused by the manifest check, no container
    bad_img = os.path.join(e.ckroot, "tampered")
    shutil.copytree(img, bad_img)
    with open(os.path.join(bad_img, "checkpoint.img"), "r+b") as f:
        f.seek(0, 2)
        f.write(b"x")
    b4 = e.bundle("bad2", annotations={"grit.dev/restore-from": bad_img})
    p, _ = e.grit.create_with_pipes(b4, "bad2")
    assert p.returncode != 0 and "manifest says" in e.grit.log_error(b4)
    assert e.grit.state("bad2") is None
    # the image taken with --leave-running restores into a new container and continues
    b2 = e.bundle("dst", annotations={"grit.dev/restore-from": img})
    p, out2 = e.grit.create_with_pipes(b2, "d1")
    assert p.returncode == 0, e.grit.log_error(b2)
    assert e.grit.run(b2, "start", "d1").returncode == 0
    assert out2.wait_for(lambda r: len(r.ints()) >= 2)
    assert out2.ints()[0] > 1 and out2.ints()[0] <= n + 1
    assert out.ints()[-1] >= n + 3  # and the source still counts


# --- the CUDA two-step inside the sandbox (recording fake helper) ---------------------------

def _runsc_command(args):
    """The command word of a runsc argv: the first word that is not a global flag."""
    i = 0
    while i < len(args):
        if args[i] in ("--root", "--log", "--log-format"):
            i += 2
        elif args[i].startswith("-"):
            i += 1
        else:
            return args[i]
    return None


def _cuda_events(calls):
    """('cuda', action, pid) for helper state changes and ('runsc', command) for runsc's
    checkpoint and restore, in the order they happened."""
    out = []
    for ln in calls:
        w = ln.split()
        if w[0] == "cuda":
            out.append(("cuda", w[1], int(w[2])))
        elif w[0] == "runsc":
            cmd = _runsc_command(w[1:])
            if cmd in ("checkpoint", "restore"):
                out.append(("runsc", cmd))
    return out


@pytest.mark.integration
def test_runsc_cuda_two_step_with_fake_helper(renv):
    e = renv
    e.use_recorder()
    b = e.gpu_bundle("src")
    out = _start(e, b, "s1")
    assert out.wait_for(lambda r: len(r.ints()) >= 5)
    img = os.path.join(e.ckroot, "img")
    p = _checkpoint(e, b, "s1", img)
    assert p.returncode == 0, e.grit.log_error(b)
    before = out.ints()
    m = json.load(open(os.path.join(img, "grit-manifest.json")))
    pids = [x["pid"] for x in m["gpu"]["processes"]]
    assert len(pids) == 2 and m["gpu"]["in_sandbox"] is True, m["gpu"]
    rep = subprocess.run(e.grit.argv0 + ["inspect", img], env=e.grit.env, capture_output=True,
                         timeout=60).stdout.decode()
    assert "2 CUDA process(es) frozen inside the gVisor sandbox" in rep, rep
    assert "gVisor image" in rep and "this node   can restore it" in rep, rep

    b2 = e.gpu_bundle("dst", annotations={"grit.dev/restore-from": img})
    p, out2 = e.grit.create_with_pipes(b2, "d1")
    assert p.returncode == 0, e.grit.log_error(b2)
    assert e.grit.run(b2, "start", "d1").returncode == 0
    assert out2.wait_for(lambda r: len(r.ints()) >= 3)
    assert_continues(before, out2.ints())

    ev = _cuda_events(e.calls())
    ck, rs = ev.index(("runsc", "checkpoint")), ev.index(("runsc", "restore"))
    assert ck < rs
    for pid in pids:
        # freeze before the checkpoint, unfreeze after the restore, in order, once each
        assert [x for x in ev[:ck] if x[0] == "cuda" and x[2] == pid] == \
            [("cuda", "lock", pid), ("cuda", "checkpoint", pid)], ev
        assert [x for x in ev[ck:rs] if x[0] == "cuda"] == [], ev
        assert [x for x in ev[rs:] if x[0] == "cuda" and x[2] == pid] == \
            [("cuda", "restore", pid), ("cuda", "unlock", pid)], ev
    # only the marked processes were treated as CUDA processes
    assert {x[2] for x in ev if x[0] == "cuda"} == set(pids)
    for pid in pids:
        assert e.in_sandbox("d1", "/usr/local/bin/cuda-checkpoint", "--get-state",
                            "--pid", str(pid)) == (0, "running")
    # nothing of this reached the container's stdout
    assert all(ln.strip().isdigit() for ln in out2.lines), out2.lines[:5]

    # `restore` called directly (containerd's own restore path) unfreezes them as well
    assert e.grit.run(b2, "delete", "--force", "d1").returncode == 0
    from runc_grit.cli.harness import PipeReader
    r, w = os.pipe()
    p = subprocess.run(e.grit.argv(b2, "restore", "--detach", "--image-path", img,
                                   "--bundle", b2, "--pid-file", os.path.join(b2, "p2"), "d2"),
                       env=e.grit.env, stdin=subprocess.DEVNULL, stdout=w, stderr=w, timeout=120)
    os.close(w)
    out3 = PipeReader(r)
    assert p.returncode == 0, e.grit.log_error(b2)
    assert out3.wait_for(lambda r: len(r.ints()) >= 2)
    assert_continues(before, out3.ints())
    ev = _cuda_events(e.calls())
    last_restore = len(ev) - 1 - ev[::-1].index(("runsc", "restore"))
    assert sorted(x[1:] for x in ev[last_restore + 1:]) == sorted(
        [("restore", p_) for p_ in pids] + [("unlock", p_) for p_ in pids]), ev
    for pid in pids:
        assert e.in_sandbox("d2", "/usr/local/bin/cuda-checkpoint", "--get-state",
                            "--pid", str(pid)) == (0, "running")


@pytest.mark.integration
def test_runsc_failed_checkpoint_keeps_the_source_running(renv):
    """A `runsc checkpoint` that fails (ENOSPC: image dir on a 64 KiB tmpfs) kills a running
    sandbox in gVisor 20240729; through runc-grit the source keeps computing, its CUDA
    processes are unfrozen, and no manifest is written."""
    e = renv
    e.use_recorder()
    b = e.gpu_bundle("src")
    out = _start(e, b, "s1")
    assert out.wait_for(lambda r: len(r.ints()) >= 3)
    tiny = os.path.join(e.ckroot, "tiny")
    os.makedirs(tiny)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", tiny], check=True)
    try:
        p = _checkpoint(e, b, "s1", os.path.join(tiny, "img"))
        assert p.returncode != 0
        err = e.grit.log_error(b)
        assert "not checkpointed and keeps running" in err and "no space left" in err, err
        assert not os.path.exists(os.path.join(tiny, "img", "grit-manifest.json"))
    finally:
        subprocess.run(["umount", tiny])
    n = len(out.ints())
    assert out.wait_for(lambda r: len(r.ints()) >= n + 3), "the source stopped"
    assert e.grit.state("s1")["status"] == "running"
    cuda = sorted({int(ln.split()[2]) for ln in e.calls() if ln.startswith("cuda checkpoint")})
    assert len(cuda) == 2
    for pid in cuda:
        assert e.in_sandbox("s1", "/usr/local/bin/cuda-checkpoint", "--get-state",
                            "--pid", str(pid)) == (0, "running")


@pytest.mark.integration
def test_runsc_gpu_container_without_helper_is_not_checkpointed(renv):
    e = renv
    b = e.gpu_bundle("src", helper=False)
    out = _start(e, b, "s1")
    assert out.wait_for(lambda r: len(r.ints()) >= 3)
    img = os.path.join(e.ckroot, "img")
    p = _checkpoint(e, b, "s1", img)
    assert p.returncode != 0
    err = e.grit.log_error(b)
    assert "no CUDA checkpoint helper can run inside the gVisor sandbox of s1" in err, err
    assert not os.path.exists(os.path.join(img, "checkpoint.img"))
    assert not os.path.exists(os.path.join(img, "grit-manifest.json"))
    n = len(out.ints())
    assert out.wait_for(lambda r: len(r.ints()) >= n + 3), "the container stopped counting"
    assert e.grit.state("s1")["status"] == "running"


@pytest.mark.integration
def test_runsc_failed_freeze_unfreezes_and_keeps_running(renv):
    e = renv
    b = e.gpu_bundle("src")
    out = _start(e, b, "s1")
    assert out.wait_for(lambda r: len(r.ints()) >= 3)
    # the first process freezes, the second one's checkpoint fails
    rec = os.path.dirname(e.record)
    open(os.path.join(rec, "fail-checkpoint"), "w").close()
    img = os.path.join(e.ckroot, "img")
    p = _checkpoint(e, b, "s1", img)
    assert p.returncode != 0
    err = e.grit.log_error(b)
    assert "CUDA freeze inside the sandbox failed" in err and "keeps running" in err, err
    assert not os.path.exists(os.path.join(img, "grit-manifest.json"))
    os.unlink(os.path.join(rec, "fail-checkpoint"))
    cuda = sorted({int(ln.split()[2]) for ln in e.calls() if ln.startswith("cuda ")})
    assert cuda
    for pid in cuda:  # nothing is left locked
        assert e.in_sandbox("s1", "/usr/local/bin/cuda-checkpoint", "--get-state",
                            "--pid", str(pid)) == (0, "running")
    n = len(out.ints())
    assert out.wait_for(lambda r: len(r.ints()) >= n + 3)
    # a later checkpoint works, and restoring it into a rootfs without the helper is refused
    # cleanly: the CUDA state would stay checkpointed
    p = _checkpoint(e, b, "s1", img)
    assert p.returncode == 0, e.grit.log_error(b)
    b2 = e.gpu_bundle("dst", helper=False, annotations={"grit.dev/restore-from": img})
    p, _ = e.grit.create_with_pipes(b2, "d1")
    assert p.returncode != 0
    err = e.grit.log_error(b2)
    assert "CUDA state not resumed" in err and "no CUDA checkpoint helper" in err, err
    assert e.grit.state("d1") is None and not os.path.exists(os.path.join(e.state_dir, "d1"))


@pytest.mark.integration
@pytest.mark.parametrize("when", ["during runsc checkpoint", "half-way through the freeze"])
def test_runsc_killed_mid_checkpoint_leaves_nothing_frozen(renv, when):
    """runc-grit SIGKILLed while `runsc checkpoint` runs (the sandbox paused, both CUDA
    processes frozen), or while the helper locks the second CUDA process: the guard resumes
    the sandbox and unfreezes what was frozen; the source keeps running and the image dir is
    not a checkpoint."""
    import signal
    e = renv
    e.use_recorder()
    rec = os.path.dirname(e.record)
    if when == "during runsc checkpoint":
        e.grit.env["RUNSC_STALL_CHECKPOINT"] = "60"

        def stalled():
            return any(" checkpoint " in ln and "--image-path" in ln and " exec " not in ln
                       for ln in e.calls())
    else:
        open(os.path.join(rec, "stall-second-lock"), "w").close()

        def stalled():
            return len([ln for ln in e.calls() if ln.startswith("cuda lock")]) == 2
    b = e.gpu_bundle("src")
    out = _start(e, b, "s1")
    assert out.wait_for(lambda r: len(r.ints()) >= 3)
    img = os.path.join(e.ckroot, "img")
    p = subprocess.Popen(e.grit.argv(b, "checkpoint", "--image-path", img, "s1"),
                         env=e.grit.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        assert _wait(stalled, 30), e.calls()
        frozen = sorted({int(ln.split()[2]) for ln in e.calls() if ln.startswith("cuda checkpoint")})
        assert len(frozen) == (2 if when == "during runsc checkpoint" else 1), e.calls()
        frozen = sorted({int(ln.split()[2]) for ln in e.calls() if ln.startswith("cuda lock")})
        p.send_signal(signal.SIGKILL)
    finally:
        p.wait(30)

    def states():
        return [e.in_sandbox("s1", "/usr/local/bin/cuda-checkpoint", "--get-state", "--pid",
                             str(pid)) for pid in frozen]
    def rollback():
        try:
            with open(os.path.join(e.state_dir, "s1", "rollback.json")) as f:
                return f.read()
        except OSError as err:
            return str(err)
    assert _wait(lambda: states() == [(0, "running")] * 2, 30), (states(), rollback())
    assert not os.path.exists(os.path.join(img, "grit-manifest.json"))
    n = len(out.ints())
    assert out.wait_for(lambda r: len(r.ints()) >= n + 3), "the source stopped"
    assert e.grit.state("s1")["status"] == "running"


# --- containerd's runc shim, runc-grit as its binary, runsc behind it ---------------------

@pytest.fixture
def ctrd_runsc(workdir):
    from ctrd import Containerd, build_image_archive, grit_wrapper
    if not shutil.which("containerd") or not shutil.which("runsc"):
        if os.environ.get("CI") == "true":
            pytest.fail("CI lacks containerd or runsc")
        pytest.skip("containerd or runsc not installed")
    e = RunscEnv(workdir)
    d = os.path.join(workdir, "ctd")
    os.makedirs(d)
    c = Containerd(d, e.env)
    c.grit = e
    c.wrapper = grit_wrapper(os.path.join(workdir, "runc-grit"))
    p = c.ctr("images", "import", build_image_archive(os.path.join(workdir, "busybox.tar")))
    assert p.returncode == 0, p.stderr
    yield c
    c.stop()
    e.cleanup()


@pytest.mark.integration
def test_ctr_with_runsc_checkpoint_then_restore_by_annotation(ctrd_runsc, workdir):
    """ctr run --runc-binary runc-grit, runc-grit runs runsc: the task runs in gVisor,
    `ctr task checkpoint --exit` goes through `runsc checkpoint`, and a new task created with
    the annotation continues the counter."""
    from test_containerd import ctr_run, numbers, restore_by_annotation_continues, wait
    c = ctrd_runsc
    log1, log2 = os.path.join(workdir, "c1.log"), os.path.join(workdir, "c2.log")
    p = ctr_run(c, "c1", log1)
    assert p.returncode == 0, (p.stderr, c.log_tail())
    assert wait(lambda: len(numbers(log1)) >= 5)
    # it is gVisor's sandbox that runs it
    st = subprocess.run(["runsc", "--root", "/run/containerd/runc/" + c.ns, "state", "c1"],
                        capture_output=True, timeout=60)
    assert json.loads(st.stdout)["status"] == "running", st.stderr
    img = os.path.join(c.grit.ckroot, "c1")
    p = c.ctr("task", "checkpoint", "--exit", "--image-path", img, "--work-path", img + "-w", "c1")
    assert p.returncode == 0, p.stderr
    man = json.load(open(os.path.join(img, "grit-manifest.json")))
    assert man["runtime"]["name"] == "runsc" and man["container"]["id"] == "c1"
    assert wait(lambda: c.tasks().get("c1") == "STOPPED")
    restore_by_annotation_continues(c, img, numbers(log1), log2)
