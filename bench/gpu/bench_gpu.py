"""GPU migration downtime: runc-grit against raw driver + CRIU, in the same run, per path.

For each size (GiB of VRAM held by tests/gpu/app.py) and each variant:
  raw     a plain process: CUDA lock+checkpoint (driver API), `criu dump`; `criu restore -d`,
          CUDA restore+unlock. Downtime = the four steps.
  grit    the same app in a runc container: `runc-grit checkpoint` wall time, then the
          restore-on-create `runc-grit create` wall time into a new container (staging copy,
          signature and digests, privilege check, CRIU, the post-resume CUDA restore).
          Downtime = checkpoint + restore.
  grit2   grit with the VRAM split between two CUDA processes, a parent and its child (the
          app's APP_CHILD=1), each holding half: runc-grit checkpoints and restores them at
          once.
  registry  grit, then the same checkpoint pushed (`runc-grit push`) to Debian's
          docker-registry on loopback (auth on, storage beside the images) and restored into
          a third container from `grit.dev/restore-from: oci://...` with a cold pull cache:
          push and pull throughput, restore-from-registry against restore-from-local-dir.
  grit-before  grit with `page_digests: before`: every digest checked before CRIU runs (the
          default, `overlap`, checks the memory pages beside CRIU and gates the resume).
  coldstart  the cold-start use case: tests/gpu/infer.py (an inference-like server) loads
          SIZE GiB of fp16 weights from a file on local disk (/var/tmp, page cache dropped
          first), warms up (CUDA graph captured) and answers its first request: that time
          from `runc-grit create` on, then again with the weights in the page cache; the warm
          server is checkpointed through runc-grit and restored into a new container, and the
          time from the restore's create to its first answer is compared with the cold start
          (target: under a third). The restored server's answer to a seed the source answered
          before the checkpoint must be the same, bit for bit.
  stream  raw, the pages sent by `criu dump --page-server` to `criu page-server` on loopback:
          no dump to disk then read; the receiving side writes the image the restore reads.
Variants: CRIU binaries (BENCH_CRIUS="4.1=/path 4.2=/path 4.3=/path"; default: the criu on
PATH), where the images go (BENCH_WHERE="disk tmpfs hugetmpfs": /var/tmp, the page cache, no
fsync; /dev/shm; a tmpfs of its own mounted with huge=always, 2 MiB pages for the image files),
the node's transparent huge page mode for the run (BENCH_THP="madvise always": written to
/sys/kernel/mm/transparent_hugepage/enabled, the node's mode is put back at the end; default:
left as it is), and `sync` after the dump (BENCH_SYNC=1: what a commit to disk would cost).
Prints one JSON line per run and a Markdown table (written to argv[1]).
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

from gpu.gpuctr import APP_DIR, make_gpu_bundle, read_steps, wait_steps  # noqa: E402

from runc_grit.gpu.helper import BuiltinHelper  # noqa: E402

from conftest import Env  # noqa: E402
from distribution import free_port  # noqa: E402

WHERE = {"disk": "/var/tmp", "tmpfs": "/dev/shm", "hugetmpfs": "/mnt/rg-bench-huge"}
THP = "/sys/kernel/mm/transparent_hugepage/enabled"


def thp_mode():
    with open(THP) as f:
        return f.read().split("[", 1)[1].split("]", 1)[0]


def set_thp(mode):
    if mode and mode != thp_mode():
        with open(THP, "w") as f:
            f.write(mode)


def mount_huge_tmpfs():
    d = WHERE["hugetmpfs"]
    if not os.path.ismount(d):
        os.makedirs(d, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "huge=always,size=100g,mode=0700",
                        "rg-bench-huge", d], check=True)


def du(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def start_app(size_gib, log):
    env = dict(os.environ, APP_MIB=str(size_gib * 1024), APP_TICK="0.05")
    p = subprocess.Popen([sys.executable, os.path.join(APP_DIR, "app.py"), log], env=env,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    wait_steps(log, 3, timeout=600)
    return p


def raw(size_gib, work, criu="criu", stream=False, sync=False):
    h = BuiltinHelper()
    log = os.path.join(work, "raw.log")
    p = start_app(size_gib, log)
    r = {}
    t = time.monotonic(); h.lock(p.pid, 20000); h.checkpoint(p.pid); r["cuda_ckpt"] = time.monotonic() - t
    img = os.path.join(work, "raw-img")
    os.makedirs(img)
    server = None
    extra = []
    if stream:  # the receiving node's CRIU writes what the dumping one sends
        port = free_port()
        recv = os.path.join(work, "recv-img")
        os.makedirs(recv)
        server = subprocess.Popen([criu, "page-server", "-D", recv, "--address", "127.0.0.1",
                                   "--port", str(port), "-o", "ps.log"])
        time.sleep(0.3)
        extra = ["--page-server", "--address", "127.0.0.1", "--port", str(port)]
    t = time.monotonic()
    subprocess.run([criu, "dump", "-t", str(p.pid), "-D", img, "--shell-job", "-o", "dump.log"]
                   + extra, check=True)
    if server is not None:
        server.wait(120)
        for n in os.listdir(img):  # the rest of the image, beside the streamed pages
            if not os.path.exists(os.path.join(recv, n)):
                shutil.move(os.path.join(img, n), os.path.join(recv, n))
        shutil.rmtree(img)
        img = recv
    if sync:
        os.sync()
    r["criu_dump"] = time.monotonic() - t
    p.wait()
    r["image"] = du(img)
    t = time.monotonic()
    subprocess.run([criu, "restore", "-D", img, "--shell-job", "-d", "-o", "restore.log"],
                   check=True)
    r["criu_restore"] = time.monotonic() - t
    t = time.monotonic(); h.restore(p.pid); h.unlock(p.pid); r["cuda_restore"] = time.monotonic() - t
    s = max(read_steps(log))
    wait_steps(log, s + 2, timeout=600)
    os.kill(p.pid, signal.SIGKILL)
    shutil.rmtree(img)
    r["checkpoint"] = r["cuda_ckpt"] + r["criu_dump"]
    r["restore"] = r["criu_restore"] + r["cuda_restore"]
    return r


GRIT_MODES = ("grit", "grit2", "grit-before", "registry")


def write_weights(path, size_gib):
    """size_gib GiB of fp16 values (normal, sd 0.02), a 64 MiB block repeated, fsynced."""
    import numpy
    block = (numpy.random.default_rng(0).standard_normal(32 << 20, dtype=numpy.float32)
             * 0.02).astype(numpy.float16).tobytes()
    with open(path, "wb") as f:
        for _ in range(size_gib * 16):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def ask(rdir, rid, seed, alive, timeout=600):
    """Write request rid (seed) into rdir; (seconds until the answer, the answer's fields).
    alive(): whether the server still runs (asked every second)."""
    t = time.monotonic()
    tmp = os.path.join(rdir, ".req-" + rid)
    with open(tmp, "w") as f:
        f.write("%d\n" % seed)
    os.rename(tmp, os.path.join(rdir, "req-" + rid))
    resp = os.path.join(rdir, "resp-" + rid)
    n = 0
    while not os.path.exists(resp):
        if time.monotonic() - t > timeout:
            raise RuntimeError("no answer to request %s in %ds" % (rid, timeout))
        n += 1
        if n % 1000 == 0 and not alive():
            raise RuntimeError("the server ended before it answered request %s" % rid)
        time.sleep(0.001)
    with open(resp) as f:
        return time.monotonic() - t, f.read().split()


def coldstart(size_gib, work, criu=None):
    conf = {"cuda": {"lock_timeout_ms": 20000}, "staging_dir": os.path.join(work, "staging")}
    if criu and criu != "criu":
        conf["criu"] = criu
    e = Env(os.path.join(work, "g"), conf)
    disk = os.path.join(WHERE["disk"], "rg-cold")  # the weights and the requests: local disk
    shutil.rmtree(disk, ignore_errors=True)
    os.makedirs(disk)
    weights = os.path.join(disk, "weights.bin")
    img = os.path.join(e.ckroot, "img")
    env = {"INFER_WEIGHTS": "/logs/weights.bin", "INFER_DIR": "/logs"}
    args = ["python3", "/app/infer.py"]
    bundles, outs = {}, {}
    r = {}

    def running(cid):
        if (e.grit.state(cid) or {}).get("status") == "running":
            return True
        time.sleep(0.5)
        raise RuntimeError("container %s stopped: %s" % (cid, outs[cid].lines[-8:]))

    def serve(cid, annotations=None):
        """Create + start cid, ask seed 1 at once: seconds from create to the answer."""
        b = bundles[cid] = make_gpu_bundle(os.path.join(e.dir, cid), disk, None, env,
                                           annotations, args=args)
        t = time.monotonic()
        p, outs[cid] = e.grit.create_with_pipes(b, cid)
        created = time.monotonic() - t
        assert p.returncode == 0, e.grit.log_error(b)
        assert e.grit.run(b, "start", cid).returncode == 0
        _, fields = ask(disk, cid + "-1", 1, lambda: running(cid))
        took = time.monotonic() - t
        for n in os.listdir(disk):  # what the server wrote once ready (a restored one: none)
            if n.startswith("phases-"):
                with open(os.path.join(disk, n)) as f:
                    r.setdefault("phases", {})[cid] = json.load(f)
                os.unlink(os.path.join(disk, n))
        return took, created, fields

    try:
        t = time.monotonic()
        write_weights(weights, size_gib)
        r.update(weights_written_s=time.monotonic() - t, weights_bytes=os.path.getsize(weights))
        drop_caches()
        r["cold_s"], _, _ = serve("cold")
        e.grit.run(bundles.pop("cold"), "delete", "--force", "cold")
        r["warm_s"], _, _ = serve("warm")
        _, ref = ask(disk, "ref", 2, lambda: running("warm"))
        t = time.monotonic()
        p = e.grit.run(bundles["warm"], "checkpoint", "--image-path", img, "--work-path",
                       img + "-w", "warm", timeout=900)
        r["checkpoint"] = time.monotonic() - t
        assert p.returncode == 0, e.grit.log_error(bundles["warm"])
        r["image"] = du(img)
        e.grit.run(bundles.pop("warm"), "delete", "warm")
        os.unlink(weights)  # the restore needs no weights file
        r["restore_first_answer_s"], r["restore"], _ = serve(
            "restored", {"grit.dev/restore-from": img})
        _, again = ask(disk, "again", 2, lambda: running("restored"))
        r["same_answer"] = again[:2] == ref[:2]
        r["answers"] = [ref, again]
        r["ratio"] = r["restore_first_answer_s"] / r["cold_s"]
        return r
    except AssertionError as ex:
        raise RuntimeError("%s %s" % (ex, criu_errors(img + "-w"))) from None
    finally:
        for cid, b in bundles.items():
            e.grit.run(b, "delete", "--force", cid)
        e.cleanup()
        shutil.rmtree(img, ignore_errors=True)
        shutil.rmtree(disk, ignore_errors=True)


def grit(size_gib, work, criu=None, sync=False, procs=1, registry=False, page_digests=None):
    conf = {"cuda": {"lock_timeout_ms": 20000}, "staging_dir": os.path.join(work, "staging")}
    if page_digests:
        conf["page_digests"] = page_digests
    if criu and criu != "criu":
        conf["criu"] = criu
    e = Env(os.path.join(work, "g"), conf)
    img = os.path.join(e.ckroot, "img")
    bundles = {}
    try:
        r = _grit(e, size_gib, work, img, bundles, sync, procs)
        if registry:
            r["registry"] = _registry(e, conf, size_gib, work, img, bundles)
        return r
    except AssertionError as ex:  # with what CRIU said, when it said something
        raise RuntimeError("%s %s" % (ex, criu_errors(img + "-w"))) from None
    finally:
        for cid, b in bundles.items():
            e.grit.run(b, "delete", "--force", cid)
        e.cleanup()
        shutil.rmtree(img, ignore_errors=True)


def criu_errors(work_dir):
    out = []
    for name in ("dump.log", "restore.log"):
        try:
            with open(os.path.join(work_dir, name)) as f:
                out += [ln.strip() for ln in f if "Error" in ln][-4:]
        except OSError:
            pass
    return out


def _grit(e, size_gib, work, img, bundles, sync, procs):
    logs = os.path.join(work, "logs")
    os.makedirs(logs)
    env = {"APP_MIB": str(size_gib * 1024 // procs), "APP_TICK": "0.05"}
    if procs == 2:
        env["APP_CHILD"] = "1"
    b = bundles["src"] = make_gpu_bundle(os.path.join(e.dir, "src"), logs, "g.log", env)
    p, _ = e.grit.create_with_pipes(b, "src")
    assert p.returncode == 0, e.grit.log_error(b)
    e.grit.run(b, "start", "src")
    log = os.path.join(logs, "g.log")
    wait_steps(log, 3, timeout=600)
    if procs == 2:
        wait_steps(log + ".child", 3, timeout=600)
    r = {}
    t = time.monotonic()
    p = e.grit.run(b, "checkpoint", "--image-path", img, "--work-path", img + "-w", "src", timeout=900)
    if sync:
        os.sync()
    r["checkpoint"] = time.monotonic() - t
    assert p.returncode == 0, e.grit.log_error(b)
    m = json.load(open(os.path.join(img, "grit-manifest.json")))
    r["timings"] = m["timings"]
    r["image"] = du(img)
    e.grit.run(b, "delete", "src")
    del bundles["src"]
    s = max(read_steps(log))
    b2 = bundles["dst"] = make_gpu_bundle(os.path.join(e.dir, "dst"), logs, "g.log", env,
                                          {"grit.dev/restore-from": img})
    t = time.monotonic()
    p, _ = e.grit.create_with_pipes(b2, "dst")
    r["restore"] = time.monotonic() - t
    assert p.returncode == 0, e.grit.log_error(b2)
    e.grit.run(b2, "start", "dst")
    st_dir = os.path.join(e.state_dir, "dst")
    state = json.load(open(os.path.join(st_dir, "state.json")))
    r["restore_timings"] = dict(json.load(open(os.path.join(st_dir, "cuda-restore.json")))["timings"],
                                runtime_restore_s=state.get("restore_seconds"),
                                staged=state.get("staged"), **state.get("timings", {}))
    after = wait_steps(log, s + 2, timeout=600)
    r["resumed_at"] = [s, after]
    return r


def _registry(e, conf, size_gib, work, img, bundles):
    """Push img to a loopback registry, then restore it by oci:// reference (cold cache)."""
    from distribution import Distribution
    dist = Distribution(os.path.join(work, "registry"))
    try:
        e.write_config(dict(conf, registry={
            "auth_file": dist.write_auth_file(os.path.join(work, "auth.json")),
            "insecure": [dist.host], "jobs": int(os.environ.get("BENCH_REGISTRY_JOBS", "8")),
            "blob_size": int(os.environ.get("BENCH_BLOB_MIB", "512")) << 20}))
        ref = dist.ref("bench/gpu", "v1")
        p = subprocess.run([os.environ.get("RUNC_GRIT_BIN", "runc-grit"), "push", "--json", img,
                            ref], capture_output=True, text=True, env=e.env, timeout=900)
        assert p.returncode == 0, p.stderr
        pushed = json.loads(p.stdout)
        shutil.rmtree(img)  # node B has no local copy: host memory as in the local restore
        for cid in list(bundles):   # the local restore's container gives its GPU memory back
            e.grit.run(bundles.pop(cid), "delete", "--force", cid)
        logs = os.path.join(work, "logs")
        log = os.path.join(logs, "g.log")
        s = max(read_steps(log))
        env = {"APP_MIB": str(size_gib * 1024), "APP_TICK": "0.05"}
        b = bundles["reg"] = make_gpu_bundle(os.path.join(e.dir, "reg"), logs, "g.log", env,
                                             {"grit.dev/restore-from": "oci://" + ref})
        t = time.monotonic()
        p, _ = e.grit.create_with_pipes(b, "reg")
        restore = time.monotonic() - t
        assert p.returncode == 0, e.grit.log_error(b)
        e.grit.run(b, "start", "reg")
        state = json.load(open(os.path.join(e.state_dir, "reg", "state.json")))
        after = wait_steps(log, s + 2, timeout=600)
        pulled = state.get("timings", {}).get("verify_s", 0)
        try:
            with open(os.path.join(e.state_dir, "reg", "cuda-restore.json")) as f:
                timings = json.load(f)["timings"]
        except (OSError, ValueError, KeyError):
            timings = {}
        return {"restore_timings": dict(timings, **state.get("timings", {})),"push_s": pushed["seconds"], "push_digest_s": pushed["digest_s"],
                "bytes": pushed["bytes"], "push_GBps": pushed["bytes"] / pushed["seconds"] / 1e9,
                "restore": restore, "pull_s": pulled,
                "pull_GBps": pushed["bytes"] / pulled / 1e9 if pulled else None,
                "runtime_restore_s": state.get("restore_seconds"), "resumed_at": [s, after]}
    finally:
        dist.stop()


def variants():
    crius = [kv.split("=", 1) for kv in os.environ.get("BENCH_CRIUS", "").split() if "=" in kv]
    crius = crius or [("path", "criu")]
    where = os.environ.get("BENCH_WHERE", "disk").split()
    modes = os.environ.get("BENCH_MODES", "raw grit").split()
    sync = os.environ.get("BENCH_SYNC") == "1"
    thps = os.environ.get("BENCH_THP", "").split() or [None]
    out = []
    for thp in thps:
        for w in where:
            for ver, path in crius:
                for mode in modes:
                    out.append({"mode": mode, "criu": ver, "criu_path": path, "where": w,
                                "sync": sync, "thp": thp})
    return out


def run(gib, v):
    if v["where"] == "hugetmpfs":
        mount_huge_tmpfs()
    set_thp(v.get("thp"))
    v["thp"] = thp_mode()
    work = os.path.join(WHERE[v["where"]], "rg-bench-%d" % gib)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    try:
        if v["mode"] == "coldstart":
            return coldstart(gib, work, v["criu_path"])
        if v["mode"] in GRIT_MODES:
            return grit(gib, work, v["criu_path"], v["sync"], procs=2 if v["mode"] == "grit2" else 1,
                        registry=v["mode"] == "registry",
                        page_digests="before" if v["mode"] == "grit-before" else None)
        return raw(gib, work, v["criu_path"], stream=v["mode"] == "stream", sync=v["sync"])
    finally:
        shutil.rmtree(work, ignore_errors=True)


def plan(sizes):
    """(GiB, variant) runs: every size with every variant, or BENCH_PLAN's list of
    SIZE:MODE:CRIU:WHERE[:THP] (CRIU: a name in BENCH_CRIUS)."""
    if not os.environ.get("BENCH_PLAN"):
        return [(gib, v) for gib in sizes for v in variants()]
    crius = dict(kv.split("=", 1) for kv in os.environ.get("BENCH_CRIUS", "").split() if "=" in kv)
    out = []
    for item in os.environ["BENCH_PLAN"].split():
        gib, mode, criu, where, thp = (item.split(":") + [None])[:5]
        out.append((int(gib), {"mode": mode, "criu": criu, "criu_path": crius.get(criu, "criu"),
                               "where": where, "sync": os.environ.get("BENCH_SYNC") == "1",
                               "thp": thp}))
    return out


def main():
    out = sys.argv[1]
    sizes = [int(x) for x in sys.argv[2:]] or [1, 4, 16]
    rows = []
    node_thp = thp_mode()
    try:
        for gib, v in plan(sizes):
            try:
                r = run(gib, v)
            except Exception as e:  # noqa: BLE001 - a failed variant is a row too
                r = {"error": str(e)[-300:]}
            print(json.dumps({"gib": gib, "variant": v, "result": r}), flush=True)
            rows.append((gib, v, r))
    finally:
        set_thp(node_thp)
        if os.path.ismount(WHERE["hugetmpfs"]):
            subprocess.run(["umount", WHERE["hugetmpfs"]], check=False)
    lines = ["| VRAM | path | CRIU | images | THP | checkpoint | restore | downtime | image | GB/s (image / downtime) | detail |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for gib, v, r in rows:
        if "cold_s" in r:
            continue  # their own table
        if "error" in r:
            lines.append("| %d GiB | %s | %s | %s | %s | failed: %s | | | | | |" % (
                gib, v["mode"], v["criu"], v["where"], v.get("thp"), r["error"].replace("|", "/")))
            continue
        down = r["checkpoint"] + r["restore"]
        if v["mode"] in GRIT_MODES:
            t = r["timings"]
            rt = r["restore_timings"]
            detail = ("CUDA ckpt %.2f s (in pre-dump), manifest %.2f s; restore: %s + verify "
                      "%.2f s, checks %.2f s, runc %.2f s (CUDA %.2f s of it%s)" % (
                          t.get("cuda_checkpoint_s", 0), t.get("manifest_s", 0),
                          "copy" if rt.get("staged") else "in place", rt.get("verify_s", 0),
                          rt.get("checks_s", 0), rt.get("runtime_restore_s") or 0,
                          rt.get("cuda_restore_s", 0),
                          "; page digests %.2f s beside CRIU" % rt["pages_verify_s"]
                          if rt.get("pages_verify_s") is not None else ""))
        else:
            detail = "CUDA ckpt %.2f s, criu dump %.2f s; criu restore %.2f s, CUDA restore %.2f s" % (
                r["cuda_ckpt"], r["criu_dump"], r["criu_restore"], r["cuda_restore"])
        lines.append("| %d GiB | %s | %s | %s%s | %s | %.2f s | %.2f s | %.2f s | %.1f GB | %.2f | %s |" % (
            gib, v["mode"], v["criu"], v["where"], " + sync" if v["sync"] else "", v.get("thp"),
            r["checkpoint"],
            r["restore"], down, r["image"] / 1e9, r["image"] / 1e9 / down, detail))
    reg = [(gib, r) for gib, v, r in rows if v["mode"] == "registry" and "registry" in r]
    if reg:
        lines += ["", "| VRAM | push | push GB/s | restore from local dir | restore from registry "
                  "(cold cache) | pull (in it) | pull GB/s | ratio |", "|---|---|---|---|---|---|---|---|"]
        for gib, r in reg:
            g = r["registry"]
            lines.append("| %d GiB | %.2f s (digests %.2f s) | %.2f | %.2f s | %.2f s | %.2f s | "
                         "%.2f | %.2fx |" % (gib, g["push_s"], g["push_digest_s"], g["push_GBps"],
                                             r["restore"], g["restore"], g["pull_s"],
                                             g["pull_GBps"] or 0, g["restore"] / r["restore"]))
    cold = [(gib, r) for gib, v, r in rows if "cold_s" in r]
    if cold:
        lines += ["", "| weights | cold start, page cache dropped | cold start, weights in page "
                  "cache | its phases | checkpoint | restore: create | restore: first answer | "
                  "first answer / cold start | same answer |", "|---|---|---|---|---|---|---|---|---|"]
        for gib, r in cold:
            ph = r.get("phases", {}).get("cold", {})
            lines.append("| %d GiB | %.2f s | %.2f s | %s | %.2f s | %.2f s | %.2f s | %.2f | %s |" % (
                gib, r["cold_s"], r["warm_s"],
                ", ".join("%s %.2f s" % (k[:-2], v) if k.endswith("_s") else "%s %s" % (k, v)
                          for k, v in ph.items()), r["checkpoint"],
                r["restore"], r["restore_first_answer_s"], r["ratio"], r["same_answer"]))
    text = "\n".join(lines) + "\n"
    print(text)
    with open(out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
