"""What CRIU restores beyond credentials and capabilities (docs/security.md, "What CRIU
restores, field by field"), against real runc + CRIU through the installed runc-grit: images
edited with crit the way an attacker who has the node's key would (re-signed after the edit),
each refused before CRIU runs, with the reason in the log and nothing restored; a destination
spec whose seccomp profile is not the source's, refused; and the legitimate restore of the
same container (seccomp, read-only rootfs, masked and read-only paths) still continues."""
import glob
import json
import os
import shutil

import pytest

from conftest import Env
from test_integration_runc import assert_continues, checkpoint
from test_security import SECCOMP, _crit, _resign, _run, _status, _unprivileged

ALLOW_ALL = {"defaultAction": "SCMP_ACT_ALLOW"}


@pytest.fixture
def henv(workdir):
    e = Env(workdir)
    yield e
    e.cleanup()


def _bundle(e, name, annotations=None, rootfs_from=None, seccomp=SECCOMP):
    """The unprivileged spec of test_security (no capabilities, noNewPrivileges), with a
    read-only rootfs and the given seccomp profile; runc's masked and read-only paths; and,
    as a pod's service account token, a read-only bind at /var/run/secrets where the rootfs
    has Debian's /var/run -> ../run (the runtime mounts it at /run/secrets)."""
    if rootfs_from is None:
        rootfs = os.path.join(e.dir, "base-rootfs")
        if not os.path.isdir(rootfs):
            from runc_grit.oci import bundle
            bundle.make_rootfs(rootfs)
            os.makedirs(os.path.join(rootfs, "var"))
            os.makedirs(os.path.join(rootfs, "run"))
            os.symlink("../run", os.path.join(rootfs, "var", "run"))
        rootfs_from = rootfs
    secrets = os.path.join(e.dir, "secrets")
    os.makedirs(secrets, exist_ok=True)
    b = _unprivileged(e, name, annotations, rootfs_from)
    path = os.path.join(b, "config.json")
    spec = json.load(open(path))
    spec["root"]["readonly"] = True
    spec["mounts"].append({"destination": "/var/run/secrets", "type": "bind", "source": secrets,
                           "options": ["rbind", "ro", "nosuid", "nodev"]})
    if seccomp is not None:
        spec["linux"]["seccomp"] = seccomp
    json.dump(spec, open(path, "w"))
    return b


def _restore(e, name, img, src, seccomp=SECCOMP):
    b = _bundle(e, name, {"grit.dev/restore-from": img}, os.path.join(src, "rootfs"), seccomp)
    p, out = e.grit.create_with_pipes(b, name)
    return p, out, b


def _mountpoints(image_dir):
    names = [os.path.basename(p) for p in glob.glob(os.path.join(image_dir, "mountpoints-*.img"))]
    assert len(names) == 1, names
    return names[0]


def _at(entries, mountpoint):
    return next(m for m in entries if m["mountpoint"] == mountpoint)


def _proc_sys_writable(entries):
    m = _at(entries, "/proc/sys")
    flags = int(str(m["flags"]), 0) & ~1   # MS_RDONLY off
    m["flags"] = hex(flags) if isinstance(m["flags"], str) else flags


def _mqueue_renamed(entries):
    _at(entries, "/dev/mqueue")["mountpoint"] = "/dev/mq"


def _nofile_raised(entries):
    entries[0]["tc"]["rlimits"]["rlimits"][7]["max"] = 4096   # RLIMIT_NOFILE; the spec's: 1024


def _securebits_widened(entries):
    # SECBIT_NO_SETUID_FIXUP and its lock: capabilities kept across uid changes
    entries[0]["thread_core"]["creds"]["secbits"] = (1 << 2) | (1 << 3)


def _mountinfo(pid):
    """mountpoint -> the mount options of the visible (last) mount there."""
    out = {}
    with open("/proc/%d/mountinfo" % pid) as f:
        for ln in f:
            parts = ln.split()
            out[parts[4]] = parts[5].split(",")
    return out


EDITS = [
    ("mountpoints", _proc_sys_writable,
     "mount /proc/sys lacks ro in the image (it has none of ro,nosuid,nodev,noexec); the spec "
     "makes it ro"),
    ("mountpoints", _mqueue_renamed,
     "mount /dev/mq (mqueue) in the image; the spec makes no mount there"),
    ("core-1.img", _nofile_raised,
     "task 1: RLIMIT_NOFILE hard limit 4096 in the image; the spec's hard limit is 1024"),
    ("core-1.img", _securebits_widened,
     "task 1: securebit SECBIT_NO_SETUID_FIXUP (capabilities survive a change of uid from or "
     "to 0) in the image; the spec grants no CAP_SETPCAP to set it"),
]


@pytest.mark.integration
def test_crit_edited_mounts_rlimits_and_securebits_are_refused(henv):
    """One checkpoint, four copies, each edited with crit and re-signed with the node's key:
    /proc/sys (a readonlyPaths entry) made writable, a mount the spec does not make (renamed),
    RLIMIT_NOFILE's hard limit raised above the spec's, SECBIT_NO_SETUID_FIXUP set. Each is
    refused by the privilege check, naming the field and both sides; nothing is restored."""
    e = henv
    src = _bundle(e, "src")
    out = _run(e, src, "src")
    img = os.path.join(e.ckroot, "clean")
    checkpoint(e, src, "src", img)
    out.closed()
    for i, (image, edit, want) in enumerate(EDITS):
        edited = os.path.join(e.ckroot, "edited-%d" % i)
        shutil.copytree(img, edited)
        _crit(edited, _mountpoints(edited) if image == "mountpoints" else image, edit)
        _resign(e, edited)   # an attacker with the key: only the privilege check is left
        name = "dst-%d" % i
        p, _, b = _restore(e, name, edited, src)
        assert p.returncode != 0, (edit.__name__, "restored")
        err = e.grit.log_error(b)
        assert "more than this container's spec grants" in err, (edit.__name__, err)
        assert want in err, (edit.__name__, err)
        assert e.grit.state(name) is None, edit.__name__
        assert e.runc("state", name).returncode != 0, edit.__name__


@pytest.mark.integration
def test_seccomp_profile_must_be_the_sources_and_a_legit_restore_continues(henv):
    """The destination spec's seccomp profile allows everything, the source's did not: CRIU
    would restore the source's filter under a spec that says another, so it is refused (no
    edit and no key needed: the spec is the pod's). The same checkpoint into the source's own
    spec (seccomp, read-only rootfs, masked and read-only paths, a bind a rootfs symlink moves)
    restores and continues, with its filter, its read-only /proc/sys and /sys, its masked
    paths and its bind."""
    e = henv
    src = _bundle(e, "src")
    out = _run(e, src, "src")
    img = os.path.join(e.ckroot, "img")
    checkpoint(e, src, "src", img)
    out.closed()
    p, _, b = _restore(e, "allow-all", img, src, seccomp=ALLOW_ALL)
    assert p.returncode != 0
    err = e.grit.log_error(b)
    assert "seccomp: the spec's profile (sha256 " in err, err
    assert "is not the source container's (sha256 " in err, err
    assert e.grit.state("allow-all") is None
    p, out2, b = _restore(e, "ok", img, src)
    assert p.returncode == 0, e.grit.log_error(b)
    assert e.grit.run(b, "start", "ok").returncode == 0
    assert out2.wait_for(lambda r: len(r.ints()) >= 2)
    assert_continues(out.ints(), out2.ints())
    pid = e.grit.state("ok")["pid"]
    st = _status(pid)
    assert st["Seccomp"] == ["2"] and st["NoNewPrivs"] == ["1"] and int(st["CapEff"][0], 16) == 0
    mi = _mountinfo(pid)
    # (the root's read-only flag is not asserted: CRIU 4.1 restores the root mount writable
    # whatever the image and the spec say, plain runc too; CRIU 4.2 restores it read-only)
    assert "ro" in mi["/proc/sys"] and "ro" in mi["/sys"], mi
    assert "/sys/firmware" in mi and "/proc/keys" in mi, mi
    assert "ro" in mi["/run/secrets"], mi   # the spec's /var/run/secrets, through the symlink


@pytest.mark.integration
def test_a_read_only_root_stays_read_only_through_a_restore(workdir):
    """CRIU 4.1 restores a read-only root writable (runc restore alone does the same): the
    spec grants a read-only root, so runc-grit remounts it read-only before the tasks run, and
    checks the restored init's root after the restore, on every stack."""
    from conftest import Env
    from runc_grit.node import rootmount
    from test_integration_runc import assert_continues, checkpoint
    e = Env(workdir)
    try:
        def ro(b):
            p = os.path.join(b, "config.json")
            spec = json.load(open(p))
            spec["root"]["readonly"] = True
            json.dump(spec, open(p, "w"))
        b = e.bundle("src")
        ro(b)
        p, out = e.grit.create_with_pipes(b, "src")
        assert p.returncode == 0 and e.grit.run(b, "start", "src").returncode == 0
        assert out.wait_for(lambda r: len(r.ints()) >= 2)
        assert rootmount.is_readonly(e.grit.state("src")["pid"])
        img = os.path.join(e.ckroot, "ro")
        checkpoint(e, b, "src", img)
        b2 = e.bundle("dst", annotations={"grit.dev/restore-from": img},
                      rootfs_from=os.path.join(b, "rootfs"))
        ro(b2)
        p, out2 = e.grit.create_with_pipes(b2, "dst")
        assert p.returncode == 0, e.grit.log_error(b2)
        pid = e.grit.state("dst")["pid"]
        assert rootmount.is_readonly(pid), rootmount.root_options(pid)
        assert e.grit.run(b2, "start", "dst").returncode == 0
        assert out2.wait_for(lambda r: len(r.ints()) >= 2)
        assert_continues(out.ints(), out2.ints())
        hooks = [json.loads(ln) for ln in open(os.path.join(e.state_dir, "dst", "hooks.jsonl"))]
        print("post-restore:", [h for h in hooks if h.get("action") == "post-restore"])
    finally:
        e.cleanup()
