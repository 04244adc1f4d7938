"""Issue 16, CPU: on containerd >= 2.1 the CRI calls kubelet makes checkpoint a container through
runc-grit (KEP-2008's CheckpointContainer: containerd runs `runc-grit pause`, `runc-grit
checkpoint --leave-running`, `runc-grit resume`, and tars the image dir into its archive), and
a new pod whose CreateContainer names that archive as its image restores it (StartContainer:
`runc-grit restore`); its counter continues, and the source keeps running.

containerd 2.1's restore pulls the base image by its repo digest (config.dump RootfsImageRef)
even when it is local, so the image comes from a read-only registry on 127.0.0.1 (registry.py),
pulled through CRI PullImage so that it has a repo digest. containerd 1.6 and 1.7 answer
CheckpointContainer with Unimplemented and 2.0 cannot restore its archives: this file skips
below 2.1.
"""
import datetime
import json
import os
import re
import shutil
import subprocess
import tarfile
import time

import pytest

from conftest import FAKES, GRIT, Env
from ctrd import (
    IMAGE,
    PAUSE,
    build_image_layout,
    containerd_version,
    cri_containerd,
    cri_session,
    grit_wrapper,
    recorded,
)
from test_containerd import COUNTER, wait

pytestmark = pytest.mark.integration
RUNC_ROOT = "/run/containerd/runc/k8s.io"  # the runc shim's --root for the CRI namespace
REPO_NAME = "grit-busybox"


def cri_log(path):
    """(time, number) of each line of a CRI log file ("<RFC3339Nano> stdout F <line>")."""
    out = []
    try:
        with open(path) as f:
            for ln in f:
                parts = ln.rstrip("\n").split(" ", 3)
                if len(parts) == 4 and parts[3].isdigit():
                    out.append((_ts(parts[0]), int(parts[3])))
    except OSError:
        pass
    return out


def _ts(text):
    """Seconds since the epoch of an RFC3339Nano time (Python parses microseconds only)."""
    m = re.match(r"(.+T\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", text)
    zone = "+00:00" if m.group(3) == "Z" else m.group(3)
    return (datetime.datetime.fromisoformat(m.group(1) + zone).timestamp()
            + float("0." + (m.group(2) or "0")))


def values(path):
    return [v for _, v in cri_log(path)]


def grit_state(env, cid):
    """runc-grit's `state` of a container the CRI plugin's runc shim runs."""
    p = subprocess.run(GRIT + ["--root", RUNC_ROOT, "state", cid], capture_output=True,
                       timeout=60, env=env)
    assert p.returncode == 0, p.stderr.decode()
    return json.loads(p.stdout)


def freezer_state(pid):
    """The freezer of pid's cgroup: "THAWED"/"FROZEN" (cgroup v1) or "0"/"1" (v2)."""
    with open("/proc/%d/cgroup" % pid) as f:
        lines = [ln.rstrip("\n").split(":", 2) for ln in f]
    for _, ctrls, path in lines:
        if "freezer" in ctrls.split(","):
            with open("/sys/fs/cgroup/freezer%s/freezer.state" % path) as f:
                return f.read().strip()
    path = [p for _, c, p in lines if c == ""][0]
    with open("/sys/fs/cgroup%s/cgroup.freeze" % path) as f:
        return f.read().strip()


RUNC_COMMANDS = {"create", "start", "pause", "resume", "checkpoint", "restore", "delete",
                 "kill", "state", "exec", "update", "ps", "features", "events"}


def commands(record, cid):
    """(command, argv) of each runc-grit call containerd made for container cid, in order."""
    out = []
    for argv in recorded(record):
        if cid in argv:
            out.append((([w for w in argv if w in RUNC_COMMANDS] or ["?"])[0], argv))
    return out


@pytest.fixture
def cri21(workdir, request):
    """A private containerd >= 2.1 with its CRI plugin, runtime handler grit = a recording
    wrapper of the installed runc-grit; a registry on 127.0.0.1 serving the busybox image.
    Parametrized indirectly with {KEY: value}, containerd starts with that environment
    ("tmpfs:SIZE": a tmpfs of that size, made for it and unmounted after); "grit_config": the
    config runc-grit gets."""
    v = containerd_version()
    if v is None:
        pytest.skip("containerd not installed")
    if v < (2, 1):
        pytest.skip("containerd %d.%d.%d: CRI CheckpointContainer and checkpoint restore need "
                    "containerd >= 2.1 (1.6 and 1.7 answer Unimplemented; 2.0 cannot restore)" % v)
    pytest.importorskip("grpc")
    pytest.importorskip("grpc_tools")
    from registry import Registry
    param = dict(getattr(request, "param", {}))
    e = Env(workdir, param.pop("grit_config", None))  # runc-grit's config: its own key
    d = os.path.join(workdir, "ctd")
    os.makedirs(d)
    record = os.path.join(workdir, "argv.log")
    wrapper = grit_wrapper(os.path.join(workdir, "runc-grit"), record=record)
    env = dict(e.env)
    mounts = []
    for key, value in param.items():
        if value.startswith("tmpfs:"):  # a tmpfs of that size, made for this containerd
            path = os.path.join(workdir, key.lower())
            os.makedirs(path)
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0700" % value[6:],
                            "grit-test", path], check=True, timeout=30)
            mounts.append(path)
            value = path
        env[key] = value
    reg = Registry(build_image_layout(os.path.join(workdir, "img"), IMAGE), REPO_NAME)
    try:
        c = cri_containerd(d, env, wrapper, images=((PAUSE, ("sleep", "2147483647")),))
        with cri_session(c, e) as client:
            client.registry, client.record = reg, record
            yield client
    finally:
        reg.stop()
        for m in mounts:
            subprocess.run(["umount", m], capture_output=True, timeout=30)


def pull_base(cri):
    """The busybox image through CRI PullImage from the loopback registry: it gets the repo
    digest (127.0.0.1:PORT/grit-busybox@sha256:...) that the checkpoint's config.dump names."""
    ref = cri.registry.ref("test")
    image_id = cri.pull(ref)
    img = cri.image_status(ref)
    assert img is not None and img.id == image_id
    prefix = "%s/%s@sha256:" % (cri.registry.host, REPO_NAME)
    digest = [r for r in img.repo_digests if r.startswith(prefix)]
    assert digest, img.repo_digests
    return ref, digest[0]


def run_counter(cri, name, image, log_dir, script=COUNTER, devices=()):
    """A pod (handler grit) with one container running `sh -c script`."""
    os.makedirs(log_dir, exist_ok=True)
    cfg = cri.sandbox_config(name, log_dir)
    pod = cri.run_pod(cfg, "grit")
    cri.pods.append(pod)
    cid = cri.create_container(pod, cfg, "counter", image, ["sh", "-c", script], "counter.log",
                               devices=devices)
    return pod, cfg, cid


def start_restored(cri, cid, log):
    """StartContainer of a restore; the counter values it logged since, once there are 3."""
    t1 = time.time()
    cri.start(cid)

    def restored():
        return [v for t, v in cri_log(log) if t >= t1]
    assert wait(lambda: len(restored()) >= 3), (cri_log(log)[-5:], cri.ctrd.log_tail())
    return restored()


def test_cri_checkpoint_then_restore_into_a_new_pod_continues(cri21, workdir):
    """CheckpointContainer of a running counter through runc-grit; the archive carries
    runc-grit's manifest; CreateContainer(image = the archive) + StartContainer in a new pod
    restores it through runc-grit; it continues at the checkpoint's count + 1, and the source
    never stopped."""
    cri = cri21
    ref, digest = pull_base(cri)
    log1, log2 = os.path.join(workdir, "pod1", "counter.log"), os.path.join(workdir, "pod2",
                                                                            "counter.log")
    _, _, c1 = run_counter(cri, "src", ref, os.path.dirname(log1))
    cri.start(c1)
    assert wait(lambda: len(values(log1)) >= 5)
    assert cri.status(c1).image_ref == digest

    archive = os.path.join(workdir, "ckpt.tar")
    fetched = len(cri.registry.requests)
    before = values(log1)[-1]
    t0 = time.time()
    cri.checkpoint(c1, archive)
    t_end = time.time()
    after = values(log1)[-1]

    # containerd ran runc-grit: pause, checkpoint --leave-running into its own temp dir, resume
    cmds = commands(cri.record, c1)
    names = [n for n, _ in cmds]
    i = names.index("checkpoint")
    assert names[i - 1] == "pause" and names[i + 1] == "resume", names
    argv = cmds[i][1]
    assert "--leave-running" in argv and "--image-path" in argv, argv
    image_dir = argv[argv.index("--image-path") + 1]
    assert os.path.basename(image_dir).startswith("ctrd-checkpoint"), argv
    assert not os.path.exists(image_dir)  # containerd removed it once archived

    # the archive: KEP-2008's layout, runc-grit's manifest inside checkpoint/
    with tarfile.open(archive) as t:
        names_in = set(t.getnames())
        for need in ("config.dump", "spec.dump", "status.dump", "rootfs-diff.tar",
                     "checkpoint/inventory.img", "checkpoint/grit-manifest.json"):
            assert need in names_in, sorted(names_in)
        manifest = json.load(t.extractfile("checkpoint/grit-manifest.json"))
        config_dump = json.load(t.extractfile("config.dump"))
        unpacked = os.path.join(workdir, "unpacked")
        os.makedirs(unpacked)
        for m in t.getmembers():
            if m.isfile() and m.name.startswith("checkpoint/") and m.name.count("/") == 1:
                with open(os.path.join(unpacked, m.name[11:]), "wb") as f:
                    shutil.copyfileobj(t.extractfile(m), f)
    assert manifest["container"]["id"] == c1
    assert config_dump["rootfsImageRef"] == digest, config_dump
    # the manifest still describes the images after containerd's tar round trip
    p = subprocess.run(GRIT + ["inspect", "--json", unpacked], capture_output=True, timeout=120,
                       env=cri.grit.env)
    rep = json.loads(p.stdout)
    assert rep["manifest"] == "valid" and rep["images"]["match_manifest"] is True, rep
    assert rep["problems"] == [] and p.returncode == 0, rep

    # the source: still running, not paused, still counting
    assert cri.state_name(c1) == "CONTAINER_RUNNING"
    st = grit_state(cri.grit.env, c1)
    assert st["status"] == "running", st
    assert freezer_state(st["pid"]) in ("THAWED", "0")
    n = len(values(log1))
    assert wait(lambda: len(values(log1)) >= n + 3), "the source stopped counting"

    # restore: a new pod, CreateContainer with the archive as its image, StartContainer
    pod2, _, c2 = run_counter(cri, "dst", archive, os.path.dirname(log2))
    got = start_restored(cri, c2, log2)
    # the dump froze the counter at some N between the last line seen before the call and
    # the last line seen after it (the source went on after containerd's resume) ...
    assert before + 1 <= got[0] <= after + 1, (before, after, got[:3])
    assert got[:3] == [got[0], got[0] + 1, got[0] + 2], got[:5]
    # ... and exactly where the source itself went on: the restored copy's first line is
    # the source's first line after its freeze (the longest silence during the call)
    src = [(t, v) for t, v in cri_log(log1) if t0 - 0.5 <= t <= t_end + 1.0]
    gap, resumed_at = max((b[0] - a[0], b[1]) for a, b in zip(src, src[1:]))
    assert gap > 0.3, src
    assert got[0] == resumed_at, (gap, resumed_at, got[:3])
    assert cri.state_name(c2) == "CONTAINER_RUNNING"
    assert grit_state(cri.grit.env, c2)["status"] == "running"

    # runc-grit restored it (`restore`, no `create`), from containerd's unpacked archive
    cmds2 = commands(cri.record, c2)
    kinds = [k for k, _ in cmds2]
    assert "restore" in kinds and "create" not in kinds, kinds
    rargv = cmds2[kinds.index("restore")][1]
    img_path = rargv[rargv.index("--image-path") + 1]
    assert img_path.endswith("/ctrd-restore/checkpoint"), rargv
    # containerd 2.1 resolved the base image by its digest on the registry for the restore
    later = cri.registry.requests[fetched:]
    assert any("/manifests/" + digest.split("@")[1] in p for _, p in later), later
    # and the source is still the source
    assert cri.state_name(c1) == "CONTAINER_RUNNING"
    print("checkpoint took %.2fs (source frozen %.2fs); restored at %d (seen before %d, "
          "after %d)" % (t_end - t0, gap, got[0], before, after))
    for name, argv in cmds[i - 1:i + 2] + cmds2:
        print("runc-grit " + " ".join(argv))


@pytest.mark.parametrize("cri21", [{"XDG_RUNTIME_DIR": "tmpfs:16k"}], indirect=True,
                         ids=["image dir on a 16k tmpfs"])
def test_cri_checkpoint_that_fails_leaves_the_source_running(cri21, workdir):
    """CheckpointContainer whose dump fails half-way: containerd's checkpoint image dir
    ($XDG_RUNTIME_DIR/ctrd-checkpointNNN) is on a 16 KiB tmpfs, so CRIU runs out of space while
    the container is frozen (containerd paused it first). The call fails, no archive is
    written, and the source is left running: not paused, not frozen, still counting."""
    cri = cri21
    ref, _ = pull_base(cri)
    log1 = os.path.join(workdir, "pod1", "counter.log")
    _, _, c1 = run_counter(cri, "src", ref, os.path.dirname(log1))
    cri.start(c1)
    assert wait(lambda: len(values(log1)) >= 5)
    archive = os.path.join(workdir, "ckpt.tar")
    import grpc
    with pytest.raises(grpc.RpcError) as err:
        cri.checkpoint(c1, archive)
    msg = err.value.details()
    assert not os.path.exists(archive)
    # it was CRIU, out of space while dumping (the shim keeps its log in the bundle)
    bundle = os.path.join(cri.ctrd.dir, "state", "io.containerd.runtime.v2.task", "k8s.io", c1)
    with open(os.path.join(bundle, "criu-dump.log"), errors="replace") as f:
        dump_log = f.read()
    assert "No space left on device" in dump_log, dump_log[-2000:]
    cmds = commands(cri.record, c1)
    names = [n for n, _ in cmds]
    assert "checkpoint" in names, names
    i = names.index("checkpoint")
    assert names[i - 1] == "pause" and "resume" in names[i + 1:], names
    # the source: running, thawed, counting; CRI still has it running
    st = grit_state(cri.grit.env, c1)
    assert st["status"] == "running", (st, msg)
    assert freezer_state(st["pid"]) in ("THAWED", "0")
    assert cri.state_name(c1) == "CONTAINER_RUNNING"
    n = len(values(log1))
    assert wait(lambda: len(values(log1)) >= n + 3), "the source stopped counting"
    # nothing committed: no manifest anywhere under the tmpfs
    # (crun keeps its own run dir there, $XDG_RUNTIME_DIR/crun)
    xdg = os.path.join(workdir, "xdg_runtime_dir")
    left = [os.path.join(d, n) for d, _, files in os.walk(xdg) for n in files]
    assert not [p for p in left if p.endswith("grit-manifest.json")], left
    assert not [n for n in os.listdir(xdg) if n.startswith("ctrd-checkpoint")], os.listdir(xdg)
    print("refused with: %s; CRIU: %s" % (msg, [ln for ln in dump_log.splitlines()
                                              if "Error" in ln][:2]))



FAKE_GPU = {"grit_config": {"cuda": {"helper": os.path.join(FAKES, "fake-cuda-checkpoint"),
                                     "lock_timeout_ms": 2000}},
            "FAKE_CUDA_DIR": "tmpfs:1m"}  # where the fake records its calls
# two CUDA processes (FAKE_CUDA=1: the fake helper's mark) beside the counter
FAKE_GPU_WORKLOAD = 'FAKE_CUDA=1 sh -c "sleep 100000 & wait" & ' + COUNTER


@pytest.mark.parametrize("cri21", [FAKE_GPU], indirect=True, ids=["fake GPU"])
def test_cri_checkpoint_of_a_gpu_container_thaws_it_for_cuda(cri21, workdir):
    """The GPU variant, with the recording fake helper (like the driver, it times out on a
    frozen task): containerd pauses the container before `runc-grit checkpoint`; runc-grit
    thaws it for the CUDA lock and checkpoint, dumps, restores and unlocks the source's CUDA
    state (--leave-running) and pauses it again for containerd's resume. The archive then
    restores into a new pod: its CUDA processes are restored and unlocked after CRIU resumed
    them, and the counter continues."""
    from test_gpu_hooks_fake import fake_state
    cri = cri21
    fake_dir = os.path.join(workdir, "fake_cuda_dir")  # containerd's env, so the shim's too
    ref, _ = pull_base(cri)
    log1, log2 = (os.path.join(workdir, p, "counter.log") for p in ("pod1", "pod2"))
    _, _, c1 = run_counter(cri, "src", ref, os.path.dirname(log1), FAKE_GPU_WORKLOAD)
    cri.start(c1)
    assert wait(lambda: len(values(log1)) >= 5)

    def calls():
        p = os.path.join(fake_dir, "calls.jsonl")
        return [json.loads(ln) for ln in open(p)] if os.path.exists(p) else []
    archive = os.path.join(workdir, "ckpt.tar")
    cri.checkpoint(c1, archive)
    names = [n for n, _ in commands(cri.record, c1)]
    i = names.index("checkpoint")
    assert names[i - 1] == "pause" and names[i + 1] == "resume", names
    src = calls()
    pids = sorted({c["pid"] for c in src})
    assert len(pids) == 2, src
    for pid in pids:
        assert [c["action"] for c in src if c["pid"] == pid] == \
            ["lock", "checkpoint", "restore", "unlock"]
        assert fake_state(pid) == "running"
    assert not any(c["frozen"] for c in src), src   # every CUDA step ran thawed
    with tarfile.open(archive) as t:
        m = json.load(t.extractfile("checkpoint/grit-manifest.json"))
    assert sorted(p["pid"] for p in m["gpu"]["processes"]) == pids
    st = grit_state(cri.grit.env, c1)
    assert st["status"] == "running" and freezer_state(st["pid"]) in ("THAWED", "0")
    n = len(values(log1))
    assert wait(lambda: len(values(log1)) >= n + 3), "the source stopped counting"

    # the new pod is given a GPU (a device node at /dev/nvidia0: a CUDA restore into a spec
    # that grants none is refused)
    pod2, _, c2 = run_counter(cri, "dst", archive, os.path.dirname(log2),
                              devices=[("/dev/null", "/dev/nvidia0")])
    got = start_restored(cri, c2, log2)
    assert got[:3] == [got[0], got[0] + 1, got[0] + 2] and got[0] > 5, got[:5]
    after = calls()[len(src):]
    restored = sorted({c["pid"] for c in after})
    assert len(restored) == 2, after
    for pid in restored:
        assert [c["action"] for c in after if c["pid"] == pid] == ["restore", "unlock"]
        assert fake_state(pid) == "running"
    assert not any(c["frozen"] or c["TracerPid"] != "0" for c in after), after


@pytest.mark.parametrize("cri21", [FAKE_GPU], indirect=True, ids=["fake GPU"])
def test_cri_checkpoint_past_its_deadline_leaves_the_source_running_unlocked(cri21, workdir):
    """KEP-6274: the GPU phases end within the CRI deadline or are rolled back. The CUDA
    checkpoint is made slower than the call's deadline: at the deadline the shim kills
    runc-grit, and containerd's own resume dies with the same deadline. runc-grit's guard
    (a process of its own) thaws the container and restores and unlocks its CUDA state: the
    source keeps running, unlocked, and no archive is written."""
    import grpc

    from test_gpu_hooks_fake import fake_state
    cri = cri21
    fake_dir = os.path.join(workdir, "fake_cuda_dir")
    ref, _ = pull_base(cri)
    log1 = os.path.join(workdir, "pod1", "counter.log")
    _, _, c1 = run_counter(cri, "src", ref, os.path.dirname(log1), FAKE_GPU_WORKLOAD)
    cri.start(c1)
    assert wait(lambda: len(values(log1)) >= 5)
    with open(os.path.join(fake_dir, "slow-checkpoint"), "w") as f:
        f.write("30")
    archive = os.path.join(workdir, "ckpt.tar")
    t0 = time.time()
    with pytest.raises(grpc.RpcError) as err:
        cri.checkpoint(c1, archive, timeout=6)
    elapsed = time.time() - t0
    # the call ends at its 6 s deadline: gRPC says DEADLINE_EXCEEDED, or CANCELLED when
    # containerd, holding the propagated deadline, resets the stream first (RST_STREAM 8)
    assert err.value.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED), err.value
    assert 5.5 <= elapsed < 20, elapsed
    os.unlink(os.path.join(fake_dir, "slow-checkpoint"))
    calls = [json.loads(ln) for ln in open(os.path.join(fake_dir, "calls.jsonl"))]
    pids = sorted({c["pid"] for c in calls})
    assert len(pids) == 2 and "checkpoint" in [c["action"] for c in calls]

    def rolled_back():
        st = grit_state(cri.grit.env, c1)
        return (st["status"] == "running" and freezer_state(st["pid"]) in ("THAWED", "0")
                and all(fake_state(p) == "running" for p in pids))
    assert wait(rolled_back, timeout=60), (grit_state(cri.grit.env, c1),
                                           [fake_state(p) for p in pids])
    n = len(values(log1))
    assert wait(lambda: len(values(log1)) >= n + 3), "the source stopped counting"
    assert cri.state_name(c1) == "CONTAINER_RUNNING"
    assert not os.path.exists(archive) or os.path.getsize(archive) == 0


def test_cri_restores_a_checkpoint_image_pushed_by_runc_grit(cri21, workdir):
    """Issue 26: a CRI checkpoint archive, unpacked and pushed by `runc-grit push` to a real
    registry (Debian's docker-registry, auth on), is pulled by containerd's CRI PullImage with
    those credentials and restored by name: CreateContainer(image = the checkpoint image) +
    StartContainer in a new pod. containerd 2.1 recognises it by checkpointctl's annotation,
    unpacks its layers, and runs runc-grit restore; the counter continues."""
    if not (shutil.which("docker-registry") and shutil.which("htpasswd")):
        pytest.skip("docker-registry / htpasswd not installed (install/deps.sh installs them)")
    from distribution import Distribution
    cri = cri21
    dist = Distribution(os.path.join(workdir, "registry"))
    try:
        ref, _ = pull_base(cri)
        log1, log2 = (os.path.join(workdir, p, "counter.log") for p in ("pod1", "pod2"))
        _, _, c1 = run_counter(cri, "src", ref, os.path.dirname(log1))
        cri.start(c1)
        assert wait(lambda: len(values(log1)) >= 5)
        archive = os.path.join(workdir, "ckpt.tar")
        cri.checkpoint(c1, archive)
        unpacked = os.path.join(workdir, "ckpt")
        os.makedirs(unpacked)
        subprocess.run(["tar", "-xf", archive, "-C", unpacked], check=True, timeout=60)
        auth = dist.write_auth_file(os.path.join(workdir, "auth.json"))
        cri.grit.write_config({"registry": {"auth_file": auth, "insecure": [dist.host]}})
        image = dist.ref("checkpoints/counter", "cri")
        p = subprocess.run(GRIT + ["push", "--json", unpacked, image], capture_output=True,
                           text=True, env=cri.grit.env, timeout=120)
        assert p.returncode == 0, p.stderr
        man = json.loads(dist.manifest("checkpoints/counter", "cri"))
        assert man["annotations"]["org.criu.checkpoint.container.name"] == "counter", man
        # kubelet: PullImage with the pull secret's credentials, then the pod
        cri.pull(image, auth=(dist.user, dist.password))
        _, _, c2 = run_counter(cri, "dst", image, os.path.dirname(log2))
        got = start_restored(cri, c2, log2)
        assert got[:3] == [got[0], got[0] + 1, got[0] + 2], got[:5]
        assert got[0] <= values(log1)[-1] + 1
        kinds = [k for k, _ in commands(cri.record, c2)]
        assert "restore" in kinds and "create" not in kinds, kinds
        assert cri.state_name(c1) == "CONTAINER_RUNNING"
        print("restored from %s at %d" % (image, got[0]))
    finally:
        dist.stop()
