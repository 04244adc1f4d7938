"""Write the runc-grit launcher: `python -S`, with the package and its deps put on sys.path
directly. Skipping site (and the .pth files of every installed package) is most of what makes
the pass-through cheap: measured in bench/passthrough.py.
Usage: python install/make_launcher.py DEST   (run with the interpreter that has runc-grit)
"""
import os
import site
import sys

import runc_grit

dest = sys.argv[1]
pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(runc_grit.__file__)))
paths = [pkg_parent] + [p for p in site.getsitepackages() if p != pkg_parent]
text = "#!%s -S\n" % sys.executable + (
    "# runc-grit launcher (install/make_launcher.py): no site import on the runc path\n"
    "import sys\n"
    "sys.path[0:0] = %r\n"
    "from runc_grit.entry import main\n"
    "sys.exit(main())\n" % paths)
tmp = dest + ".tmp"
with open(tmp, "w") as f:
    f.write(text)
os.chmod(tmp, 0o755)
os.replace(tmp, dest)
