"""A checkpoint carries what the container wrote into its rootfs, and moves between nodes as
one archive (export/import), with real runc + CRIU."""
import os
import shutil
import subprocess
import tarfile

import pytest

from runc_grit.checkpoint import manifest as _manifest
from runc_grit.oci import bundle as _bundle

from conftest import GRIT, Env
from test_integration_runc import assert_continues, checkpoint, start_counter

pytestmark = pytest.mark.integration


def test_rootfs_changes_travel_with_the_checkpoint(workdir):
    """The app creates a file in its own rootfs and keeps it open, and deletes another; it is
    restored onto a fresh copy of the original rootfs: the file and its content are there (CRIU
    could not reopen it otherwise), the deleted one is gone."""
    e = Env(workdir)
    lower = _bundle.make_rootfs(os.path.join(workdir, "lower"))
    app = ("echo created-by-app > /data/note; rm /etc/passwd; exec 3</data/note; "
           + _bundle.COUNTER % "0.1")
    b = e.bundle("src", args=["sh", "-c", app])
    shutil.rmtree(os.path.join(b, "rootfs"))
    os.makedirs(os.path.join(b, "rootfs"))
    for d in ("upper", "work"):
        os.makedirs(os.path.join(workdir, d))
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    "lowerdir=%s,upperdir=%s/upper,workdir=%s/work" % (lower, workdir, workdir),
                    os.path.join(b, "rootfs")], check=True)
    try:
        p, out = e.grit.create_with_pipes(b, "src")
        assert p.returncode == 0, e.grit.log_error(b)
        assert e.grit.run(b, "start", "src").returncode == 0
        assert out.wait_for(lambda r: len(r.ints()) >= 3)
        img = os.path.join(e.ckroot, "img")
        checkpoint(e, b, "src", img)
        out.closed()
        e.grit.run(b, "delete", "src")
    finally:
        subprocess.run(["umount", os.path.join(b, "rootfs")])
    m = _manifest.load(img)
    assert m["rootfs_diff"]["deleted"] == 1 and m["rootfs_diff"]["entries"] >= 2
    names = {i["name"] for i in m["images"]}
    assert {"rootfs-diff.tar", "deleted.files", "spec.dump"} <= names
    # the new container: a fresh copy of the image's rootfs
    b2 = e.bundle("dst", args=["sh", "-c", app], annotations={"grit.dev/restore-from": img},
                  rootfs_from=lower)
    assert not os.path.exists(os.path.join(b2, "rootfs", "data", "note"))
    p, out2 = e.grit.create_with_pipes(b2, "dst")
    assert p.returncode == 0, e.grit.log_error(b2)
    assert e.grit.run(b2, "start", "dst").returncode == 0
    assert out2.wait_for(lambda r: len(r.ints()) >= 2)
    assert_continues(out.ints(), out2.ints())
    with open(os.path.join(b2, "rootfs", "data", "note")) as f:
        assert f.read() == "created-by-app\n"
    assert not os.path.exists(os.path.join(b2, "rootfs", "etc", "passwd"))
    e.cleanup()


def node(workdir, name):
    """A "node": its own runc root, runc-grit state dir, checkpoint root, bundles and signing
    key (Ed25519; it trusts its own public key and those in its trusted.d)."""
    d = os.path.join(workdir, name)
    os.makedirs(d)
    return Env(d)


def grit(e, *args):
    return subprocess.run(GRIT + list(args), capture_output=True,
                          env=e.env, timeout=120)


def test_two_nodes_export_then_import(workdir):
    a, b = node(workdir, "node-a"), node(workdir, "node-b")
    b.trust(a)  # B restores what A signs (A's public key only: B cannot sign as A)
    ba, out = start_counter(a, "app", "app")
    assert out.wait_for(lambda r: len(r.ints()) >= 3)
    img = os.path.join(a.ckroot, "app")
    checkpoint(a, ba, "app", img)
    out.closed()
    a.grit.run(ba, "delete", "app")
    archive = os.path.join(workdir, "app.tar.zst")
    p = grit(a, "export", img, "-o", archive)
    assert p.returncode == 0, p.stderr
    listing = subprocess.run("zstd -dc %s | tar -t" % archive, shell=True, capture_output=True,
                             text=True).stdout.split()
    assert {"config.dump", "spec.dump", "grit-manifest.json", "checkpoint/inventory.img"} <= set(listing)
    if shutil.which("checkpointctl"):  # install/deps.sh installs it (Debian 13's)
        p = subprocess.run(["checkpointctl", "show", archive], capture_output=True, text=True,
                           timeout=60)
        assert p.returncode == 0, p.stderr
        assert "runc-grit/runc" in p.stdout and "| app " in p.stdout.replace("|  ", "| "), p.stdout
    # node B: import into its own checkpoint root, restore there
    dst = os.path.join(b.ckroot, "moved")
    p = grit(b, "import", archive, "-o", dst)
    assert p.returncode == 0, p.stderr
    bb, out_b = start_counter(b, "app", "app", annotations={"grit.dev/restore-from": dst},
                              rootfs_from=os.path.join(ba, "rootfs"))
    assert out_b.wait_for(lambda r: len(r.ints()) >= 2)
    assert_continues(out.ints(), out_b.ints())
    assert a.grit.state("app") is None  # node A's runtime never saw the restored one
    # a tampered archive is refused, and leaves nothing
    plain = os.path.join(workdir, "app.tar")
    assert grit(a, "export", "--no-compress", img, "-o", plain).returncode == 0
    with tarfile.open(plain) as t:
        member = next(m for m in t.getmembers() if m.name.startswith("checkpoint/pages-"))
        offset = member.offset_data + 10
    with open(plain, "r+b") as f:
        f.seek(offset)
        c = f.read(1)
        f.seek(offset)
        f.write(bytes([c[0] ^ 0xFF]))
    bad = os.path.join(b.ckroot, "bad")
    p = grit(b, "import", plain, "-o", bad)
    assert p.returncode != 0 and b"does not match its sha256" in p.stderr, p.stderr
    assert not os.path.exists(bad) and not os.path.exists(bad + ".importing")
    a.cleanup()
    b.cleanup()
