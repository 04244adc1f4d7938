"""GPU migration for real: a PyTorch job in a runc container, through runc-grit, on an NVIDIA
GPU with the CUDA checkpoint API. Skipped without one. Run on the device machine:
    bash bench/gpu/device_run.sh
Every step value the containers print is compared, as float hex, with an uninterrupted run.
"""
import os
import shutil
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu.gpuctr import APP_DIR, make_gpu_bundle, read_steps, wait_steps

from conftest import Env


def _gpu_missing():
    if os.geteuid() != 0 or not shutil.which("runc") or not shutil.which("criu"):
        return "needs root, runc and criu"
    if not os.path.exists("/dev/nvidia0"):
        return "no NVIDIA GPU"
    try:
        import torch  # noqa: F401
    except ImportError:
        return "no torch"
    try:
        from runc_grit.gpu.driver import open_backend
        open_backend()
    except Exception as e:  # noqa: BLE001
        return "no CUDA checkpoint API: %s" % e
    return None


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_gpu_missing() is not None,
                                                  reason=str(_gpu_missing()))]
MIB = int(os.environ.get("GPU_TEST_MIB", "2048"))


@pytest.fixture
def g(workdir):
    e = Env(workdir, {"cuda": {"lock_timeout_ms": 20000}})
    e.logs = os.path.join(workdir, "logs")
    os.makedirs(e.logs)
    yield e
    e.cleanup()


def helper():
    from runc_grit.gpu.helper import BuiltinHelper
    return BuiltinHelper()


def start(e, name, cid, log, ann=None, env=None, devices=None):
    b = make_gpu_bundle(os.path.join(e.dir, name), e.logs, log,
                        dict({"APP_MIB": str(MIB), "APP_TICK": "0.05"}, **(env or {})), ann,
                        devices)
    p, out = e.grit.create_with_pipes(b, cid)
    assert p.returncode == 0, e.grit.log_error(b)
    assert e.grit.run(b, "start", cid).returncode == 0
    e.outputs = getattr(e, "outputs", {})
    e.outputs[cid] = out
    return b


def diagnose(e, cid):
    """What a stalled container shows: status, CUDA state, the hook records, thread states,
    and the app's Python stacks (SIGUSR1 -> faulthandler, on its stderr)."""
    import signal
    st = e.grit.state(cid)
    print("state:", st and st["status"])
    for name in ("cuda-restore.json", "hooks.jsonl"):
        try:
            print(name + ":", open(os.path.join(e.state_dir, cid, name)).read().strip())
        except OSError:
            pass
    if st and st["status"] == "running":
        pid = st["pid"]
        print("cuda state:", helper().state(pid))
        for tid in sorted(os.listdir("/proc/%d/task" % pid), key=int):
            try:
                wchan = open("/proc/%d/task/%s/wchan" % (pid, tid)).read()
                stat = open("/proc/%d/task/%s/stat" % (pid, tid)).read().split(")")[1].split()[0]
                print("  tid", tid, stat, wchan)
            except OSError:
                pass
        os.kill(pid, signal.SIGUSR1)
        time.sleep(2)
    out = getattr(e, "outputs", {}).get(cid)
    if out is not None:
        print("output:\n" + "\n".join(out.lines[-60:]))


def ckpt(e, b, cid, image, *extra):
    t = time.monotonic()
    pids = []
    st = e.grit.state(cid)
    if st:
        from runc_grit.gpu.discovery import container_pids
        pids = container_pids(st["pid"])
    p = e.grit.run(b, "checkpoint", "--image-path", image, "--work-path", image + "-w", *extra, cid,
                   timeout=600)
    if p.returncode != 0:  # diagnostics for the record
        try:
            lines = open(os.path.join(image + "-w", "dump.log")).read().splitlines()
            print("dump.log errors:", [ln for ln in lines if "Error" in ln or "rror (" in ln][-8:])
        except OSError:
            pass
        for pid in pids:
            for tid in sorted(os.listdir("/proc/%d/task" % pid)) if os.path.exists("/proc/%d" % pid) else []:
                s = open("/proc/%d/task/%s/status" % (pid, tid)).read()
                print(pid, tid, [ln for ln in s.splitlines() if ln.split(":")[0] in ("Name", "State", "TracerPid")])
    return p, time.monotonic() - t


def reference(log, steps, env=None):
    ref = os.path.join(os.path.dirname(log), "ref-" + os.path.basename(log))
    e = dict(os.environ, APP_MIB=str(MIB), APP_TICK="0", APP_STEPS=str(steps))
    e.update(env or {})
    subprocess.run([sys.executable, os.path.join(APP_DIR, "app.py"), ref], env=e, check=True,
                   timeout=600)
    return read_steps(ref)


def test_migrate_chain_leave_running_and_failed_dump(g):
    log = os.path.join(g.logs, "a.log")
    b = start(g, "src", "src", "a.log")
    wait_steps(log, 10)
    img1 = os.path.join(g.ckroot, "img1")
    p, dt = ckpt(g, b, "src", img1)
    assert p.returncode == 0, g.grit.log_error(b)
    s1 = max(read_steps(log))
    print("checkpoint 1: %.2fs at step %d" % (dt, s1))
    g.grit.run(b, "delete", "src")
    # 1. restore into a new container id via grit.dev/restore-from
    t = time.monotonic()
    b1 = start(g, "dst1", "dst1", "a.log", {"grit.dev/restore-from": img1})
    print("restore 1: %.2fs" % (time.monotonic() - t))
    wait_steps(log, s1 + 5)
    pid1 = g.grit.state("dst1")["pid"]
    assert helper().state(pid1) == "running"
    assert g.cgroups_missing("dst1") == []
    # 2. chain: checkpoint the restored container, restore again
    img2 = os.path.join(g.ckroot, "img2")
    p, dt = ckpt(g, b1, "dst1", img2)
    assert p.returncode == 0, g.grit.log_error(b1)
    s2 = max(read_steps(log))
    print("checkpoint 2 (of a restored container): %.2fs at step %d" % (dt, s2))
    g.grit.run(b1, "delete", "dst1")
    b2 = start(g, "dst2", "dst2", "a.log", {"grit.dev/restore-from": img2})
    wait_steps(log, s2 + 5)
    # 3. --leave-running: the source continues and its CUDA state is running
    img3 = os.path.join(g.ckroot, "img3")
    p, dt = ckpt(g, b2, "dst2", img3, "--leave-running")
    assert p.returncode == 0, g.grit.log_error(b2)
    s3 = max(read_steps(log))
    print("checkpoint 3 (--leave-running): %.2fs at step %d" % (dt, s3))
    wait_steps(log, s3 + 5)
    assert helper().state(g.grit.state("dst2")["pid"]) == "running"
    s3b = max(read_steps(log))
    g.grit.run(b2, "delete", "--force", "dst2")
    time.sleep(1)
    # the leave-running image restores (to the step it was taken at; log lines after s3
    # from dst2 are overwritten by the restored run's identical ones)
    b3 = start(g, "dst3", "dst3", "a.log", {"grit.dev/restore-from": img3})
    wait_steps(log, s3b + 5)
    pid3 = g.grit.state("dst3")["pid"]
    # 4. a dump made to fail (image dir on a full filesystem): the source keeps computing
    tiny = os.path.join(g.dir, "tiny")
    os.makedirs(tiny)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", tiny], check=True)
    try:
        p, dt = ckpt(g, b3, "dst3", os.path.join(tiny, "img"))
        assert p.returncode != 0
        print("failed dump: %.2fs: %s" % (dt, g.grit.log_error(b3)))
    finally:
        subprocess.run(["umount", "-l", tiny])
    assert helper().state(pid3) == "running"
    s4 = max(read_steps(log))
    wait_steps(log, s4 + 5)
    g.grit.run(b3, "delete", "--force", "dst3")
    # every step printed, across 4 containers, equals the uninterrupted run, bit for bit
    seen = read_steps(log)
    ref = reference(log, max(seen))
    diff = [n for n in seen if seen[n][0] != ref[n][0]]
    print("steps compared: %d (1..%d); differing: %d" % (len(seen), max(seen), len(diff)))
    assert not diff, [(n, seen[n][0], ref[n][0]) for n in diff[:5]]
    assert sorted(seen) == list(range(1, max(seen) + 1))


def test_two_cuda_processes_parent_and_child(g):
    log = os.path.join(g.logs, "pc.log")
    b = start(g, "pc", "pc", "pc.log", env={"APP_CHILD": "1", "APP_MIB": "1024"})
    wait_steps(log, 10)
    wait_steps(log + ".child", 10)
    img = os.path.join(g.ckroot, "pc")
    p, dt = ckpt(g, b, "pc", img)
    assert p.returncode == 0, g.grit.log_error(b)
    import json
    man = json.load(open(os.path.join(img, "grit-manifest.json")))
    procs = man["gpu"]["processes"]
    print("two-process checkpoint: %.2fs; manifest gpu: %s" % (dt, json.dumps(man["gpu"])))
    assert len(procs) == 2 and all((p_["vram_bytes"] or 0) >= 1 << 30 for p_ in procs)
    s_p, s_c = max(read_steps(log)), max(read_steps(log + ".child"))
    g.grit.run(b, "delete", "pc")
    start(g, "pc2", "pc2", "pc.log", {"grit.dev/restore-from": img},
          env={"APP_CHILD": "1", "APP_MIB": "1024"})
    wait_steps(log, s_p + 5)
    wait_steps(log + ".child", s_c + 5)
    g.grit.run(None, "delete", "--force", "pc2")
    for path, env in ((log, {"APP_MIB": "1024"}), (log + ".child", {"APP_MIB": "1024", "APP_SEED": "1"})):
        seen = read_steps(path)
        ref = reference(path, max(seen), env)
        assert all(seen[n][0] == ref[n][0] for n in seen), path
        print("%s: %d steps bit-identical" % (os.path.basename(path), len(seen)))


def test_destination_without_matching_gpu_is_refused(g):
    """A manifest naming another GPU model is refused before CRIU runs."""
    import json
    from runc_grit.checkpoint import manifest
    log = os.path.join(g.logs, "m.log")
    b = start(g, "m", "m", "m.log", env={"APP_MIB": "256"})
    wait_steps(log, 3)
    img = os.path.join(g.ckroot, "m")
    assert ckpt(g, b, "m", img)[0].returncode == 0
    g.grit.run(b, "delete", "m")
    m = json.load(open(os.path.join(img, manifest.NAME)))
    m["gpu"]["devices"][0]["name"] = "NVIDIA Imaginary 9000"
    from runc_grit.checkpoint import integrity  # re-signed: only the GPU check is left to refuse
    manifest.write(img, integrity.load_signer(os.path.join(g.dir, "node.key")).sign(m))
    b2 = make_gpu_bundle(os.path.join(g.dir, "m2"), g.logs, "m.log", {}, {"grit.dev/restore-from": img})
    p, _ = g.grit.create_with_pipes(b2, "m2")
    assert p.returncode == 1
    assert "NVIDIA Imaginary 9000" in g.grit.log_error(b2)
    assert g.grit.state("m2") is None


def test_restore_onto_another_gpu_by_uuid_remap(g):
    """Checkpointed on GPU 0, restored into a container that has only GPU 1: runc-grit maps
    the source GPU's UUID onto the destination's (cuCheckpointProcessRestore GPU pairs)."""
    import json
    from runc_grit.gpu import discovery
    inv = discovery.inventory()
    if not inv or len(inv["devices"]) < 2:
        pytest.skip("needs 2 GPUs (nvidia-h200-x2)")
    d0, d1 = sorted(inv["devices"], key=lambda d: d["index"])[:2]
    log = os.path.join(g.logs, "r.log")
    env = {"APP_MIB": "1024"}
    b = start(g, "r0", "r0", "r.log", env=env, devices=[d0["minor"]])
    wait_steps(log, 10)
    pid0 = g.grit.state("r0")["pid"]
    assert [u for u, _ in discovery.inventory()["apps"][pid0]] == [d0["uuid"]]
    img = os.path.join(g.ckroot, "r")
    p, dt = ckpt(g, b, "r0", img)
    assert p.returncode == 0, g.grit.log_error(b)
    man = json.load(open(os.path.join(img, "grit-manifest.json")))
    assert [d["uuid"] for d in man["gpu"]["devices"]] == [d0["uuid"]]
    s = max(read_steps(log))
    g.grit.run(b, "delete", "r0")
    b1 = start(g, "r1", "r1", "r.log", {"grit.dev/restore-from": img}, env=env,
               devices=[d1["minor"]])
    try:
        wait_steps(log, s + 10, timeout=60)
    except AssertionError:
        diagnose(g, "r1")
        raise
    pid1 = g.grit.state("r1")["pid"]
    rec = json.load(open(os.path.join(g.state_dir, "r1", "cuda-restore.json")))
    print("remap: %s -> %s; device_pairs %s" % (d0["uuid"], d1["uuid"], rec["device_pairs"]))
    assert [tuple(x) for x in rec["device_pairs"]] == [(d0["uuid"], d1["uuid"])]
    assert helper().state(pid1) == "running"
    assert [u for u, _ in discovery.inventory()["apps"][pid1]] == [d1["uuid"]]
    g.grit.run(b1, "delete", "--force", "r1")
    seen = read_steps(log)
    ref = reference(log, max(seen), env)
    assert all(seen[n][0] == ref[n][0] for n in seen)
    print("remapped run: %d steps bit-identical" % len(seen))


def _restore_into(g, name, log, img, devices, ann=None, env=None, hook=False):
    """A restore of img into a new GPU bundle: its GPU device nodes, annotations, env, and
    (hook) an NVIDIA prestart hook (a no-op stand-in for nvidia-container-runtime-hook)."""
    import json
    b = make_gpu_bundle(os.path.join(g.dir, name), g.logs, log,
                        dict({"APP_MIB": "256", "APP_TICK": "0.05"}, **(env or {})),
                        dict({"grit.dev/restore-from": img}, **(ann or {})), devices)
    if hook:
        path = os.path.join(g.dir, "nvidia-container-runtime-hook")
        with open(path, "w") as f:
            f.write("#!/bin/sh\nexit 0\n")
        os.chmod(path, 0o755)
        p = os.path.join(b, "config.json")
        spec = json.load(open(p))
        spec["hooks"] = {"prestart": [{"path": path, "args": [path, "prestart"]}]}
        json.dump(spec, open(p, "w"))
    p, out = g.grit.create_with_pipes(b, name)
    return b, p


def _gpu_pids():
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout
    return sorted(int(x) for x in out.split() if x.strip().isdigit())


def test_a_spec_that_grants_no_gpu_is_refused_and_nothing_reaches_the_gpu(g):
    log = os.path.join(g.logs, "ng.log")
    b = start(g, "ng", "ng", "ng.log", env={"APP_MIB": "256"})
    wait_steps(log, 3)
    img = os.path.join(g.ckroot, "ng")
    assert ckpt(g, b, "ng", img)[0].returncode == 0
    g.grit.run(b, "delete", "ng")
    before = _gpu_pids()
    b2, p = _restore_into(g, "ng2", "ng.log", img, devices=[])
    assert p.returncode != 0
    err = g.grit.log_error(b2)
    print("refused:", err)
    assert "CUDA state of 1 process(es) on 1 GPU(s)" in err and "grants no GPU" in err, err
    assert g.grit.state("ng2") is None and not os.path.exists(os.path.join(g.state_dir, "ng2"))
    print("GPU processes before %s, after %s" % (before, _gpu_pids()))
    assert _gpu_pids() == before


@pytest.mark.parametrize("way", ["linux.devices", "CDI", "NVIDIA_VISIBLE_DEVICES+hook"])
def test_a_spec_granting_gpu0_restores_through_each_way(g, way):
    """GPU 0 granted as the NVIDIA stack grants it: a device node in linux.devices, a CDI
    device in the annotations, NVIDIA_VISIBLE_DEVICES with the NVIDIA hook. The restored job
    continues bit-identical, with /dev/nvidia0 and no other GPU node."""
    from runc_grit.gpu import discovery
    d0 = sorted(discovery.inventory()["devices"], key=lambda d: d["index"])[0]
    log = os.path.join(g.logs, "w.log")
    env = {"APP_MIB": "256"}
    b = start(g, "w0", "w0", "w.log", env=env, devices=[d0["minor"]])
    wait_steps(log, 5)
    img = os.path.join(g.ckroot, "w")
    assert ckpt(g, b, "w0", img)[0].returncode == 0
    s = max(read_steps(log))
    g.grit.run(b, "delete", "w0")
    kw = {"linux.devices": dict(devices=[d0["minor"]]),
          "CDI": dict(devices=[], ann={"cdi.k8s.io/gpu": "nvidia.com/gpu=0"}),
          "NVIDIA_VISIBLE_DEVICES+hook": dict(devices=[], env={"NVIDIA_VISIBLE_DEVICES": "0"},
                                              hook=True)}[way]
    b1, p = _restore_into(g, "w1", "w.log", img, **kw)
    assert p.returncode == 0, g.grit.log_error(b1)
    assert g.grit.run(b1, "start", "w1").returncode == 0
    try:
        wait_steps(log, s + 10, timeout=60)
    except AssertionError:
        diagnose(g, "w1")
        raise
    pid = g.grit.state("w1")["pid"]
    nodes = sorted(n for n in os.listdir("/proc/%d/root/dev" % pid)
                   if n.startswith("nvidia") and n[6:].isdigit())
    assert nodes == ["nvidia%d" % d0["minor"]], nodes
    g.grit.run(b1, "delete", "--force", "w1")
    seen = read_steps(log)
    ref = reference(log, max(seen), env)
    assert all(seen[n][0] == ref[n][0] for n in seen)
    print("%s: restored through %s, %d steps bit-identical" % (way, way, len(seen)))
