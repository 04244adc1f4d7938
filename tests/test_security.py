"""A checkpoint on a shared volume never gives a container more than its spec grants
(docs/security.md). Unit tests of the privilege comparison, then real runc + CRIU: a
privileged source into an unprivileged spec, crit-edited images (caught by the signature and
by the privilege check, each on its own), a legitimate restore, and a file swapped between
verification and CRIU."""
import json
import os
import shutil
import subprocess

import pytest

from conftest import Env
from runc_grit.checkpoint import integrity
from runc_grit.checkpoint import manifest as _manifest
from runc_grit.checkpoint import privileges
from test_integration_runc import assert_continues, checkpoint

ROOT_CAPS = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]  # oci.bundle's default
# a seccomp profile that allows everything but one syscall nobody here uses
SECCOMP = {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
           "syscalls": [{"names": ["kexec_load"], "action": "SCMP_ACT_ERRNO"}]}


def _task(uid=0, caps=(0x20000420, 0), nnp=1, seccomp=0, ns=None):
    creds = {k: uid for k in ("uid", "euid", "suid", "fsuid", "gid", "egid", "sgid", "fsgid")}
    creds.update(no_new_privs=nnp, cap_inh=[0, 0], cap_amb=[0, 0],
                 **{k: list(caps) for k in ("cap_prm", "cap_eff", "cap_bnd")})
    ids = {"pid_ns_id": 9, "net_ns_id": 10, "mnt_ns_id": 13, "user_ns_id": 7}
    ids.update(ns or {})
    return {"pid": 1, "tid": 1, "creds": creds, "seccomp_mode": seccomp, "ids": ids}


def _image(*tasks):
    return {"root_ids": {"pid_ns_id": 1, "net_ns_id": 2, "mnt_ns_id": 6, "user_ns_id": 7},
            "tasks": list(tasks)}


def _spec(uid=0, caps=ROOT_CAPS, nnp=True, seccomp=False, ns=("pid", "network", "mount")):
    sets = ("bounding", "effective", "permitted", "ambient")
    spec = {"process": {"user": {"uid": uid, "gid": uid}, "noNewPrivileges": nnp,
                        "capabilities": {s: list(caps) for s in sets}},
            "linux": {"namespaces": [{"type": t} for t in ns]}}
    if seccomp:
        spec["linux"]["seccomp"] = SECCOMP
    return spec


def test_capability_words_to_names():
    assert privileges.cap_names([0x20000420, 0]) == set(ROOT_CAPS)
    assert privileges.cap_names([0, 1 << 8]) == {"CAP_CHECKPOINT_RESTORE"}   # bit 40
    assert privileges.cap_names([0xFFFFFFFF, 0x1FF]) == set(privileges.CAPS)


def test_the_same_privileges_pass():
    assert privileges.problems(_image(_task()), _spec()) == []
    assert privileges.problems(_image(_task(uid=1000, caps=(0, 0), seccomp="filter")),
                               _spec(uid=1000, caps=(), seccomp=True)) == []


@pytest.mark.parametrize("task, spec, want", [
    (_task(uid=0), _spec(uid=1000),
     "task 1: uid/euid/suid/fsuid 0/0/0/0 in the image; the spec runs it as uid 1000"),
    (_task(uid=0), _spec(uid=1000), "gid/egid/sgid/fsgid 0/0/0/0 in the image; the spec gives gid 1000"),
    (_task(), _spec(caps=["CAP_KILL"]), "effective capabilities [CAP_AUDIT_WRITE, "
                                        "CAP_NET_BIND_SERVICE] in the image; the spec's "
                                        "effective set is [CAP_KILL]"),
    (_task(caps=(0xFFFFFFFF, 0x1FF)), _spec(), "bounding capabilities [CAP_AUDIT_CONTROL"),
    (_task(nnp=0), _spec(nnp=True), "no_new_privs is off in the image"),
    (_task(seccomp=0), _spec(seccomp=True), "no seccomp filter in the image"),
    (_task(seccomp="disabled"), _spec(seccomp=True), "no seccomp filter in the image"),
    (_task(ns={"net_ns_id": 2}), _spec(), "in the node's own network namespace in the image"),
])
def test_each_escalation_is_named(task, spec, want):
    found = privileges.problems(_image(task), spec)
    assert any(want in p for p in found), found


def test_a_namespace_the_spec_joins_is_not_compared():
    """kubelet's app containers join the pod's namespaces by path: nothing to compare."""
    spec = _spec()
    spec["linux"]["namespaces"][1]["path"] = "/proc/1/ns/net"
    assert privileges.problems(_image(_task(ns={"net_ns_id": 2})), spec) == []


# --- real runc + CRIU ---------------------------------------------------------------------

def _unprivileged(e, name, annotations=None, rootfs_from=None, seccomp=False, uid=0):
    """A bundle whose spec grants nothing: every capability set empty, noNewPrivileges, (a
    seccomp profile), (a uid other than 0). Sources keep uid 0: CRIU reads a task's rlimits
    with prlimit, which needs CAP_SYS_RESOURCE for another uid's task, and root on this
    machine (a Firecracker VM's container) lacks it."""
    b = e.bundle(name, annotations=annotations, rootfs_from=rootfs_from)
    path = os.path.join(b, "config.json")
    spec = json.load(open(path))
    spec["process"]["user"] = {"uid": uid, "gid": uid}
    spec["process"]["capabilities"] = {k: [] for k in ("bounding", "effective", "permitted",
                                                       "inheritable", "ambient")}
    spec["process"]["noNewPrivileges"] = True
    if seccomp:
        spec["linux"]["seccomp"] = SECCOMP
    json.dump(spec, open(path, "w"))
    return b


def _status(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for ln in f:
            k, _, v = ln.partition(":")
            out[k] = v.split()
    return out


def _run(e, b, cid):
    p, out = e.grit.create_with_pipes(b, cid)
    assert p.returncode == 0, e.grit.log_error(b)
    assert e.grit.run(b, "start", cid).returncode == 0
    assert out.wait_for(lambda r: len(r.ints()) >= 3)
    return out


def _restore(e, name, img, src, seccomp=False, unprivileged=True, uid=0):
    ann = {"grit.dev/restore-from": img}
    rootfs = os.path.join(src, "rootfs")
    b = (_unprivileged(e, name, ann, rootfs, seccomp, uid) if unprivileged
         else e.bundle(name, annotations=ann, rootfs_from=rootfs))
    p, out = e.grit.create_with_pipes(b, name)
    return p, out, b


def _crit_edit(image_dir, name, edit):
    """Edit one CRIU image the way an attacker would: crit decode, change, crit encode."""
    crit = shutil.which("crit")
    if not crit:
        pytest.skip("crit (pycriu) not installed")
    path = os.path.join(image_dir, name)
    doc = json.loads(subprocess.run([crit, "decode", "-i", path], check=True,
                                    capture_output=True).stdout)
    edit(doc["entries"][0])
    subprocess.run([crit, "encode", "-o", path], input=json.dumps(doc).encode(), check=True,
                   capture_output=True)


def _resign(e, image_dir):
    """The manifest made to match the edited files again, signed with this node's key (an
    attacker who has the key): only the privilege check is left to catch the edit."""
    path = os.path.join(image_dir, _manifest.NAME)
    m = json.load(open(path))
    m["images"] = _manifest.list_images(image_dir, digest=True)
    integrity.sign(m, integrity.load_key(os.path.join(e.dir, "node.key")))
    _manifest.write(image_dir, m)


def _all_caps(entry):
    creds = entry["thread_core"]["creds"]
    for k in ("cap_inh", "cap_prm", "cap_eff", "cap_bnd", "cap_amb"):
        creds[k] = [0xFFFFFFFF, 0x1FF]
    creds["no_new_privs"] = 0


def _no_seccomp(entry):
    entry["thread_core"]["seccomp_mode"] = "disabled"
    entry["thread_core"].pop("seccomp_filter", None)


@pytest.fixture
def senv(workdir):
    e = Env(workdir)
    yield e
    e.cleanup()


@pytest.mark.integration
def test_privileged_source_into_unprivileged_spec_is_refused(senv):
    e = senv
    src = e.bundle("src")                      # uid 0, runc's default capabilities
    out = _run(e, src, "src")
    img = os.path.join(e.ckroot, "priv")
    checkpoint(e, src, "src", img)
    out.closed()
    p, _, b = _restore(e, "dst", img, src, uid=1000)
    assert p.returncode != 0
    err = e.grit.log_error(b)
    assert "more than this container's spec grants" in err, err
    assert "uid/euid/suid/fsuid 0/0/0/0 in the image; the spec runs it as uid 1000" in err
    assert "capabilities [CAP_AUDIT_WRITE, CAP_KILL, CAP_NET_BIND_SERVICE] in the image" in err
    assert e.grit.state("dst") is None
    # what the check prevents: without it, the restored task keeps the source's uid and caps
    e.write_config({"privilege_check": "off"})
    p, out2, b = _restore(e, "dst2", img, src, uid=1000)
    assert p.returncode == 0, e.grit.log_error(b)
    st = _status(e.grit.state("dst2")["pid"])
    assert st["Uid"][0] == "0" and int(st["CapEff"][0], 16) != 0


@pytest.mark.integration
@pytest.mark.parametrize("image, edit, seccomp", [
    ("core-1.img", _all_caps, False),             # every capability, no_new_privs off
    ("core-1.img", _no_seccomp, True),            # the seccomp filter removed
])
def test_crit_edited_image_is_refused_by_each_check(senv, image, edit, seccomp):
    e = senv
    src = _unprivileged(e, "src", seccomp=seccomp)
    out = _run(e, src, "src")
    img = os.path.join(e.ckroot, "edited")
    checkpoint(e, src, "src", img)
    out.closed()
    _crit_edit(img, image, edit)
    # 1. the signature's digests catch the edit
    p, _, b = _restore(e, "by-sig", img, src, seccomp)
    assert p.returncode != 0
    err = e.grit.log_error(b)
    assert "image core-1.img" in err and ("sha256" in err or "bytes, the manifest says" in err), err
    # 2. re-signed (a stolen key), only the privilege check stands: it refuses too
    _resign(e, img)
    p, _, b = _restore(e, "by-priv", img, src, seccomp)
    assert p.returncode != 0
    err = e.grit.log_error(b)
    assert "more than this container's spec grants" in err, err
    assert ("bounding capabilities [CAP_AUDIT_CONTROL" in err and "no_new_privs is off" in err
            ) if not seccomp else ("no seccomp filter" in err)
    assert e.grit.state("by-priv") is None
    # 3. the untouched checkpoint of the same container restores into the same spec
    img2 = os.path.join(e.ckroot, "clean")
    out3 = _run(e, src, "src2")
    checkpoint(e, src, "src2", img2)
    out3.closed()
    p, out4, b = _restore(e, "ok", img2, src, seccomp)
    assert p.returncode == 0, e.grit.log_error(b)
    assert e.grit.run(b, "start", "ok").returncode == 0
    assert out4.wait_for(lambda r: len(r.ints()) >= 2)
    assert_continues(out3.ints(), out4.ints())
    st = _status(e.grit.state("ok")["pid"])
    assert int(st["CapEff"][0], 16) == 0 and int(st["CapBnd"][0], 16) == 0
    assert st["NoNewPrivs"] == ["1"] and st["Seccomp"] == (["2"] if seccomp else ["0"])


@pytest.mark.integration
def test_a_file_swapped_after_verification_is_never_restored(senv):
    """The swap happens at the last moment: inside the CRIU wrapper, just before CRIU
    starts reading. It replaces the source's core image with an all-capabilities one. The
    restore reads the verified copy, so the task comes back without capabilities."""
    e = senv
    armed = os.path.join(e.dir, "armed")
    swapped = os.path.join(e.dir, "swapped")
    wrapper = os.path.join(e.dir, "criu-swap")
    with open(wrapper, "w") as f:
        f.write("#!/bin/sh\nif [ -e %s ]; then mv %s/evil %s/core-1.img; rm %s; touch %s; fi\n"
                "exec %s \"$@\"\n" % (armed, "$IMG", "$IMG", armed, swapped, shutil.which("criu")))
    os.chmod(wrapper, 0o755)
    e.write_config({"criu": wrapper})
    src = _unprivileged(e, "src")
    out = _run(e, src, "src")
    img = os.path.join(e.ckroot, "swap")
    checkpoint(e, src, "src", img)
    out.closed()
    evil = os.path.join(e.dir, "evil-img")
    shutil.copytree(img, evil)
    _crit_edit(evil, "core-1.img", _all_caps)
    shutil.copy(os.path.join(evil, "core-1.img"), os.path.join(img, "evil"))
    open(armed, "w").close()
    e.grit.env["IMG"] = img
    os.chmod(img, 0o777)  # a volume others can write: staging (auto) copies it first
    p, out2, b = _restore(e, "dst", img, src)
    assert p.returncode == 0, e.grit.log_error(b)
    assert os.path.exists(swapped), "the swap did not run"
    assert e.grit.run(b, "start", "dst").returncode == 0
    st = _status(e.grit.state("dst")["pid"])
    assert int(st["CapEff"][0], 16) == 0 and int(st["CapBnd"][0], 16) == 0
    assert out2.wait_for(lambda r: len(r.ints()) >= 2)
    assert_continues(out.ints(), out2.ints())
    assert os.listdir(os.path.join(e.dir, "staging")) == []  # the copy is gone


@pytest.mark.integration
def test_in_place_restore_refuses_a_dir_others_can_write(senv):
    e = senv
    e.write_config({"staging": "none"})
    src = e.bundle("src")
    out = _run(e, src, "src")
    os.chmod(e.ckroot, 0o755)
    img = os.path.join(e.ckroot, "img")
    checkpoint(e, src, "src", img)
    out.closed()
    os.chmod(img, 0o777)
    p, _, b = _restore(e, "dst", img, src, unprivileged=False)
    assert p.returncode != 0 and "could swap the images" in e.grit.log_error(b)
    os.chmod(img, 0o700)
    p, out2, b = _restore(e, "dst2", img, src, unprivileged=False)
    assert p.returncode == 0, e.grit.log_error(b)
    assert e.grit.run(b, "start", "dst2").returncode == 0
    assert out2.wait_for(lambda r: len(r.ints()) >= 2)
    assert_continues(out.ints(), out2.ints())


@pytest.mark.integration
def test_installed_configuration_is_secure_by_default(tmp_path):
    """install.sh (what a node runs, and the DaemonSet) makes a root-only key and writes a
    config that requires signatures and enforces the privilege check; a second run keeps the
    key; --signing-key installs the key nodes share; uninstall takes out the key it made."""
    import sys
    from conftest import REPO
    from runc_grit.node import config
    root = str(tmp_path / "root")

    def install(*extra):
        p = subprocess.run(["bash", os.path.join(REPO, "install", "install.sh"), "--destdir", root,
                            "--venv", sys.prefix, "--containerd-version", "1"] + list(extra),
                           capture_output=True, timeout=300)
        assert p.returncode == 0, p.stderr

    install()
    key = os.path.join(root, "etc/runc-grit/signing.key")
    st = os.stat(key)
    text = open(key).read().strip()
    assert st.st_mode & 0o777 == 0o600 and st.st_uid == 0 and len(text) == 64
    int(text, 16)
    conf = config.load(os.path.join(root, "etc/runc-grit/config.yaml"))
    assert conf.require_signature is True and conf.signing_key == "/etc/runc-grit/signing.key"
    assert conf.privilege_check == "enforce" and conf.staging == "auto"
    install()
    assert open(key).read().strip() == text  # kept
    shared = tmp_path / "shared.key"
    shared.write_text("the-key-every-node-shares-0123456789\n")
    install("--signing-key", str(shared))
    assert open(key).read() == shared.read_text() and os.stat(key).st_mode & 0o777 == 0o600
    subprocess.run(["bash", os.path.join(REPO, "install", "uninstall.sh"), "--destdir", root],
                   check=True, capture_output=True, timeout=120)
    assert os.path.exists(key)  # a given key is not install's to remove
    os.unlink(key)
    install()
    subprocess.run(["bash", os.path.join(REPO, "install", "uninstall.sh"), "--destdir", root],
                   check=True, capture_output=True, timeout=120)
    assert not os.path.exists(key)  # the one it made is
