"""Latency runc-grit's pass-through adds to `state`, against the runtime called directly.

Median of N runs (default 30) of:
  direct   runc --root R state ID
  grit     runc-grit --root R state ID         (console script: python start + decide + execv)
  python   python3 -S -c pass / python3 -c pass (a bare interpreter start, for reference)
  logic    grit minus (runc + bare python start): runc-grit's own work
Needs root and runc (a busybox container is created for the call to be real).
Usage: python3 bench/passthrough.py [N] [--out FILE]
"""
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)


def timed_together(cases, n):
    """Median ms of each (argv, env) case; the cases take turns, so drift in the machine's
    load hits them all alike."""
    out = [[] for _ in cases]
    for _ in range(n):
        for i, (argv, env) in enumerate(cases):
            t = time.perf_counter()
            subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
            out[i].append(time.perf_counter() - t)
    return [statistics.median(x) * 1000 for x in out]


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 30
    out_file = sys.argv[sys.argv.index("--out") + 1] if "--out" in sys.argv else None
    from runc_grit.oci.bundle import make_bundle
    work = tempfile.mkdtemp(prefix="rg-bench-")
    root = os.path.join(work, "root")
    b = make_bundle(os.path.join(work, "b"), ["sleep", "1000"])
    subprocess.run(["runc", "--root", root, "create", "--bundle", b, "bench"], check=True,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        grit = shutil.which("runc-grit") or os.path.join(os.path.dirname(sys.executable), "runc-grit")
        env = dict(os.environ, RUNC_GRIT_CONFIG=os.path.join(work, "absent.yaml"))
        for _ in range(3):  # warm the page cache
            subprocess.run([grit, "--root", root, "state", "bench"], stdout=subprocess.DEVNULL, env=env)
        env_true = dict(env, RUNC_GRIT_RUNTIME="/bin/true")
        direct, via, bare, bare_s, to_true, true = timed_together([
            (["runc", "--root", root, "state", "bench"], None),
            ([grit, "--root", root, "state", "bench"], env),
            ([sys.executable, "-c", "pass"], None),
            ([sys.executable, "-S", "-c", "pass"], None),
            ([grit, "--root", root, "state", "bench"], env_true),
            (["/bin/true"], None)], n)
        rows = [("runc state (direct)", direct), ("runc-grit state", via),
                ("added by runc-grit", via - direct), ("python3 -c pass", bare),
                ("python3 -S -c pass", bare_s),
                ("runc-grit's own logic (added - python3 -S start)", via - direct - bare_s),
                ("runc-grit exec'ing /bin/true", to_true), ("/bin/true", true),
                ("runc-grit's own logic, measured on /bin/true (that - python3 -S start - /bin/true)",
                 to_true - bare_s - true)]
        text = "median of %d runs (the commands taking turns), %s\n\n| what | ms |\n|---|---|\n" % (n, os.uname().release)
        text += "".join("| %s | %.2f |\n" % r for r in rows)
        print(text)
        if out_file:
            with open(out_file, "w") as f:
                f.write(text)
    finally:
        subprocess.run(["runc", "--root", root, "delete", "--force", "bench"])
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
