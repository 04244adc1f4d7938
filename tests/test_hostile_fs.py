"""Hostile checkpoints with real runc + CRIU (docs/security.md): a restore writes the
source's rootfs changes inside the new rootfs only, whatever symlinks that rootfs holds; a
checkpoint never writes through symlinks or hard links planted in its image dir, nor through
an image dir that is itself a symlink. Every test checks that nothing on the "node" (a dir
beside the containers) changed."""
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile

import pytest

from conftest import Env
from runc_grit.checkpoint import integrity
from runc_grit.checkpoint import manifest as _manifest
from runc_grit.checkpoint import rootfsdiff
from runc_grit.oci import bundle as _bundle
from test_confined_fs import snapshot
from test_integration_runc import assert_continues, checkpoint

pytestmark = pytest.mark.integration


@pytest.fixture
def h(workdir):
    """An Env, a lower rootfs (busybox, plus /evil, /evil2 and /lnk/{victim,victimdir/f}) and
    host/: node files that must never change."""
    e = Env(workdir)
    e.lower = _bundle.make_rootfs(os.path.join(workdir, "lower"))
    for name in ("evil", "evil2"):
        with open(os.path.join(e.lower, name), "w") as f:
            f.write("image's %s\n" % name)
    os.makedirs(os.path.join(e.lower, "lnk", "victimdir"))
    for p in ("lnk/victim", "lnk/victimdir/f"):
        with open(os.path.join(e.lower, p), "w") as f:
            f.write("image file\n")
    e.host = os.path.join(workdir, "host")
    os.makedirs(os.path.join(e.host, "dir", "victimdir"))
    for p in ("evil-target", "evil2-target", "dir/victim", "dir/victimdir/f"):
        with open(os.path.join(e.host, p), "w") as f:
            f.write("node file %s\n" % p)
        os.chmod(os.path.join(e.host, p), 0o644)
    e.mounts = []
    e.host_before = snapshot(e.host)
    yield e
    for m in reversed(e.mounts):
        subprocess.run(["umount", m])
    e.cleanup()
    assert snapshot(e.host) == e.host_before, "a node file changed"


def overlay_source(e, name, app):
    """A bundle whose rootfs is an overlay over e.lower (so its checkpoint carries a rootfs
    diff), running `app` then a counter. Returns (bundle, PipeReader)."""
    b = e.bundle(name, args=["sh", "-c", app + _bundle.COUNTER % "0.1"])
    rootfs = os.path.join(b, "rootfs")
    shutil.rmtree(rootfs)
    os.makedirs(rootfs)
    ov = os.path.join(e.dir, name + "-ov")
    for d in ("upper", "work"):
        os.makedirs(os.path.join(ov, d))
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", "lowerdir=%s,upperdir=%s/upper,"
                    "workdir=%s/work" % (e.lower, ov, ov), rootfs], check=True)
    e.mounts.append(rootfs)
    p, out = e.grit.create_with_pipes(b, name)
    assert p.returncode == 0, e.grit.log_error(b)
    assert e.grit.run(b, "start", name).returncode == 0, e.grit.log_error(b)
    assert out.wait_for(lambda r: len(r.ints()) >= 3)
    return b, out


def checkpointed(e, name, app, img=None):
    """overlay_source's container checkpointed (and gone) into img (default ck/NAME).
    Returns (image dir, the counter's output before)."""
    b, out = overlay_source(e, name, app)
    img = img or os.path.join(e.ckroot, name)
    checkpoint(e, b, name, img)
    out.closed()
    e.grit.run(b, "delete", name)
    return img, out


def restore(e, name, img, hostile):
    """create (restore-on-create from img) of a bundle whose rootfs is a fresh copy of
    e.lower, changed first by hostile(rootfs). Returns (bundle, CompletedProcess, reader)."""
    b = e.bundle(name, annotations={"grit.dev/restore-from": img}, rootfs_from=e.lower)
    hostile(os.path.join(b, "rootfs"))
    p, out = e.grit.create_with_pipes(b, name)
    return b, p, out


def replace_by_link(rootfs, name, target):
    p = os.path.join(rootfs, name)
    if os.path.isdir(p) and not os.path.islink(p):
        shutil.rmtree(p)
    else:
        os.unlink(p)
    os.symlink(target, p)


def resign(e, img):
    """The manifest made to match the image dir's files again and signed with the node's
    key: a checkpoint as an attacker holding the key would make it."""
    path = os.path.join(img, _manifest.NAME)
    with open(path) as f:
        m = json.load(f)
    m["images"] = _manifest.list_images(img, digest=True)
    integrity.load_signer(os.path.join(e.dir, "node.key")).sign(m)
    _manifest.write(img, m)


# --- item 1: a restore writes only inside the new rootfs -----------------------------------

def test_restore_replaces_symlinks_in_the_new_rootfs_never_writes_through_them(h):
    """The source rewrote /evil (setuid) and /evil2 and deleted files under /lnk. The new
    rootfs holds evil -> a node file (absolute), evil2 and lnk -> node paths (relative, out
    of the rootfs): the restore replaces the links (the diff's /lnk is a dir in the source)
    and continues; no node file changes."""
    e = h
    app = ("rm /evil; echo new-evil > /evil; chmod 4755 /evil; echo new-evil2 > /evil2; "
           "rm /lnk/victim; rm -r /lnk/victimdir; ")
    img, out = checkpointed(e, "src", app)
    with tarfile.open(os.path.join(img, rootfsdiff.DIFF)) as tar:
        names = set(tar.getnames())
    assert {"evil", "evil2", "lnk"} <= names, names
    with open(os.path.join(img, rootfsdiff.DELETED)) as f:
        assert json.load(f) == ["lnk/victim", "lnk/victimdir"]

    rel = os.path.relpath(e.host, os.path.join(e.dir, "dst", "rootfs"))  # ../../host

    def hostile(rootfs):
        replace_by_link(rootfs, "evil", os.path.join(e.host, "evil-target"))
        replace_by_link(rootfs, "evil2", rel + "/evil2-target")
        replace_by_link(rootfs, "lnk", rel + "/dir")
        assert os.path.exists(os.path.join(rootfs, "lnk", "victim"))  # it does lead out
    b, p, out2 = restore(e, "dst", img, hostile)
    assert p.returncode == 0, e.grit.log_error(b)
    assert e.grit.run(b, "start", "dst").returncode == 0
    assert out2.wait_for(lambda r: len(r.ints()) >= 2)
    assert_continues(out.ints(), out2.ints())
    rootfs = os.path.join(b, "rootfs")
    st = os.lstat(os.path.join(rootfs, "evil"))
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o4755
    with open(os.path.join(rootfs, "evil")) as f:
        assert f.read() == "new-evil\n"
    with open(os.path.join(rootfs, "evil2")) as f:
        assert f.read() == "new-evil2\n"
    assert not os.path.islink(os.path.join(rootfs, "lnk"))
    assert os.listdir(os.path.join(rootfs, "lnk")) == []
    # the fixture checks that host/ is unchanged: content, modes (no setuid), the victims


def test_a_diff_reaching_out_through_a_symlink_is_refused_with_its_reason(h):
    """A signed checkpoint whose diff writes and deletes through `lnk` (no dir entry for it)
    into a rootfs where lnk -> a node dir: the restore is refused, --log names the entry,
    nothing on the node changes and no container is left."""
    e = h
    img, _ = checkpointed(e, "src", "echo hi > /data/note; ")
    with tarfile.open(os.path.join(img, rootfsdiff.DIFF), "w") as tar:
        data = b"planted\n"
        ti = tarfile.TarInfo("evil")
        ti.size, ti.mode = len(data), 0o4755
        tar.addfile(ti, io.BytesIO(data))
        for name in ("lnk/planted", "lnk/victim"):
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode = len(data), 0o4755
            tar.addfile(ti, io.BytesIO(data))
    with open(os.path.join(img, rootfsdiff.DELETED), "w") as f:
        json.dump(["lnk/victimdir"], f)
    resign(e, img)

    def hostile(rootfs):
        replace_by_link(rootfs, "evil", os.path.join(e.host, "evil-target"))
        replace_by_link(rootfs, "lnk", os.path.join(e.host, "dir"))
    b, p, _ = restore(e, "dst", img, hostile)
    assert p.returncode != 0
    err = e.grit.log_error(b)
    assert "rootfs-diff.tar" in err and "'lnk/planted'" in err and "symlink" in err, err
    assert e.grit.state("dst") is None
    assert not os.path.exists(os.path.join(e.host, "dir", "planted"))


# --- item 2: a checkpoint writes only its own files into its image dir ----------------------

PLANTED = (".rootfs-diff.tar.tmp", rootfsdiff.DIFF, rootfsdiff.DELETED, "spec.dump",
           _manifest.NAME, "." + _manifest.NAME + ".abcd1234.tmp", "inventory.img",
           "stats-dump")


def test_links_planted_in_the_image_dir_are_never_written_through(h):
    """The image dir exists, full of symlinks (and a hard link) to node files under the
    names runc-grit and CRIU write: after the checkpoint the node files are unchanged, the
    checkpoint is complete, and it restores."""
    e = h
    img = os.path.join(e.ckroot, "img")
    os.makedirs(img, mode=0o700)
    for name in PLANTED:
        target = os.path.join(e.host, "planted-" + name.strip("."))
        with open(target, "w") as f:
            f.write("node file\n")
        os.symlink(target, os.path.join(img, name))
    os.link(os.path.join(e.host, "dir", "victim"), os.path.join(img, "pages-1.img"))
    e.host_before = snapshot(e.host)
    img, out = checkpointed(e, "src", "echo hi > /data/note; ", img=img)
    e.host_before = snapshot(e.host)  # the hard link went: victim's link count is 1 again
    with open(os.path.join(e.host, "dir", "victim")) as f:
        assert f.read() == "node file dir/victim\n"
    for name in os.listdir(img):
        assert not os.path.islink(os.path.join(img, name)), name
    m = _manifest.load(img)
    assert m["rootfs_diff"]["entries"] >= 2
    assert {rootfsdiff.DIFF, rootfsdiff.DELETED, "spec.dump"} <= {i["name"] for i in m["images"]}
    b, p, out2 = restore(e, "dst", img, lambda rootfs: None)
    assert p.returncode == 0, e.grit.log_error(b)
    assert e.grit.run(b, "start", "dst").returncode == 0
    assert out2.wait_for(lambda r: len(r.ints()) >= 2)
    assert_continues(out.ints(), out2.ints())
    with open(os.path.join(b, "rootfs", "data", "note")) as f:
        assert f.read() == "hi\n"


def test_a_symlinked_image_dir_is_refused_and_the_container_keeps_running(h):
    """--image-path names a symlink to another dir (runc would follow it: MkdirAll, open):
    runc-grit refuses before the dump; the dir it points to is untouched."""
    e = h
    elsewhere = os.path.join(e.host, "elsewhere")
    os.makedirs(elsewhere)
    with open(os.path.join(elsewhere, _manifest.NAME), "w") as f:
        f.write('{"not": "yours"}\n')
    e.host_before = snapshot(e.host)
    link = os.path.join(e.ckroot, "img")
    os.symlink(elsewhere, link)
    b, out = overlay_source(e, "src", "")
    p = e.grit.run(b, "checkpoint", "--image-path", link, "--work-path", link + "-work", "src")
    assert p.returncode != 0
    err = e.grit.log_error(b)
    assert "is a symlink" in err and "keeps running" in err, err
    assert e.grit.state("src")["status"] == "running"
    n = len(out.ints())
    assert out.wait_for(lambda r: len(r.ints()) > n + 1)
