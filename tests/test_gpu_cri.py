"""Issue 16 on a real GPU: a PyTorch job in a Kubernetes pod, checkpointed by the CRI call
kubelet makes (CheckpointContainer, containerd >= 2.1, runtime handler grit) and restored into
a new pod whose image is the checkpoint archive; every step it prints after the restore is
bit-identical (float hex) to an uninterrupted run's. Skipped without a GPU or containerd 2.1.
Run on the device machine: bash bench/gpu/device_run.sh cri
"""
import glob
import os
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import GRIT, Env
from ctrd import (
    PAUSE,
    build_image_layout,
    containerd_version,
    cri_containerd,
    cri_session,
    grit_wrapper,
)
from gpu.gpuctr import APP_DIR, read_steps, wait_steps
from test_cri_checkpoint import commands
from test_gpu_device import _gpu_missing, reference

GRIT_STATE = GRIT + ["--root", "/run/containerd/runc/k8s.io", "state"]


def _missing():
    why = _gpu_missing()
    if why:
        return why
    v = containerd_version()
    if v is None or v < (2, 1):
        return "needs containerd >= 2.1 on PATH"
    try:
        import grpc_tools  # noqa: F401
    except ImportError:
        return "needs grpcio-tools"
    return None


pytestmark = [pytest.mark.gpu, pytest.mark.integration,
              pytest.mark.skipif(_missing() is not None, reason=str(_missing()))]
MIB = int(os.environ.get("GPU_TEST_MIB", "2048"))
REPO_NAME = "grit-hostbind"


def host_bind_rootfs(d):
    """An image rootfs for a container that runs the host's Python and torch: empty dirs for
    the host's /usr, /opt and /etc, the app and the logs; lib symlinks as the host has them."""
    for sub in ("usr", "opt", "etc", "proc", "dev", "sys", "tmp", "app", "logs", "run"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    for sub in ("lib", "lib64", "bin", "sbin"):
        if os.path.islink("/" + sub):
            os.symlink(os.readlink("/" + sub), os.path.join(d, sub))
    return d


@pytest.fixture
def gcri(workdir):
    from registry import Registry
    e = Env(workdir, {"cuda": {"lock_timeout_ms": 20000}})
    d = os.path.join(workdir, "ctd")
    os.makedirs(d)
    record = os.path.join(workdir, "argv.log")
    wrapper = grit_wrapper(os.path.join(workdir, "runc-grit"), record=record)
    layout = build_image_layout(os.path.join(workdir, "img"), "docker.io/library/%s:test"
                                % REPO_NAME, ("python3",),
                                rootfs=host_bind_rootfs(os.path.join(workdir, "img-rootfs")))
    reg = Registry(layout, REPO_NAME)
    try:
        c = cri_containerd(d, e.env, wrapper, images=((PAUSE, ("sleep", "2147483647")),))
        with cri_session(c, e) as client:
            client.record = record
            client.logs = os.path.join(workdir, "logs")
            os.makedirs(client.logs)
            client.ref = reg.ref("test")
            client.pull(client.ref)
            yield client
    finally:
        reg.stop()


def gpu_container(cri, name, image, log_dir, gpus=None):
    """A pod (handler grit, host network) whose container runs tests/gpu/app.py on the
    node's GPUs (gpus: their indices; None: all) and its NVIDIA control devices, the host's
    /usr, /opt and /etc bound read-only."""
    os.makedirs(log_dir, exist_ok=True)
    cfg = cri.sandbox_config(name, log_dir)
    pod = cri.run_pod(cfg, "grit")
    cri.pods.append(pod)
    mounts = [("/usr", "/usr", True), ("/opt", "/opt", True), ("/etc", "/etc", True),
              (APP_DIR, "/app", True), (cri.logs, "/logs", False)]
    devices = [p for p in sorted(glob.glob("/dev/nvidia*")) if not os.path.isdir(p)
               and (gpus is None or not p[11:].isdigit() or int(p[11:]) in gpus)]
    envs = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/tmp",
            "LD_LIBRARY_PATH": os.environ.get("LD_LIBRARY_PATH", ""),
            "APP_MIB": str(MIB), "APP_TICK": "0.05"}
    cid = cri.create_container(pod, cfg, "trainer", image, ["python3", "/app/app.py", "/logs/g.log"],
                               "trainer.log", envs=envs, mounts=mounts, devices=devices)
    return pod, cid


def test_torch_job_checkpointed_through_cri_restores_bit_identical(gcri, workdir):
    cri = gcri
    log = os.path.join(cri.logs, "g.log")
    pod1, c1 = gpu_container(cri, "src", cri.ref, os.path.join(workdir, "pod1"))
    cri.start(c1)
    wait_steps(log, 10, timeout=300)
    archive = os.path.join(workdir, "ckpt.tar")
    t = time.monotonic()
    cri.checkpoint(c1, archive, timeout=600)
    ckpt_s = time.monotonic() - t
    names = [n for n, _ in commands(cri.record, c1)]
    assert "checkpoint" in names and "resume" in names, names
    at = max(read_steps(log))
    # the source is stopped (migration: the pod moves); its log kept aside, a fresh one for
    # the restored process (it appends: O_APPEND)
    cri.remove_pod(pod1)
    cri.pods.remove(pod1)
    os.rename(log, log + ".source")
    open(log, "w").close()
    pod2, c2 = gpu_container(cri, "dst", archive, os.path.join(workdir, "pod2"))
    t = time.monotonic()
    cri.start(c2)
    restore_s = time.monotonic() - t
    wait_steps(log, at + 20, timeout=300)
    got = read_steps(log)
    last, first = max(got), min(got)
    assert 10 <= first <= at + 1, (first, at)
    ref = reference(log, last)
    differ = [s for s in got if got[s][0] != ref[s][0]]
    src = read_steps(log + ".source")
    differ += [s for s in src if src[s][0] != ref[s][0]]
    print("CRI checkpoint %.2fs, restore (StartContainer) %.2fs; source steps 1..%d, restored "
          "steps %d..%d; steps compared: %d; differing: %d"
          % (ckpt_s, restore_s, max(src), first, last, len(got) + len(src), len(differ)))
    assert differ == []
    kinds = [n for n, _ in commands(cri.record, c2)]
    assert "restore" in kinds and "create" not in kinds, kinds


@pytest.mark.skipif(len(glob.glob("/dev/nvidia[0-9]*")) < 2, reason="needs two GPUs")
def test_cri_restore_onto_the_gpu_the_new_pod_was_given(gcri, workdir):
    """KEP-6274's mapping: the old-to-new GPU map comes from the destination's actual
    allocation. The source pod has GPU 0; the new pod, restored from the CRI checkpoint
    archive, is given only GPU 1 (its spec's devices): runc-grit maps the checkpoint's GPU
    (by UUID, from its manifest) onto it, the job runs on GPU 1 (NVML) and its steps stay
    bit-identical."""
    import subprocess

    from runc_grit.gpu import discovery
    cri = gcri
    log = os.path.join(cri.logs, "g.log")
    pod1, c1 = gpu_container(cri, "src", cri.ref, os.path.join(workdir, "pod1"), gpus=[0])
    cri.start(c1)
    wait_steps(log, 10, timeout=300)
    archive = os.path.join(workdir, "ckpt.tar")
    cri.checkpoint(c1, archive, timeout=600)
    at = max(read_steps(log))
    cri.remove_pod(pod1)
    cri.pods.remove(pod1)
    os.rename(log, log + ".source")
    open(log, "w").close()
    pod2, c2 = gpu_container(cri, "dst", archive, os.path.join(workdir, "pod2"), gpus=[1])
    cri.start(c2)
    last = wait_steps(log, at + 15, timeout=300)
    p = subprocess.run(GRIT_STATE + [c2], capture_output=True, env=cri.grit.env, timeout=60)
    import json
    pid = json.loads(p.stdout)["pid"]
    inv = discovery.inventory()
    gpu1 = [d["uuid"] for d in inv["devices"] if d["index"] == 1]
    assert [u for u, _ in inv["apps"][pid]] == gpu1, inv["apps"]
    got = read_steps(log)
    last = max(got)
    ref = reference(log, last)
    differ = [s for s in got if got[s][0] != ref[s][0]]
    print("remapped CRI restore onto GPU 1 (%s): steps %d..%d, differing: %d"
          % (gpu1[0], min(got), last, len(differ)))
    assert differ == []
