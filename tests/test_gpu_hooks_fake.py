"""GPU hook order with a recording fake cuda-checkpoint (cuda.helper), real runc + CRIU.

The fake records, at each call, the target's TracerPid and State from /proc: CRIU seizes
(ptraces) every task when it freezes them, so TracerPid 0 at lock/checkpoint time proves the
call came before the freeze, and TracerPid 0 at restore/unlock proves it came after resume.
"""
import json
import os
import subprocess

import pytest

from conftest import FAKES, Env
from test_integration_runc import assert_continues, checkpoint

pytestmark = pytest.mark.integration

# Two CUDA processes, a parent and its child (FAKE_CUDA=1 in their environment only), and a
# counter that is not a CUDA process.
WORKLOAD = ('FAKE_CUDA=1 sh -c "sleep 100000 & wait" & '
            'i=0; while true; do i=$((i+1)); echo "$i"; sleep 0.1; done')


@pytest.fixture
def gpuenv(workdir):
    e = Env(workdir, {"cuda": {"helper": os.path.join(FAKES, "fake-cuda-checkpoint"),
                               "lock_timeout_ms": 4321}})
    e.fake_dir = os.path.join(workdir, "fake-cuda")
    e.env["FAKE_CUDA_DIR"] = e.fake_dir
    e.grit.env["FAKE_CUDA_DIR"] = e.fake_dir
    yield e
    e.cleanup()


def calls(e):
    p = os.path.join(e.fake_dir, "calls.jsonl")
    if not os.path.exists(p):
        return []
    return [json.loads(ln) for ln in open(p)]


def fake_state(pid):
    out = subprocess.run([os.path.join(FAKES, "fake-cuda-checkpoint"), "--get-state", "--pid", str(pid)],
                         capture_output=True)
    return out.stdout.decode().strip()


def cuda_pids(e, cid):
    ps = e.runc("ps", "--format", "json", cid)
    return [p for p in json.loads(ps.stdout) if fake_state(p) in ("running", "locked", "checkpointed")]


# the GPU a fake-CUDA container is granted: a CDI device, as containerd's CRI passes it
# (a restore of CUDA state into a spec that grants no GPU is refused: gpu.grants)
GPU_GRANT = {"cdi.k8s.io/gpu": "nvidia.com/gpu=0"}


def start(e, name, cid, ann=None, rootfs_from=None):
    b = e.bundle(name, args=["sh", "-c", WORKLOAD], annotations=dict(GPU_GRANT, **(ann or {})),
                 rootfs_from=rootfs_from)
    p, out = e.grit.create_with_pipes(b, cid)
    assert p.returncode == 0, e.grit.log_error(b)
    assert e.grit.run(b, "start", cid).returncode == 0
    assert out.wait_for(lambda r: len(r.ints()) >= 3)
    return b, out


def test_lock_checkpoint_before_freeze_restore_unlock_after_resume(gpuenv):
    e = gpuenv
    b, out = start(e, "src", "src")
    src_cuda = cuda_pids(e, "src")
    assert len(src_cuda) == 2
    image = os.path.join(e.ckroot, "gpu")
    checkpoint(e, b, "src", image)
    out.closed()
    dump_calls = calls(e)
    for pid in src_cuda:
        mine = [c for c in dump_calls if c["pid"] == pid]
        assert [c["action"] for c in mine] == ["lock", "checkpoint"]  # once each, though hooks run twice
        assert all(c["TracerPid"] == "0" for c in mine)               # before CRIU seized the task
        assert mine[0]["timeout"] == "4321"
    # every lock precedes every checkpoint
    assert [c["action"] for c in dump_calls] == ["lock", "lock", "checkpoint", "checkpoint"]
    # (the container is gone after its checkpoint: the journal is kept beside dump.log)
    hooks = [json.loads(ln) for ln in open(os.path.join(image + "-work", "grit-hooks.jsonl"))]
    # CRIU 4.1 runs every hook twice (4.2 and 4.3 once): a second run skips Python
    assert [h["action"] for h in hooks] in (["pre-dump"], ["pre-dump", "pre-dump"])
    assert [h.get("repeat", False) for h in hooks] == [False, True][:len(hooks)]
    man = json.load(open(os.path.join(image, "grit-manifest.json")))
    assert sorted(p["pid"] for p in man["gpu"]["processes"]) == sorted(src_cuda)
    assert "cuda_checkpoint_s" in man["timings"]
    e.grit.run(b, "delete", "src")

    n = len(dump_calls)
    b2, out2 = start(e, "dst", "dst", {"grit.dev/restore-from": image}, os.path.join(b, "rootfs"))
    assert_continues(out.ints(), out2.ints())
    dst_cuda = cuda_pids(e, "dst")
    assert len(dst_cuda) == 2
    rest = calls(e)[n:]
    for pid in dst_cuda:
        mine = [c for c in rest if c["pid"] == pid]
        assert [c["action"] for c in mine] == ["restore", "unlock"]
        assert all(c["TracerPid"] == "0" and not c["State"].startswith("t") for c in mine)
        assert fake_state(pid) == "running"


def test_failed_dump_leaves_every_process_unlocked(gpuenv):
    e = gpuenv
    b, out = start(e, "fail", "fail")
    pids = cuda_pids(e, "fail")
    tiny = os.path.join(e.dir, "tiny")
    os.makedirs(tiny)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", tiny], check=True)
    try:
        p = e.grit.run(b, "checkpoint", "--image-path", os.path.join(tiny, "img"),
                       "--work-path", os.path.join(e.dir, "work"), "fail")
        assert p.returncode != 0
        assert "keeps running" in e.grit.log_error(b)
        assert not os.path.exists(os.path.join(tiny, "img", "grit-manifest.json"))
    finally:
        subprocess.run(["umount", "-l", tiny])
    actions = {pid: [c["action"] for c in calls(e) if c["pid"] == pid] for pid in pids}
    for pid in pids:
        assert actions[pid][:2] == ["lock", "checkpoint"]
        assert actions[pid][-2:] == ["restore", "unlock"]
        assert fake_state(pid) == "running"
    n = len(out.ints())
    assert out.wait_for(lambda r: len(r.ints()) >= n + 3), "source stopped counting"
    assert e.grit.state("fail")["status"] == "running"


def test_leave_running_resumes_cuda(gpuenv):
    e = gpuenv
    b, out = start(e, "lr", "lr")
    pids = cuda_pids(e, "lr")
    image = os.path.join(e.ckroot, "lr")
    checkpoint(e, b, "lr", image, "--leave-running")
    for pid in pids:
        assert [c["action"] for c in calls(e) if c["pid"] == pid] == \
            ["lock", "checkpoint", "restore", "unlock"]
        assert fake_state(pid) == "running"
    n = len(out.ints())
    assert out.wait_for(lambda r: len(r.ints()) >= n + 3)
    b2, out2 = start(e, "lr2", "lr2", {"grit.dev/restore-from": image}, os.path.join(b, "rootfs"))
    for pid in cuda_pids(e, "lr2"):
        assert fake_state(pid) == "running"
    assert out2.ints()[0] > 1


def test_failed_cuda_restore_fails_the_create_and_leaves_nothing(gpuenv):
    """CRIU ignores a failing post-resume script; runc-grit does not: the tasks would run
    with their CUDA state still checkpointed (hung at their next CUDA call)."""
    e = gpuenv
    b, out = start(e, "cr", "cr")
    image = os.path.join(e.ckroot, "cr")
    checkpoint(e, b, "cr", image)
    e.grit.run(b, "delete", "cr")
    open(os.path.join(e.fake_dir, "fail-restore"), "w").close()
    b2 = e.bundle("cr2", args=["sh", "-c", WORKLOAD],
                  annotations=dict(GPU_GRANT, **{"grit.dev/restore-from": image}),
                  rootfs_from=os.path.join(b, "rootfs"))
    p, _ = e.grit.create_with_pipes(b2, "cr2")
    assert p.returncode != 0
    err = e.grit.log_error(b2)
    assert "CUDA state not resumed" in err and "injected failure of restore" in err, err
    assert e.grit.state("cr2") is None
    assert not os.path.exists(os.path.join(e.state_dir, "cr2"))
    # the image is intact: once the helper works, the same image restores
    os.unlink(os.path.join(e.fake_dir, "fail-restore"))
    b3, out3 = start(e, "cr3", "cr3", {"grit.dev/restore-from": image}, os.path.join(b, "rootfs"))
    assert_continues(out.ints(), out3.ints())


def test_paused_container_gets_its_cuda_steps_thawed(gpuenv):
    """containerd's CRI CheckpointContainer pauses the container, then runs `checkpoint
    --leave-running`, then resumes it. CUDA cannot lock or restore a frozen task (the fake,
    like the driver, times out on one): runc-grit thaws the container for the CUDA steps and
    pauses it again, so its caller finds it as it left it."""
    e = gpuenv
    b, out = start(e, "pz", "pz")
    pids = cuda_pids(e, "pz")
    assert e.grit.run(b, "pause", "pz").returncode == 0
    image = os.path.join(e.ckroot, "pz")
    checkpoint(e, b, "pz", image, "--leave-running")
    for pid in pids:
        mine = [c for c in calls(e) if c["pid"] == pid]
        assert [c["action"] for c in mine] == ["lock", "checkpoint", "restore", "unlock"]
        assert not any(c["frozen"] for c in mine)
        assert fake_state(pid) == "running"
    assert e.grit.state("pz")["status"] == "paused"       # as containerd left it
    assert e.grit.run(b, "resume", "pz").returncode == 0  # containerd's resume
    n = len(out.ints())
    assert out.wait_for(lambda r: len(r.ints()) >= n + 3)
    b2, out2 = start(e, "pz2", "pz2", {"grit.dev/restore-from": image}, os.path.join(b, "rootfs"))
    for pid in cuda_pids(e, "pz2"):
        assert fake_state(pid) == "running"


def test_killed_during_a_paused_containers_checkpoint_leaves_it_running(gpuenv):
    """runc-grit killed at the CRI deadline (the shim kills it) in the middle of the CUDA
    checkpoint of a container containerd had paused: containerd's own resume dies with the
    same deadline, so the guard thaws the container and restores and unlocks its CUDA state:
    the source keeps running, unlocked (KEP-6274)."""
    import signal
    import time
    e = gpuenv
    b, out = start(e, "kd", "kd")
    pids = cuda_pids(e, "kd")
    assert e.grit.run(b, "pause", "kd").returncode == 0
    os.makedirs(e.fake_dir, exist_ok=True)
    with open(os.path.join(e.fake_dir, "slow-checkpoint"), "w") as f:
        f.write("30")
    p = subprocess.Popen(e.grit.argv(b, "checkpoint", "--image-path",
                                     os.path.join(e.ckroot, "kd"), "--leave-running", "kd"),
                         env=e.grit.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.time() + 60
    while time.time() < end and not any(c["action"] == "checkpoint" for c in calls(e)):
        time.sleep(0.1)
    assert any(c["action"] == "checkpoint" for c in calls(e))
    p.send_signal(signal.SIGKILL)
    p.wait()
    os.unlink(os.path.join(e.fake_dir, "slow-checkpoint"))
    end = time.time() + 60
    while time.time() < end and not all(fake_state(pid) == "running" for pid in pids):
        time.sleep(0.2)
    assert all(fake_state(pid) == "running" for pid in pids)
    assert e.grit.state("kd")["status"] == "running"
    n = len(out.ints())
    assert out.wait_for(lambda r: len(r.ints()) >= n + 3), "the source stopped counting"
    assert not os.path.exists(os.path.join(e.ckroot, "kd", "grit-manifest.json"))


def test_cuda_steps_of_all_processes_run_at_once(gpuenv):
    """The driver copies each process's memory on its own: two processes' checkpoints (and
    restores) start together, so the pair takes about as long as one (issue 17, overlap)."""
    e = gpuenv
    os.makedirs(e.fake_dir, exist_ok=True)
    for action in ("checkpoint", "restore"):
        with open(os.path.join(e.fake_dir, "slow-" + action), "w") as f:
            f.write("3")
    b, out = start(e, "src", "src")
    image = os.path.join(e.ckroot, "gpu")
    checkpoint(e, b, "src", image)
    out.closed()
    e.grit.run(b, "delete", "src")
    b2, out2 = start(e, "dst", "dst", {"grit.dev/restore-from": image}, os.path.join(b, "rootfs"))
    assert_continues(out.ints(), out2.ints())
    for action in ("checkpoint", "restore"):
        t = sorted(c["t"] for c in calls(e) if c["action"] == action)
        assert len(t) == 2
        # one after the other, the second would start 3 s after the first
        assert t[1] - t[0] < 2.0, (action, t)
    assert all(fake_state(p) == "running" for p in cuda_pids(e, "dst"))


def test_cuda_checkpoint_into_a_spec_without_gpus_is_refused_before_criu(gpuenv):
    """The destination's spec grants no GPU (no /dev/nvidiaN, no CDI device, no
    NVIDIA_VISIBLE_DEVICES a runtime acts on): refused before CRIU runs, with how many GPUs
    the checkpoint used and what the spec grants; nothing runs, nothing is left. The same
    image restores into a spec that grants a GPU."""
    import shutil
    e = gpuenv
    mark = os.path.join(e.dir, "criu-ran")
    wrapper = os.path.join(e.dir, "criu-mark")
    with open(wrapper, "w") as f:
        f.write("#!/bin/sh\ncase \"$1\" in swrk|restore) touch %s;; esac\nexec %s \"$@\"\n"
                % (mark, shutil.which("criu")))  # (not `criu --version`)
    os.chmod(wrapper, 0o755)
    b, out = start(e, "ng", "ng")
    image = os.path.join(e.ckroot, "ng")
    checkpoint(e, b, "ng", image)
    e.grit.run(b, "delete", "ng")
    e.write_config({"cuda": {"helper": os.path.join(FAKES, "fake-cuda-checkpoint")},
                    "criu": wrapper})
    before = len(calls(e))
    for name, env in (("ng-none", ()), ("ng-env-no-runtime", ("NVIDIA_VISIBLE_DEVICES=all",))):
        b2 = e.bundle(name, args=["sh", "-c", WORKLOAD], env=env,
                      annotations={"grit.dev/restore-from": image},
                      rootfs_from=os.path.join(b, "rootfs"))
        p, _ = e.grit.create_with_pipes(b2, name)
        assert p.returncode != 0
        err = e.grit.log_error(b2)
        assert "the checkpoint holds CUDA state of 2 process(es)" in err, err
        assert "this container's spec grants no GPU" in err, err
        assert e.grit.state(name) is None and not os.path.exists(os.path.join(e.state_dir, name))
        assert not os.path.exists(mark), "CRIU ran"
    assert len(calls(e)) == before  # no CUDA call either
    b3, out3 = start(e, "ng-gpu", "ng-gpu", {"grit.dev/restore-from": image},
                     os.path.join(b, "rootfs"))
    assert os.path.exists(mark)
    assert_continues(out.ints(), out3.ints())


def _gpu_node(b, n):
    """The spec grants /dev/nvidiaN (here: the numbers of /dev/null, as no GPU is here)."""
    p = os.path.join(b, "config.json")
    spec = json.load(open(p))
    spec["linux"]["devices"] = [{"path": "/dev/nvidia%d" % n, "type": "c", "major": 1,
                                 "minor": 3, "fileMode": 0o666, "uid": 0, "gid": 0}]
    json.dump(spec, open(p, "w"))


def test_restored_dev_holds_only_the_gpu_nodes_its_spec_grants(gpuenv):
    """CRIU brings back the source's /dev tmpfs with the source's /dev/nvidia0; the new spec
    grants /dev/nvidia1: before the tasks run (CRIU's post-restore), /dev holds nvidia1 and
    not nvidia0. Into a spec that grants none, the source's node is gone too."""
    e = gpuenv
    b = e.bundle("dn", annotations=None)
    _gpu_node(b, 0)
    p, out = e.grit.create_with_pipes(b, "dn")
    assert p.returncode == 0 and e.grit.run(b, "start", "dn").returncode == 0
    assert out.wait_for(lambda r: len(r.ints()) >= 2)
    pid = e.grit.state("dn")["pid"]
    assert "nvidia0" in os.listdir("/proc/%d/root/dev" % pid)
    image = os.path.join(e.ckroot, "dn")
    checkpoint(e, b, "dn", image, "--leave-running")
    for name, n in (("dn-1", 1), ("dn-none", None)):
        b2 = e.bundle(name, annotations={"grit.dev/restore-from": image},
                      rootfs_from=os.path.join(b, "rootfs"))
        if n is not None:
            _gpu_node(b2, n)
        p, out2 = e.grit.create_with_pipes(b2, name)
        assert p.returncode == 0, e.grit.log_error(b2)
        pid2 = e.grit.state(name)["pid"]
        nodes = sorted(x for x in os.listdir("/proc/%d/root/dev" % pid2) if x.startswith("nvidia"))
        assert nodes == (["nvidia1"] if n is not None else []), nodes
        assert e.grit.run(b2, "start", name).returncode == 0
        assert out2.wait_for(lambda r: len(r.ints()) >= 2)
        assert_continues(out.ints()[:out2.ints()[0] - 1], out2.ints())
