"""What runc-grit adds to a checkpoint and a restore of a small container, against runc
called directly: the fixed costs that dominate small containers (issue 22's 1 GiB target).

A busybox counter (no GPU) is created and started, checkpointed, and restored into a new
container, N times each way, the two ways taking turns:
  runc       runc checkpoint, then runc restore --detach of the same images
  runc-grit  runc-grit checkpoint (a signed manifest, digests), then runc-grit create of a
             bundle carrying grit.dev/restore-from (verify, privilege check, staging in
             place, the restore), all through the installed runc-grit (/usr/local/bin)
Every restore is checked to continue the counter. Reported: medians, and runc-grit's
timings of its own steps (from its state record) for the last restore.
Needs root, runc and CRIU on PATH, and an installed runc-grit (install/install.sh).
Usage: python3 bench/fixedcost.py [N] [--out FILE]
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from runc_grit.checkpoint import integrity  # noqa: E402
from runc_grit.cli.harness import Grit, PipeReader  # noqa: E402
from runc_grit.oci import bundle as _bundle  # noqa: E402

GRIT_BIN = os.environ.get("RUNC_GRIT_BIN", "/usr/local/bin/runc-grit")


class Node:
    def __init__(self, work):
        self.work = work
        self.ckroot = os.path.join(work, "ck")
        os.makedirs(self.ckroot, mode=0o700)
        integrity.write_key_pair(work, "bench")
        conf = os.path.join(work, "config.yaml")
        with open(conf, "w") as f:
            f.write("checkpoint_roots: [%s]\nstate_dir: %s\nsigning_key: %s\n"
                    "require_signature: true\nstaging_dir: %s\ntrusted_keys: []\n"
                    % (json.dumps(self.ckroot), json.dumps(os.path.join(work, "state")),
                       json.dumps(os.path.join(work, "bench.key")),
                       json.dumps(os.path.join(work, "staging"))))
        self.env = dict(os.environ, RUNC_GRIT_CONFIG=conf)
        self.grit = Grit(os.path.join(work, "root"), self.env, [GRIT_BIN])
        self.runc = Grit(os.path.join(work, "rawroot"), self.env, ["runc"])


def _source(h, work, name):
    """A started counter; returns (bundle, its output)."""
    b = os.path.join(work, name)
    _bundle.make_bundle(b, _bundle.counter_args("0.05"))
    p, out = h.create_with_pipes(b, name)
    if p.returncode != 0:
        raise SystemExit("create %s: %s" % (name, h.log_error(b)))
    h.run(b, "start", name).check_returncode()
    out.wait_for(lambda r: len(r.ints()) >= 3)
    return b, out


def _raw_restore(h, b, img, cid):
    r_out, w_out = os.pipe()
    r_in, w_in = os.pipe()
    t0 = time.monotonic()
    try:
        p = subprocess.run(h.argv(b, "restore", "--detach", "--bundle", b, "--image-path", img,
                                  "--work-path", img + "-rw", "--pid-file",
                                  os.path.join(b, "init.pid"), cid),
                           stdin=r_in, stdout=w_out, stderr=w_out, env=h.env, timeout=120)
    finally:
        os.close(w_out)
        os.close(r_in)
    dt = time.monotonic() - t0
    out = PipeReader(r_out)
    out.stdin_w = w_in
    return p, out, dt


def once(node, way, i):
    """(checkpoint s, restore s, runc-grit's restore timings or None) of one round."""
    h = node.grit if way == "runc-grit" else node.runc
    tag = "%s%d" % ("g" if way == "runc-grit" else "r", i)
    src, out = _source(h, node.work, tag + "-src")
    img = os.path.join(node.ckroot, tag)
    t0 = time.monotonic()
    p = h.run(src, "checkpoint", "--image-path", img, "--work-path", img + "-work", tag + "-src")
    ckpt = time.monotonic() - t0
    if p.returncode != 0:
        raise SystemExit("checkpoint %s: %s" % (tag, h.log_error(src)))
    out.closed()
    last = out.ints()[-1]
    h.run(src, "delete", tag + "-src")
    dst = os.path.join(node.work, tag + "-dst")
    timings = None
    if way == "runc-grit":
        _bundle.make_bundle(dst, _bundle.counter_args("0.05"),
                            annotations={"grit.dev/restore-from": img},
                            rootfs_from=os.path.join(src, "rootfs"))
        t0 = time.monotonic()
        p, out2 = h.create_with_pipes(dst, tag + "-dst")
        rst = time.monotonic() - t0
        if p.returncode == 0:
            h.run(dst, "start", tag + "-dst").check_returncode()
            path = os.path.join(node.work, "state", tag + "-dst", "state.json")
            if os.path.exists(path):
                with open(path) as f:
                    timings = json.load(f).get("timings")
    else:
        _bundle.make_bundle(dst, _bundle.counter_args("0.05"),
                            rootfs_from=os.path.join(src, "rootfs"))
        p, out2, rst = _raw_restore(h, dst, img, tag + "-dst")
    if p.returncode != 0:
        raise SystemExit("restore %s: %s" % (tag, h.log_error(dst)))
    out2.wait_for(lambda r: len(r.ints()) >= 2)
    first = out2.ints()[0]
    h.run(dst, "delete", "--force", tag + "-dst")
    if first != last + 1:
        raise SystemExit("%s: resumed at %s after %s" % (tag, first, last))
    return ckpt, rst, timings


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 7
    out_file = sys.argv[sys.argv.index("--out") + 1] if "--out" in sys.argv else None
    work = tempfile.mkdtemp(prefix="rg-fixedcost-")
    res = {w: ([], []) for w in ("runc", "runc-grit")}
    timings = None
    try:
        node = Node(work)
        for i in range(n):
            for way in ("runc", "runc-grit"):
                c, r, t = once(node, way, i)
                res[way][0].append(c)
                res[way][1].append(r)
                timings = t or timings
    finally:
        for root in ("root", "rawroot"):
            subprocess.run(["sh", "-c", "for c in $(runc --root %s list -q 2>/dev/null); do "
                            "runc --root %s delete -f $c; done" % ((os.path.join(work, root),) * 2)],
                           stderr=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)
    med = {w: (statistics.median(c), statistics.median(r)) for w, (c, r) in res.items()}
    runc_v = subprocess.run(["runc", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    criu_v = subprocess.run(["criu", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    lines = ["fixed costs, medians of %d rounds (%s; %s; %d CPUs; %s)"
             % (n, runc_v, criu_v, os.cpu_count(), time.strftime("%Y-%m-%d")), "",
             "| way | checkpoint | restore | both |", "|---|---|---|---|"]
    for w, (c, r) in med.items():
        lines.append("| %s | %.3f s | %.3f s | %.3f s |" % (w, c, r, c + r))
    (gc, gr), (rc, rr) = med["runc-grit"], med["runc"]
    lines += ["| added | +%.3f s | +%.3f s | +%.3f s |" % (gc - rc, gr - rr, gc + gr - rc - rr),
              "", "runc-grit's restore steps (last round): %s" % json.dumps(timings)]
    text = "\n".join(lines) + "\n"
    print(text)
    if out_file:
        with open(out_file, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
