"""The stack under test is the one asked for: the runc (or crun), CRIU and containerd on PATH
(the matrix puts a stack's bin dir first, bench/matrix.sh) report the versions the cell names
(RUNC_GRIT_EXPECT="runc=1.3.6 criu=4.2.1 containerd=2.1.9"), and a checkpoint through
runc-grit really ran that runtime (RUNC_GRIT_TEST_RUNTIME, default runc) and that CRIU (the
manifest's runtime, dump.log's CRIU version)."""
import os
import re
import shutil
import subprocess

import pytest

from conftest import RUNTIME
from test_integration_runc import checkpoint, start_counter

pytestmark = pytest.mark.integration
EXPECT = dict(kv.split("=", 1) for kv in os.environ.get("RUNC_GRIT_EXPECT", "").split() if "=" in kv)


def version(cmd):
    """The version a binary reports on the first line of --version (runc, crun: "version
    X"; CRIU: "Version: X"; containerd: "containerd <module> X")."""
    p = subprocess.run([cmd, "--version"], capture_output=True, text=True, timeout=30)
    m = re.search(r"(?<![\w/.])v?(\d+\.\d+(?:\.\d+)?)", (p.stdout.splitlines() or [""])[0])
    return m.group(1) if m else None


@pytest.mark.skipif(not EXPECT, reason="RUNC_GRIT_EXPECT not set (bench/matrix.sh sets it)")
@pytest.mark.parametrize("name", ["runc", "criu", "containerd", "crun"])
def test_the_component_on_path_is_the_cells(name):
    if name not in EXPECT:
        pytest.skip("the cell names no %s" % name)
    assert shutil.which(name), name
    assert version(shutil.which(name)) == EXPECT[name]


def test_a_checkpoint_runs_the_runc_and_criu_on_path(genv):
    b, out = start_counter(genv, "src", "src")
    assert out.wait_for(lambda r: len(r.ints()) >= 2)
    img = os.path.join(genv.ckroot, "img")
    checkpoint(genv, b, "src", img)
    import json
    m = json.load(open(os.path.join(img, "grit-manifest.json")))
    with open(os.path.join(img + "-work", "dump.log")) as f:
        criu_ran = re.search(r"Version: (\d+\.\d+(?:\.\d+)?)", f.read(4096)).group(1)
    assert criu_ran == version(shutil.which("criu")) == m["criu"]["version"]
    assert m["runtime"]["name"] == RUNTIME
    assert m["runtime"]["version"].startswith(version(shutil.which(RUNTIME)))
