"""GPU checkpoint/restore: runc-grit against the raw baseline, in the same run.

For each size (GiB of VRAM held by tests/gpu/app.py):
  raw    a plain process: CUDA lock+checkpoint (driver API), `criu dump`; `criu restore -d`,
         CUDA restore+unlock.
  grit   the same app in a runc container: `runc-grit checkpoint` wall time, and the
         restore-on-create `runc-grit create` wall time (includes the post-resume hook).
Prints a Markdown table (also written to the path in argv[1]).
Usage: python3 bench/gpu/bench_gpu.py OUT.md 1 4 16
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))

from gpu.gpuctr import APP_DIR, make_gpu_bundle, read_steps  # noqa: E402

from runc_grit.gpu.helper import BuiltinHelper  # noqa: E402

from conftest import Env  # noqa: E402


def wait_steps(path, n, timeout=600):
    end = time.time() + timeout
    while time.time() < end:
        s = read_steps(path)
        if s and max(s) >= n:
            return max(s)
        time.sleep(0.1)
    raise RuntimeError("no progress in %s" % path)


def du(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def raw(size_gib, work):
    h = BuiltinHelper()
    log = os.path.join(work, "raw.log")
    env = dict(os.environ, APP_MIB=str(size_gib * 1024), APP_TICK="0.05")
    p = subprocess.Popen([sys.executable, os.path.join(APP_DIR, "app.py"), log], env=env,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    wait_steps(log, 3)
    r = {}
    t = time.monotonic(); h.lock(p.pid, 20000); h.checkpoint(p.pid); r["cuda_ckpt"] = time.monotonic() - t
    img = os.path.join(work, "raw-img")
    os.makedirs(img)
    t = time.monotonic()
    subprocess.run(["criu", "dump", "-t", str(p.pid), "-D", img, "--shell-job", "-o", "dump.log"],
                   check=True)
    r["criu_dump"] = time.monotonic() - t
    p.wait()
    r["image"] = du(img)
    t = time.monotonic()
    subprocess.run(["criu", "restore", "-D", img, "--shell-job", "-d", "-o", "restore.log"],
                   check=True)
    r["criu_restore"] = time.monotonic() - t
    t = time.monotonic(); h.restore(p.pid); h.unlock(p.pid); r["cuda_restore"] = time.monotonic() - t
    s = max(read_steps(log))
    wait_steps(log, s + 2)
    os.kill(p.pid, signal.SIGKILL)
    shutil.rmtree(img)
    return r


def grit(size_gib, work):
    e = Env(os.path.join(work, "g"))
    logs = os.path.join(work, "logs")
    os.makedirs(logs)
    env = {"APP_MIB": str(size_gib * 1024), "APP_TICK": "0.05"}
    b = make_gpu_bundle(os.path.join(e.dir, "src"), logs, "g.log", env)
    p, _ = e.grit.create_with_pipes(b, "src")
    assert p.returncode == 0, e.grit.log_error(b)
    e.grit.run(b, "start", "src")
    log = os.path.join(logs, "g.log")
    wait_steps(log, 3)
    img = os.path.join(e.ckroot, "img")
    r = {}
    t = time.monotonic()
    p = e.grit.run(b, "checkpoint", "--image-path", img, "--work-path", img + "-w", "src", timeout=900)
    r["ckpt"] = time.monotonic() - t
    assert p.returncode == 0, e.grit.log_error(b)
    m = json.load(open(os.path.join(img, "grit-manifest.json")))
    r["timings"] = m["timings"]
    r["image"] = du(img)
    e.grit.run(b, "delete", "src")
    s = max(read_steps(log))
    b2 = make_gpu_bundle(os.path.join(e.dir, "dst"), logs, "g.log", env, {"grit.dev/restore-from": img})
    t = time.monotonic()
    p, _ = e.grit.create_with_pipes(b2, "dst")
    r["restore"] = time.monotonic() - t
    assert p.returncode == 0, e.grit.log_error(b2)
    e.grit.run(b2, "start", "dst")
    st_dir = os.path.join(e.state_dir, "dst")
    r["restore_timings"] = dict(json.load(open(os.path.join(st_dir, "cuda-restore.json")))["timings"],
                                runtime_restore_s=json.load(open(os.path.join(st_dir, "state.json")))
                                .get("restore_seconds"))
    wait_steps(log, s + 2)
    e.grit.run(b2, "delete", "--force", "dst")
    e.cleanup()
    shutil.rmtree(img)
    return r


def main():
    out = sys.argv[1]
    sizes = [int(x) for x in sys.argv[2:]] or [1, 4, 16]
    rows = []
    for gib in sizes:
        work = "/tmp/rg-bench-%d" % gib
        shutil.rmtree(work, ignore_errors=True)
        os.makedirs(work)
        a = raw(gib, work)
        g = grit(gib, work)
        base_c = a["cuda_ckpt"] + a["criu_dump"]
        base_r = a["criu_restore"] + a["cuda_restore"]
        rows.append((gib, a, g, base_c, base_r))
        print(json.dumps({"gib": gib, "raw": a, "grit": g}), flush=True)
        shutil.rmtree(work, ignore_errors=True)
    lines = ["| VRAM | raw CUDA ckpt | raw criu dump | raw total | runc-grit checkpoint | ratio | "
             "raw criu restore | raw CUDA restore | raw total | runc-grit restore | ratio | image | ckpt GB/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for gib, a, g, bc, br in rows:
        lines.append("| %d GiB | %.2f s | %.2f s | %.2f s | %.2f s | %.2fx | %.2f s | %.2f s | %.2f s | %.2f s | %.2fx | %.1f GB | %.2f |" % (
            gib, a["cuda_ckpt"], a["criu_dump"], bc, g["ckpt"], g["ckpt"] / bc,
            a["criu_restore"], a["cuda_restore"], br, g["restore"], g["restore"] / br,
            g["image"] / 1e9, g["image"] / 1e9 / g["ckpt"]))
    text = "\n".join(lines) + "\n"
    print(text)
    with open(out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
