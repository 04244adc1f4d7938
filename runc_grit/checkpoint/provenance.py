"""Which image dirs this node's runc-grit made itself, and whether they are still as made.

`staging: auto` reads a checkpoint in place (no copy of a GPU's 18 GB) only where no one but
this node's root could have written it since: a dir runc-grit created at a checkpoint, under
a root-only local root, whose files are still the inodes runc-grit committed, unchanged
(size, mtime and ctime: a write, a chmod, a rename or a swap each changes one). Root-owned is
not enough: a root container without a user namespace writes uid 0 files onto a hostPath.
The record is kept in the state dir (root-only, never on the checkpoint volume); a reboot
forgets it, and the next restore copies.
"""
import hashlib
import json
import os

from runc_grit.fsutil import write_json_atomic

SUBDIR = "made"


def _record_path(state_dir, real):
    return os.path.join(state_dir, SUBDIR, hashlib.sha256(real.encode()).hexdigest()[:32]
                        + ".json")


def _files(fd):
    out = {}
    for name in os.listdir(fd):
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        out[name] = [st.st_mode, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    return out


def remember(image_dir, state_dir):
    """After a committed checkpoint into a dir runc-grit created: its identity and its files'."""
    real = os.path.realpath(image_dir)
    fd = os.open(real, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        rec = {"path": real, "dev": st.st_dev, "ino": st.st_ino, "files": _files(fd)}
    finally:
        os.close(fd)
    path = _record_path(state_dir, real)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    write_json_atomic(path, rec, mode=0o600)


def forget(image_dir, state_dir):
    try:
        os.unlink(_record_path(state_dir, os.path.realpath(image_dir)))
    except OSError:
        pass


def made_here(src, state_dir, extra_ok=()):
    """Did this node's runc-grit make the open image dir src (imagedir.ImageDir), and is every
    file in it still as committed? extra_ok: names a restore may have added since."""
    try:
        with open(_record_path(state_dir, src.path)) as f:
            rec = json.load(f)
    except (OSError, ValueError):
        return False
    st = src.stat_dir()
    if rec.get("path") != src.path or rec.get("dev") != st.st_dev or rec.get("ino") != st.st_ino:
        return False
    now = _files(src.fd)
    for name in extra_ok:
        if name not in rec["files"]:
            now.pop(name, None)
    return now == rec.get("files")
