"""sha256 of checkpoint images, as the manifest computes them (integrity.sha256_files: one
thread per file, up to 8), in GB/s. Usage: python3 bench/digest.py [GiB] [files]"""
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from runc_grit.checkpoint.integrity import sha256_files  # noqa: E402

gib = float(sys.argv[1]) if len(sys.argv) > 1 else 2
n = int(sys.argv[2]) if len(sys.argv) > 2 else 4
d = tempfile.mkdtemp(prefix="rg-digest-")
paths = []
block = os.urandom(1 << 20)
for i in range(n):
    p = os.path.join(d, "pages-%d.img" % i)
    with open(p, "wb") as f:
        for _ in range(int(gib * 1024 / n)):
            f.write(block)
    paths.append(p)
total = sum(os.path.getsize(p) for p in paths)
for workers in (1, None):
    t = time.perf_counter()
    sha256_files(paths, workers=workers)
    dt = time.perf_counter() - t
    print("%-9s %d files, %.2f GB: %.2f s, %.2f GB/s" % (
        "1 thread" if workers == 1 else "parallel", n, total / 1e9, dt, total / 1e9 / dt))
for p in paths:
    os.unlink(p)
os.rmdir(d)
