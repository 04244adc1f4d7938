"""What runc-grit adds to gVisor's checkpoint and restore (real runsc, CPU, a busybox counter).

For each round: the same container checkpointed with `runsc checkpoint` directly and through
runc-grit (manifest included), then restored with `runsc restore --detach` directly and
through runc-grit's create (annotation, image checks, manifest check). Medians, in seconds.

  sudo .venv/bin/python bench/runsc.py [ROUNDS] [OUT.md]
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from runc_grit.cli.harness import Grit  # noqa: E402
from runc_grit.oci import bundle as B  # noqa: E402

FLAGS = ["--network=none"]


def timed(fn):
    t = time.monotonic()
    fn()
    return time.monotonic() - t


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    out_md = sys.argv[2] if len(sys.argv) > 2 else None
    runsc = shutil.which("runsc")
    if not runsc:
        sys.exit("runsc not installed (install/deps.sh)")
    d = tempfile.mkdtemp(prefix="rg-bench-")
    root, ck = os.path.join(d, "root"), os.path.join(d, "ck")
    os.makedirs(ck)
    conf = os.path.join(d, "config.yaml")
    with open(conf, "w") as f:
        f.write("runtime: runsc\nruntime_flags: [%s]\nstate_dir: %s/state\ncheckpoint_roots: [%s]\n"
                % (", ".join(FLAGS), d, ck))
    env = dict(os.environ, RUNC_GRIT_CONFIG=conf)
    grit = Grit(root, env)

    def rs(*args):
        # stderr to a file, not a pipe: a restored sandbox keeps the pipe open
        with tempfile.TemporaryFile() as err:
            p = subprocess.run([runsc, "--root", root] + FLAGS + list(args),
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                               timeout=120)
            if p.returncode:
                err.seek(0)
                raise RuntimeError("runsc %s: %s" % (args[0], err.read().decode()[-300:]))

    def start(name):
        b = os.path.join(d, name)
        if not os.path.exists(b):
            B.make_bundle(b, B.counter_args("0.05"), None, False, None)
        p, _ = grit.create_with_pipes(b, name)
        assert p.returncode == 0, grit.log_error(b)
        assert grit.run(b, "start", name).returncode == 0
        time.sleep(0.5)
        return b

    res = {k: [] for k in ("ck_raw", "ck_grit", "rs_raw", "rs_grit")}
    for i in range(rounds):
        for how in ("raw", "grit"):
            cid = "%s%d" % (how, i)
            b = start(cid)
            img = os.path.join(ck, cid)
            if how == "raw":
                os.makedirs(img)
                res["ck_raw"].append(timed(lambda: rs("checkpoint", "--image-path", img, cid)))
            else:
                res["ck_grit"].append(timed(lambda: grit.run(b, "checkpoint", "--image-path",
                                                             img, cid)))
            rs("delete", "--force", cid)
            grit.run(b, "delete", "--force", cid)
            new = cid + "r"
            if how == "raw":
                res["rs_raw"].append(timed(lambda: rs("restore", "--detach", "--bundle", b,
                                                      "--image-path", img, new)))
            else:
                nb = os.path.join(d, new)
                B.make_bundle(nb, B.counter_args("0.05"), {"grit.dev/restore-from": img},
                              False, None)
                res["rs_grit"].append(timed(lambda: grit.create_with_pipes(nb, new)))
            rs("delete", "--force", new)
            grit.run(b, "delete", "--force", new)
    med = {k: statistics.median(v) for k, v in res.items()}
    ver = subprocess.run([runsc, "--version"], capture_output=True).stdout.decode().split()[2]
    lines = ["# runsc checkpoint/restore: raw vs through runc-grit",
             "",
             "runsc %s, %s, %d rounds, busybox counter (checkpoint.img ~%d KB), medians:"
             % (ver, os.uname().release, rounds,
                os.path.getsize(os.path.join(ck, "grit0", "checkpoint.img")) // 1024),
             "",
             "| step | runsc | runc-grit | added |",
             "|---|---|---|---|",
             "| checkpoint | %.3f s | %.3f s | %+.0f ms |" % (med["ck_raw"], med["ck_grit"],
                                                           (med["ck_grit"] - med["ck_raw"]) * 1e3),
             "| restore (grit: create from the annotation) | %.3f s | %.3f s | %+.0f ms |"
             % (med["rs_raw"], med["rs_grit"], (med["rs_grit"] - med["rs_raw"]) * 1e3),
             "",
             "raw samples: " + json.dumps({k: [round(x, 3) for x in v] for k, v in res.items()})]
    text = "\n".join(lines) + "\n"
    print(text)
    if out_md:
        with open(out_md, "w") as f:
            f.write(text)
    shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
