"""Fuzzing what a hostile checkpoint controls (hypothesis, bounded: few hundred cases, small
inputs, a deadline per case): manifests, image dirs and rootfs-diff tars. Every case either
verifies or ends in a GritError with a reason; nothing is written, deleted or left outside
the places runc-grit owns (a sentinel tree beside the rootfs stays byte-for-byte the same,
no staging copy is left)."""
import hashlib
import io
import json
import os
import shutil
import tarfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runc_grit.checkpoint import manifest, rootfsdiff, source
from runc_grit.errors import GritError
from test_units import Conf, make_images

SETTINGS = settings(max_examples=120, deadline=2000, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])
NAMES = st.sampled_from(["inventory.img", "pages-1.img", "core-1.img", "grit-manifest.json",
                         "..", ".", "a/b", "", "x" * 250, "evil", "lnk/victim", "/etc/passwd",
                         "sub", "spec.dump", "rootfs-diff.tar", "deleted.files"])
JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.text(max_size=8),
                    lambda kids: st.lists(kids, max_size=4)
                    | st.dictionaries(st.text(max_size=6), kids, max_size=4), max_leaves=20)


def _tree_digest(root):
    h = hashlib.sha256()
    for d, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(dirs + files):
            p = os.path.join(d, name)
            st_ = os.lstat(p)
            h.update(("%s %o %d\n" % (os.path.relpath(p, root), st_.st_mode, st_.st_size)).encode())
            if os.path.isfile(p) and not os.path.islink(p):
                h.update(open(p, "rb").read())
    return h.hexdigest()


@pytest.fixture
def ck(tmp_path):
    d = make_images(str(tmp_path / "ck" / "x"))
    return tmp_path, d, open(os.path.join(d, manifest.NAME), "rb").read()


@SETTINGS
@given(edits=st.lists(st.tuples(st.sampled_from(["set", "del", "image", "raw"]),
                                st.sampled_from(["format", "format_version", "images", "container",
                                                 "signature", "source", "created", "runtime"]),
                                JSON, NAMES), max_size=4))
def test_fuzzed_manifests_verify_or_are_refused(ck, edits):
    tmp, d, good = ck
    m = json.loads(good)
    raw = None
    for op, key, val, name in edits:
        if op == "set":
            m[key] = val
        elif op == "del":
            m.pop(key, None)
        elif op == "image":
            m["images"] = [{"name": name, "size": val}] if not isinstance(val, dict) else [val]
        else:
            raw = json.dumps(val).encode()[:1 << 16]
    with open(os.path.join(d, manifest.NAME), "wb") as f:
        f.write(raw if raw is not None else json.dumps(m).encode())
    conf = Conf([str(tmp / "ck")])
    try:
        here, _, _ = source.validate(d, conf)
        source.release(here, conf)
    except GritError as e:
        assert e.message
    assert not os.path.isdir(conf.staging_dir) or os.listdir(conf.staging_dir) == []


@SETTINGS
@given(entries=st.lists(st.tuples(NAMES.filter(lambda n: n and "/" not in n and n not in (".", "..")),
                                  st.sampled_from(["file", "dir", "symlink", "fifo", "big"])),
                        max_size=5))
def test_fuzzed_image_dirs_verify_or_are_refused(ck, entries):
    tmp, d, good = ck
    for name, kind in entries:
        p = os.path.join(d, name)
        if os.path.lexists(p):
            shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.unlink(p)
        if kind == "file":
            open(p, "wb").close()
        elif kind == "big":
            with open(p, "wb") as f:
                f.truncate(1 << 20)
        elif kind == "dir":
            os.mkdir(p)
        elif kind == "symlink":
            os.symlink("/etc/shadow", p)
        else:
            os.mkfifo(p)
    conf = Conf([str(tmp / "ck")], raw=True)
    for c in (conf, Conf([str(tmp / "ck")], raw=True, staging="none")):
        try:
            here, _, _ = source.validate(d, c)
            source.release(here, c)
        except GritError as e:
            assert e.message
    assert not os.path.isdir(conf.staging_dir) or os.listdir(conf.staging_dir) == []
    shutil.rmtree(d)
    make_images(d)


MEMBER_NAMES = st.sampled_from(["evil", "lnk/victim", "lnk", "dir", "dir/f", "../out", "/abs",
                                "./evil", "a/../../out", "dir/../evil", "x" * 200, "hard"])


def _tar(members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, kind, target, mode in members:
            ti = tarfile.TarInfo(name)
            ti.mode = mode
            if kind == "file":
                data = b"payload"
                ti.size = len(data)
                tar.addfile(ti, io.BytesIO(data))
                continue
            ti.type = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
                       "hardlink": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE,
                       "chr": tarfile.CHRTYPE}[kind]
            ti.linkname = target
            tar.addfile(ti)
    return buf.getvalue()


@SETTINGS
@given(members=st.lists(st.tuples(MEMBER_NAMES,
                                  st.sampled_from(["file", "dir", "symlink", "hardlink", "fifo",
                                                   "chr"]),
                                  st.sampled_from(["/", "..", "../../outside/secret", "evil",
                                                   "/etc/passwd", "dir", "lnk/victim"]),
                                  st.sampled_from([0o644, 0o4755, 0o777, 0o2755])),
                        max_size=6),
       deleted=st.lists(st.sampled_from(["lnk/victim", "lnk/victimdir", "evil", "../outside",
                                         "/etc", "dir", "", "lnk"]), max_size=3))
def test_fuzzed_rootfs_diffs_never_touch_anything_outside_the_rootfs(tmp_path, members, deleted):
    base = tmp_path / ("case-%d" % len(os.listdir(tmp_path)))
    outside = base / "outside"
    outside.mkdir(parents=True)
    (outside / "secret").write_text("host")
    (outside / "victim").write_text("host")
    (outside / "victimdir").mkdir()
    (outside / "victimdir" / "f").write_text("host")
    rootfs = base / "rootfs"
    rootfs.mkdir()
    os.symlink(str(outside / "secret"), str(rootfs / "evil"))    # absolute: the host's path
    os.symlink("../outside", str(rootfs / "lnk"))                 # relative escape
    img = base / "img"
    img.mkdir()
    (img / rootfsdiff.DIFF).write_bytes(_tar(members))
    (img / rootfsdiff.DELETED).write_text(json.dumps(deleted))
    before = _tree_digest(str(outside))
    try:
        rootfsdiff.apply(str(img), str(rootfs))
    except GritError as e:
        assert e.message
    assert _tree_digest(str(outside)) == before
    assert os.stat(str(outside / "secret")).st_mode & 0o7777 == 0o644
