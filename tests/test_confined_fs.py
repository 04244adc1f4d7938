"""File operations on content a container or a pod controls stay where they belong
(docs/security.md): a rootfs diff is applied inside the new rootfs only, whatever symlinks
that rootfs or the diff hold; what a checkpoint writes into its image dir never goes through
a symlink or hard link planted there. In-process, on tmp dirs: every test checks that
nothing outside the tree it works on changed."""
import io
import json
import os
import stat
import tarfile

import pytest

from runc_grit import fsutil
from runc_grit.checkpoint import manifest, rootfsdiff
from runc_grit.errors import GritError

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown/mknod need root")


def snapshot(top):
    """Every entry under top (and top itself): type, mode, owner, content or link target."""
    out = {}
    for d, dirs, files in os.walk(top):
        for name in [""] + dirs + files:
            p = os.path.join(d, name) if name else d
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    what = f.read()
            elif stat.S_ISLNK(st.st_mode):
                what = os.readlink(p)
            else:
                what = None
            out[os.path.relpath(p, top)] = (st.st_mode, st.st_uid, st.st_gid, st.st_nlink, what)
    return out


@pytest.fixture
def t(tmp_path):
    """A scene: outside/ (the node: must never change), root/ (the new rootfs), img/ (the
    image dir), each with a few files."""
    outside = tmp_path / "outside"
    (outside / "dir" / "sub").mkdir(parents=True)
    (outside / "target").write_text("host file\n")
    os.chmod(outside / "target", 0o644)
    (outside / "dir" / "victim").write_text("keep me\n")
    (outside / "dir" / "sub" / "f").write_text("keep me too\n")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0::/:/bin/sh\n")
    img = tmp_path / "img"
    img.mkdir()

    class Scene:
        pass
    s = Scene()
    s.tmp, s.outside, s.root, s.img = str(tmp_path), str(outside), str(root), str(img)
    s.before = snapshot(s.outside)
    yield s
    assert snapshot(s.outside) == s.before, "something outside the tree changed"


def member(name, kind=tarfile.REGTYPE, data=b"", mode=0o644, uid=0, gid=0, linkname="",
           mtime=1_600_000_000):
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.uid, ti.gid, ti.linkname, ti.mtime = kind, mode, uid, gid, linkname, mtime
    ti.size = len(data) if kind == tarfile.REGTYPE else 0
    return ti, (io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def diff(img, members, deleted=()):
    """rootfs-diff.tar and deleted.files in img, as a checkpoint carries them."""
    with tarfile.open(os.path.join(img, rootfsdiff.DIFF), "w") as tar:
        for ti, f in members:
            tar.addfile(ti, f)
    with open(os.path.join(img, rootfsdiff.DELETED), "w") as f:
        json.dump(list(deleted), f)


def read(p):
    with open(p, "rb") as f:
        return f.read()


# --- fsutil -------------------------------------------------------------------------------

@pytest.mark.parametrize("rel, parts", [
    ("a/b", ["a", "b"]), ("./a//b/", ["a", "b"]), (".", []), ("a/./b", ["a", "b"]),
])
def test_confined_parts(rel, parts):
    assert fsutil.confined_parts(rel) == parts


@pytest.mark.parametrize("rel", ["../x", "a/../../x", "a/..", "/etc/passwd", "a\0b", 7, None])
def test_confined_parts_refuses_what_leaves(rel):
    with pytest.raises(ValueError):
        fsutil.confined_parts(rel)


def test_walk_refuses_a_symlink_on_the_way_and_creates_missing_dirs(t):
    os.symlink(t.outside + "/dir", os.path.join(t.root, "lnk"))
    os.symlink("../outside/dir", os.path.join(t.root, "rel"))
    rfd = fsutil.open_dir(t.root)
    try:
        for via in (["lnk"], ["rel", "sub"], ["etc", "passwd"]):
            with pytest.raises(OSError):
                fsutil.walk(rfd, via, create=0o755)
        fd = fsutil.walk(rfd, ["new", "deeper"], create=0o750)
        os.close(fd)
    finally:
        os.close(rfd)
    assert os.path.isdir(os.path.join(t.root, "new", "deeper"))


def test_open_dir_refuses_a_symlinked_last_component(t):
    os.symlink(t.outside, os.path.join(t.tmp, "link"))
    with pytest.raises(OSError):
        fsutil.open_dir(os.path.join(t.tmp, "link"))
    os.close(fsutil.open_dir(os.path.join(t.tmp, "link"), follow=True))


def test_write_atomic_at_replaces_a_planted_symlink(t):
    os.symlink(t.outside + "/target", os.path.join(t.img, "out.json"))
    dfd = fsutil.open_dir(t.img)
    try:
        fsutil.write_json_atomic_at(dfd, "out.json", {"a": 1}, mode=0o600)
    finally:
        os.close(dfd)
    p = os.path.join(t.img, "out.json")
    st = os.lstat(p)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert json.loads(read(p)) == {"a": 1}
    assert [n for n in os.listdir(t.img) if n.endswith(".tmp")] == []


def test_create_temp_never_reuses_a_planted_temp_name(t, monkeypatch):
    names = iter(["planted", "fresh"])
    monkeypatch.setattr(fsutil.secrets, "token_hex", lambda n: next(names))
    os.symlink(t.outside + "/target", os.path.join(t.img, ".x.planted.tmp"))
    dfd = fsutil.open_dir(t.img)
    try:
        fd, tmp = fsutil.create_temp(dfd, "x")
        os.write(fd, b"mine")
        os.close(fd)
    finally:
        os.close(dfd)
    assert tmp == ".x.fresh.tmp" and read(os.path.join(t.img, tmp)) == b"mine"
    assert os.path.islink(os.path.join(t.img, ".x.planted.tmp"))


def test_write_atomic_by_path_still_works_and_replaces_a_symlink(t):
    p = os.path.join(t.img, "state.json")
    fsutil.write_json_atomic(p, {"v": 1})
    assert json.loads(read(p)) == {"v": 1}
    os.unlink(p)
    os.symlink(t.outside + "/target", p)
    fsutil.write_atomic(p, "new\n", mode=0o600)
    assert not os.path.islink(p) and read(p) == b"new\n"


def test_remove_links_keeps_files_and_dirs(t):
    img = t.img
    os.symlink(t.outside + "/target", os.path.join(img, "inventory.img"))
    os.symlink("/nowhere", os.path.join(img, ".hidden"))
    os.link(t.outside + "/dir/victim", os.path.join(img, "pages-1.img"))
    with open(os.path.join(img, "core-1.img"), "w") as f:
        f.write("mine")
    os.mkdir(os.path.join(img, "sub"))
    t.before = snapshot(t.outside)  # the hard link raised victim's link count
    dfd = fsutil.open_dir(img)
    try:
        assert fsutil.remove_links(dfd) == [".hidden", "inventory.img", "pages-1.img"]
    finally:
        os.close(dfd)
    assert sorted(os.listdir(img)) == ["core-1.img", "sub"]
    t.before = snapshot(t.outside)  # back to one link: content untouched (checked here)
    assert read(t.outside + "/dir/victim") == b"keep me\n"


def test_open_regular_refuses_links_and_fifos_without_opening_them(t):
    os.symlink(t.outside + "/target", os.path.join(t.img, "l"))
    os.mkfifo(os.path.join(t.img, "fifo"))  # an open for reading would hang
    for name in ("l", "fifo"):
        with pytest.raises(OSError):
            fsutil.open_regular(os.path.join(t.img, name))
    with open(os.path.join(t.img, "f"), "w") as f:
        f.write("x")
    dfd = fsutil.open_dir(t.img)
    fd = fsutil.open_regular("f", dir_fd=dfd)
    assert os.read(fd, 10) == b"x"
    os.close(fd)
    os.close(dfd)


# --- rootfsdiff.apply: item 1 -------------------------------------------------------------

@needs_root
@pytest.mark.parametrize("absolute", [True, False])
def test_apply_replaces_a_symlink_instead_of_writing_through_it(t, absolute):
    """The rootfs holds evil -> a node file; the diff's evil (setuid) replaces the link."""
    target = t.outside + "/target" if absolute else "../outside/target"
    os.symlink(target, os.path.join(t.root, "evil"))
    diff(t.img, [member("evil", data=b"#!/bin/sh\nid\n", mode=0o4755, uid=1000, gid=1000)])
    assert rootfsdiff.apply(t.img, t.root) == (1, 0)
    st = os.lstat(os.path.join(t.root, "evil"))
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o4755  # after chown
    assert (st.st_uid, st.st_gid) == (1000, 1000) and st.st_mtime == 1_600_000_000
    assert read(os.path.join(t.root, "evil")) == b"#!/bin/sh\nid\n"


@needs_root
def test_apply_replaces_a_hard_link_instead_of_writing_into_it(t):
    os.link(t.outside + "/target", os.path.join(t.root, "etc", "shadow"))
    t.before = snapshot(t.outside)
    diff(t.img, [member("etc/shadow", data=b"mine\n")])
    rootfsdiff.apply(t.img, t.root)
    assert read(os.path.join(t.root, "etc", "shadow")) == b"mine\n"
    t.before = snapshot(t.outside)  # one link fewer now; the content checked here
    assert read(t.outside + "/target") == b"host file\n"


@needs_root
def test_apply_refuses_a_member_through_a_symlinked_dir(t):
    os.symlink(t.outside + "/dir", os.path.join(t.root, "lnk"))
    diff(t.img, [member("lnk/planted", data=b"x")])
    with pytest.raises(GritError) as e:
        rootfsdiff.apply(t.img, t.root)
    assert e.value.kind == "source" and "'lnk/planted'" in e.value.message
    assert "symlink" in e.value.message


@needs_root
def test_a_dir_member_replaces_a_symlinked_dir(t):
    """The source had a real dir where the new rootfs has a link: the link is replaced."""
    os.symlink("../outside/dir", os.path.join(t.root, "lnk"))
    diff(t.img, [member("lnk", tarfile.DIRTYPE, mode=0o750, mtime=1_500_000_000),
                 member("lnk/planted", data=b"x")])
    rootfsdiff.apply(t.img, t.root)
    st = os.lstat(os.path.join(t.root, "lnk"))
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o750
    assert st.st_mtime == 1_500_000_000  # set after its entries were written
    assert read(os.path.join(t.root, "lnk", "planted")) == b"x"


@needs_root
@pytest.mark.parametrize("name", ["../escape", "a/../../escape", "/abs/escape", "./../escape"])
def test_apply_refuses_member_names_that_leave_the_rootfs(t, name):
    diff(t.img, [member(name, data=b"x")])
    with pytest.raises(GritError) as e:
        rootfsdiff.apply(t.img, t.root)
    assert e.value.kind == "source" and repr(name) in e.value.message
    assert not os.path.exists(os.path.join(t.tmp, "escape"))


@needs_root
@pytest.mark.parametrize("deleted", [["lnk/victim"], ["lnk/sub"], ["rel/victim"]])
def test_deleted_files_through_a_symlink_remove_nothing(t, deleted):
    os.symlink(t.outside + "/dir", os.path.join(t.root, "lnk"))
    os.symlink("../../" + os.path.basename(t.tmp) + "/outside/dir", os.path.join(t.root, "rel"))
    diff(t.img, [], deleted)
    with pytest.raises(GritError) as e:
        rootfsdiff.apply(t.img, t.root)
    assert e.value.kind == "source" and repr(deleted[0]) in e.value.message


@needs_root
def test_deleted_files_remove_the_link_itself_never_its_target(t):
    os.symlink(t.outside + "/dir", os.path.join(t.root, "lnk"))
    os.symlink(t.outside + "/target", os.path.join(t.root, "etc", "motd"))
    os.makedirs(os.path.join(t.root, "data", "cache"))
    os.symlink(t.outside + "/dir", os.path.join(t.root, "data", "cache", "inner"))
    diff(t.img, [], ["lnk", "etc/motd", "data/cache", "not/there", "etc/gone"])
    assert rootfsdiff.apply(t.img, t.root) == (0, 5)
    assert sorted(os.listdir(t.root)) == ["data", "etc"]
    assert os.listdir(os.path.join(t.root, "data")) == []
    assert os.listdir(os.path.join(t.root, "etc")) == ["passwd"]


@needs_root
@pytest.mark.parametrize("entry", ["..", "../outside/target", "/etc/passwd", "", 3, ["x"]])
def test_deleted_files_entries_that_leave_the_rootfs_are_refused(t, entry):
    diff(t.img, [], [entry])
    with pytest.raises(GritError) as e:
        rootfsdiff.apply(t.img, t.root)
    assert e.value.kind == "source" and repr(entry) in e.value.message
    assert os.path.exists(os.path.join(t.root, "etc", "passwd"))


@needs_root
def test_symlink_members_are_created_never_followed(t):
    diff(t.img, [member("abs", tarfile.SYMTYPE, linkname=t.outside + "/target", uid=7),
                 member("rel", tarfile.SYMTYPE, linkname="../../../outside/dir"),
                 member("abs", data=b"replaced\n"),      # a later member replaces the link
                 member("rel", tarfile.DIRTYPE),
                 member("rel/x", data=b"inside\n")])
    rootfsdiff.apply(t.img, t.root)
    assert read(os.path.join(t.root, "abs")) == b"replaced\n"
    assert read(os.path.join(t.root, "rel", "x")) == b"inside\n"
    assert not os.path.islink(os.path.join(t.root, "rel"))


@needs_root
def test_symlink_member_keeps_its_owner_and_target(t):
    diff(t.img, [member("etc/l", tarfile.SYMTYPE, linkname="/etc/shadow", uid=7, gid=8)])
    rootfsdiff.apply(t.img, t.root)
    st = os.lstat(os.path.join(t.root, "etc", "l"))
    assert stat.S_ISLNK(st.st_mode) and (st.st_uid, st.st_gid) == (7, 8)
    assert os.readlink(os.path.join(t.root, "etc", "l")) == "/etc/shadow"


@needs_root
def test_hard_links_stay_inside_and_never_follow(t):
    os.symlink(t.outside + "/dir", os.path.join(t.root, "lnk"))
    os.symlink(t.outside + "/target", os.path.join(t.root, "evil"))
    diff(t.img, [member("data/a", data=b"a\n"),
                 member("data/b", tarfile.LNKTYPE, linkname="data/a"),
                 member("data/c", tarfile.LNKTYPE, linkname="evil")])  # the link itself
    rootfsdiff.apply(t.img, t.root)
    a, b = (os.lstat(os.path.join(t.root, "data", n)) for n in "ab")
    assert a.st_ino == b.st_ino and read(os.path.join(t.root, "data", "b")) == b"a\n"
    c = os.lstat(os.path.join(t.root, "data", "c"))
    assert stat.S_ISLNK(c.st_mode) and c.st_ino == os.lstat(os.path.join(t.root, "evil")).st_ino
    for bad in ("lnk/victim", "../outside/target", "/etc/passwd"):
        diff(t.img, [member("data/d", tarfile.LNKTYPE, linkname=bad)])
        with pytest.raises(GritError) as e:
            rootfsdiff.apply(t.img, t.root)
        assert e.value.kind == "source" and "'data/d'" in e.value.message


@needs_root
@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE])
def test_devices_and_fifos_are_refused(t, kind):
    diff(t.img, [member("dev/sda", kind)])
    with pytest.raises(GritError, match="device or fifo"):
        rootfsdiff.apply(t.img, t.root)
    assert not os.path.exists(os.path.join(t.root, "dev", "sda"))


@needs_root
def test_a_symlinked_diff_in_the_image_dir_is_refused(t):
    diff(t.outside, [member("x", data=b"x")])
    t.before = snapshot(t.outside)
    os.symlink(t.outside + "/" + rootfsdiff.DIFF, os.path.join(t.img, rootfsdiff.DIFF))
    with pytest.raises(GritError) as e:
        rootfsdiff.apply(t.img, t.root)
    assert e.value.kind == "source"
    assert not os.path.exists(os.path.join(t.root, "x"))


def test_no_diff_is_no_change(t):
    assert rootfsdiff.apply(t.img, t.root) is None


# --- rootfsdiff.capture and the image dir: item 2 -----------------------------------------

def plant(t, names):
    """Each name in the image dir: a symlink to a file outside (made per name)."""
    for name in names:
        target = os.path.join(t.outside, "planted-" + name.strip("."))
        with open(target, "w") as f:
            f.write("outside %s\n" % name)
        os.symlink(target, os.path.join(t.img, name))
    t.before = snapshot(t.outside)


@needs_root
def test_capture_reads_the_upperdir_without_following_and_writes_by_fd(t, monkeypatch):
    upper = os.path.join(t.tmp, "upper")
    os.makedirs(os.path.join(upper, "data", "sub"))
    with open(os.path.join(upper, "data", "note"), "w") as f:
        f.write("created\n")
    os.chown(os.path.join(upper, "data", "note"), 1000, 1000)
    os.chmod(os.path.join(upper, "data", "note"), 0o4750)
    os.link(os.path.join(upper, "data", "note"), os.path.join(upper, "data", "sub", "again"))
    os.symlink(t.outside + "/target", os.path.join(upper, "evil"))   # stays a link
    os.symlink(t.outside + "/dir", os.path.join(upper, "lnk"))       # never descended
    os.mknod(os.path.join(upper, "gone"), stat.S_IFCHR | 0o600, os.makedev(0, 0))  # whiteout
    monkeypatch.setattr(rootfsdiff, "upperdir", lambda rootfs: upper)
    plant(t, [".rootfs-diff.tar.tmp", rootfsdiff.DIFF, rootfsdiff.DELETED])
    assert rootfsdiff.capture("/unused", t.img) == (6, 1)
    for name in (rootfsdiff.DIFF, rootfsdiff.DELETED):
        assert stat.S_ISREG(os.lstat(os.path.join(t.img, name)).st_mode)
    assert json.loads(read(os.path.join(t.img, rootfsdiff.DELETED))) == ["gone"]
    with tarfile.open(os.path.join(t.img, rootfsdiff.DIFF)) as tar:
        got = {m.name: m for m in tar.getmembers()}
    assert sorted(got) == ["data", "data/note", "data/sub", "data/sub/again", "evil", "lnk"]
    assert got["evil"].issym() and got["evil"].linkname == t.outside + "/target"
    assert got["data/sub/again"].islnk() and got["data/sub/again"].linkname == "data/note"
    assert got["data/note"].mode == 0o4750 and got["data/note"].uid == 1000
    # and back: applied onto a fresh rootfs holding the removed file
    with open(os.path.join(t.root, "gone"), "w") as f:
        f.write("old")
    os.unlink(os.path.join(t.img, ".rootfs-diff.tar.tmp"))
    assert rootfsdiff.apply(t.img, t.root) == (6, 1)
    assert not os.path.exists(os.path.join(t.root, "gone"))
    note = os.lstat(os.path.join(t.root, "data", "note"))
    assert stat.S_IMODE(note.st_mode) == 0o4750 and note.st_uid == 1000 and note.st_nlink == 2
    assert os.readlink(os.path.join(t.root, "lnk")) == t.outside + "/dir"


def test_capture_refuses_a_symlinked_image_dir(t, monkeypatch):
    upper = os.path.join(t.tmp, "upper")
    os.makedirs(upper)
    monkeypatch.setattr(rootfsdiff, "upperdir", lambda rootfs: upper)
    link = os.path.join(t.tmp, "img-link")
    os.symlink(t.outside, link)
    with pytest.raises(GritError) as e:
        rootfsdiff.capture("/unused", link)
    assert e.value.kind == "checkpoint"


def test_manifest_and_spec_replace_planted_symlinks(t):
    plant(t, [manifest.NAME, "spec.dump", "." + manifest.NAME + ".abc123.tmp"])
    bundle = os.path.join(t.tmp, "bundle")
    os.makedirs(bundle)
    with open(os.path.join(bundle, "config.json"), "w") as f:
        f.write('{"ociVersion": "1.0.2"}')
    manifest.save_spec(bundle, t.img)
    manifest.write(t.img, {"format": "x"})
    assert read(os.path.join(t.img, "spec.dump")) == b'{"ociVersion": "1.0.2"}'
    assert json.loads(read(os.path.join(t.img, manifest.NAME))) == {"format": "x"}
    for name in ("spec.dump", manifest.NAME):
        assert stat.S_ISREG(os.lstat(os.path.join(t.img, name)).st_mode)


def test_prepare_dir_removes_planted_links_and_the_old_manifest(t):
    plant(t, ["inventory.img", "pages-1.img", manifest.NAME, ".rootfs-diff.tar.tmp"])
    with open(os.path.join(t.img, "old.img"), "w") as f:
        f.write("kept")
    manifest.prepare_dir(t.img, "checkpoint of x")
    assert os.listdir(t.img) == ["old.img"]
    manifest.write(t.img, {"format": "x"})
    manifest.remove(t.img)
    assert os.listdir(t.img) == ["old.img"]


def test_prepare_dir_refuses_a_symlinked_image_dir(t):
    with open(os.path.join(t.outside, manifest.NAME), "w") as f:
        f.write("{}")
    t.before = snapshot(t.outside)
    link = os.path.join(t.tmp, "img-link")
    os.symlink(t.outside, link)
    with pytest.raises(GritError) as e:
        manifest.prepare_dir(link, "checkpoint of x")
    assert e.value.kind == "checkpoint" and "symlink" in e.value.message
    manifest.remove(link)  # not followed: the target's manifest stays
    with pytest.raises(OSError):
        manifest.write(link, {"format": "x"})
    manifest.save_spec(t.tmp, link)  # best effort, as before: nothing written
