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
from runc_grit.checkpoint import criuimages, integrity
from runc_grit.checkpoint import manifest as _manifest
from runc_grit.checkpoint import privileges
from runc_grit.errors import GritError
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
    spec = _spec(uid=1000, caps=(), seccomp=True)
    assert privileges.problems(_image(_task(uid=1000, caps=(0, 0), seccomp="filter")),
                               spec, spec) == []


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


# --- what else CRIU restores: securebits, rlimits, seccomp content, LSM, user namespaces, mounts

def _runc_spec(**kw):
    """runc-grit's default bundle spec (oci.bundle, as the integration tests run it)."""
    import copy
    from runc_grit.oci import bundle
    spec = copy.deepcopy(bundle.BASE_SPEC)
    for k, v in kw.items():
        spec[k] = v
    return spec


def _mounts(rows, ns=13):
    return [{"ns": ns, "mnt_id": i, "parent_mnt_id": p, "mountpoint": mp, "fstype": fs,
             "flags": fl, "sb_flags": 0, "root": root, "source": None, "ext_key": key}
            for i, p, mp, fs, fl, root, key in rows]


# Mount trees of real checkpoints (crit decode of mountpoints-N.img) of oci.bundle's default
# spec with root.readonly: runc 1.1.5 (runc 1.3.6's is the same), crun 1.28 (masks with its
# empty dir and /dev/null binds, external mounts keyed by path), runc 1.1.5 with a user
# namespace (the node's devices bound in). /proc/kcore and /proc/sysrq-trigger do not exist on
# the node that made them: nothing is mounted there.
RUNC_MOUNTS = [
    (54, 81, "/sys/firmware", 5, 0x200001, "/", None),
    (53, 76, "/proc/timer_list", 5, 0x1000002, "/null", "/dev/null"),
    (52, 76, "/proc/keys", 5, 0x1000002, "/null", "/dev/null"),
    (51, 76, "/proc/sys", 1, 0x200001, "/sys", None),
    (50, 76, "/proc/irq", 1, 0x200001, "/irq", None),
    (49, 76, "/proc/fs", 1, 0x200001, "/fs", None),
    (48, 76, "/proc/bus", 1, 0x200001, "/bus", None),
    (81, 75, "/sys", 2, 0x20000f, "/", None),
    (80, 77, "/dev/mqueue", 14, 0x20000e, "/", None),
    (79, 77, "/dev/shm", 5, 0x20000e, "/", None),
    (78, 77, "/dev/pts", 6, 0x20000a, "/", None),
    (77, 75, "/dev", 5, 0x1000002, "/", None),
    (76, 75, "/proc", 1, 0x200000, "/", None),
    (75, 47, "/", 0, 0x200001, "/b/src/rootfs", None),
]
CRUN_MOUNTS = [
    (112, 100, "/proc/sys", 1, 0x200001, "/sys", None),
    (111, 100, "/proc/irq", 1, 0x200001, "/irq", None),
    (110, 100, "/proc/fs", 1, 0x200001, "/fs", None),
    (109, 100, "/proc/bus", 1, 0x200001, "/bus", None),
    (108, 105, "/sys/firmware", 0, 0x200001, "/run/crun/.empty-directory",
     "/run/crun/.empty-directory"),
    (107, 100, "/proc/timer_list", 3, 0x200001, "/null", "/proc/timer_list"),
    (106, 100, "/proc/keys", 3, 0x200001, "/null", "/proc/keys"),
    (105, 99, "/sys", 2, 0x20000f, "/", None),
    (104, 101, "/dev/mqueue", 14, 0x20000e, "/", None),
    (103, 101, "/dev/shm", 5, 0x20000e, "/", None),
    (102, 101, "/dev/pts", 6, 0x20000a, "/", None),
    (101, 99, "/dev", 5, 0x1000002, "/", None),
    (100, 99, "/proc", 1, 0x200000, "/", None),
    (99, 75, "/", 0, 0x200001, "/b/src/rootfs", None),
]
USERNS_MOUNTS = [
    (54, 81, "/sys/firmware", 5, 0x200001, "/", None),
    (53, 76, "/proc/timer_list", 3, 0x200000, "/null", "/dev/null"),
    (52, 76, "/proc/keys", 3, 0x200000, "/null", "/dev/null"),
    (51, 76, "/proc/sys", 1, 0x200001, "/sys", None),
    (50, 76, "/proc/irq", 1, 0x200001, "/irq", None),
    (49, 76, "/proc/fs", 1, 0x200001, "/fs", None),
    (48, 76, "/proc/bus", 1, 0x200001, "/bus", None),
    (87, 77, "/dev/urandom", 3, 0x200000, "/urandom", "/dev/urandom"),
    (86, 77, "/dev/zero", 3, 0x200000, "/zero", "/dev/zero"),
    (85, 77, "/dev/tty", 3, 0x200000, "/tty", "/dev/tty"),
    (84, 77, "/dev/full", 3, 0x200000, "/full", "/dev/full"),
    (83, 77, "/dev/random", 3, 0x200000, "/random", "/dev/random"),
    (82, 77, "/dev/null", 3, 0x200000, "/null", "/dev/null"),
    (81, 75, "/sys", 2, 0x20000f, "/", None),
    (80, 77, "/dev/mqueue", 14, 0x20000e, "/", None),
    (79, 77, "/dev/shm", 5, 0x20000e, "/", None),
    (78, 77, "/dev/pts", 6, 0x20000a, "/", None),
    (77, 75, "/dev", 5, 0x1000002, "/", None),
    (76, 75, "/proc", 1, 0x200000, "/", None),
    (75, 47, "/", 0, 0x200000, "/b/src/rootfs", None),
]
# runc 1.1.5, a cgroup v1 node: binds of the spec (external, keyed by destination) and a
# read-only "cgroup" mount: a writable tmpfs with one read-only cgroup mount per controller
CGROUP_V1_MOUNTS = [
    (86, 85, "/sys/fs/cgroup/cpu", 12, 0x20000f, "/", None),
    (89, 85, "/sys/fs/cgroup/memory", 12, 0x20000f, "/", None),
    (94, 85, "/sys/fs/cgroup/systemd", 12, 0x20000f, "/", None),
    (85, 81, "/sys/fs/cgroup", 5, 0x20000e, "/", None),
    (84, 75, "/etc/hosts", 0, 0x200000, "/b/hostfile", "/etc/hosts"),
    (83, 75, "/data", 0, 0x200003, "/b/hostdir", "/data"),
]
BINDS = [{"destination": "/data", "type": "bind", "source": "/b/hostdir",
          "options": ["rbind", "ro", "nosuid"]},
         {"destination": "/etc/hosts", "type": "bind", "source": "/b/hostfile",
          "options": ["rbind", "rw"]},
         {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
          "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}]
# what host_facts() says of the node that made them: no LSM, /proc/sys and friends exist
HOST = {"lsm": None, "rlimits": [privileges.RLIM_INFINITY] * 6 + [96369, 1048576, 8388608]
        + [privileges.RLIM_INFINITY] * 2 + [96369, 819200, 0, 0, privileges.RLIM_INFINITY],
        "paths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/keys", "/proc/sys",
                  "/proc/timer_list", "/sys/firmware"],
        "nice": 0, "oom_score_adj": 0, "loginuid": 0}
# a task of that checkpoint: runc's default capabilities, the spec's RLIMIT_NOFILE, the rest
# inherited from runc-grit
RLIMITS = list(HOST["rlimits"])
RLIMITS[7] = 1024


def _real_image(rows=RUNC_MOUNTS, seccomp=0, **task):
    t = _task(seccomp=seccomp, **task)
    t["rlimits"] = list(RLIMITS)
    t["seccomp_filters"] = 1 if seccomp == "filter" else 0
    t.update(sched={"nice": 0, "policy": 0, "prio": None}, oom_score_adj=0, loginuid=0)
    img = _image(t)
    img["mounts"] = _mounts(rows)
    return img


def _ro_spec(**kw):
    spec = _runc_spec(root={"path": "rootfs", "readonly": True})
    spec.update(kw)
    return spec


def _check(img, spec, source="same", host=HOST):
    return privileges.problems(img, spec, spec if source == "same" else source, host)


def test_real_checkpoints_pass_into_their_own_spec():
    assert _check(_real_image(), _ro_spec()) == []
    assert _check(_real_image(CRUN_MOUNTS), _ro_spec()) == []
    spec = _runc_spec()
    spec["linux"]["namespaces"].append({"type": "user"})
    spec["linux"]["uidMappings"] = spec["linux"]["gidMappings"] = [
        {"containerID": 0, "hostID": 100000, "size": 65536}]
    img = _real_image(USERNS_MOUNTS, ns={"user_ns_id": 14})
    img["userns"] = [{"ns": 14, "uid_map": [{"first": 0, "lower_first": 100000, "count": 65536}],
                      "gid_map": [{"first": 0, "lower_first": 100000, "count": 65536}]}]
    assert _check(img, spec) == []
    spec = _runc_spec()
    spec["mounts"] = spec["mounts"] + BINDS
    rows = [r[:4] + (0x200000,) + r[5:] if r[2] == "/" else r for r in RUNC_MOUNTS]
    assert _check(_real_image(rows + CGROUP_V1_MOUNTS), spec) == []
    # seccomp: the same profile, one filter per task
    spec = _ro_spec()
    spec["linux"]["seccomp"] = SECCOMP
    assert _check(_real_image(seccomp="filter"), spec) == []


def _edit(rows, at, **change):
    keys = ("mnt_id", "parent_mnt_id", "mountpoint", "fstype", "flags", "root", "ext_key")
    out = []
    for r in rows:
        d = dict(zip(keys, r))
        if d["mountpoint"] == at:
            if change.get("drop"):
                continue
            d.update(change)
        out.append(tuple(d[k] for k in keys))
    return out


@pytest.mark.parametrize("rows, spec_edit, want", [
    # a read-only path made writable, or gone (a proc mount with /proc/sys writable)
    (_edit(RUNC_MOUNTS, "/proc/sys", flags=0x200000), None,
     "mount /proc/sys lacks ro in the image (it has none of ro,nosuid,nodev,noexec); the spec "
     "makes it ro"),
    (_edit(RUNC_MOUNTS, "/proc/sys", drop=True), None,
     "mount /proc/sys: none in the image, so it is writable there; the spec's readonlyPaths "
     "lists it"),
    # a masked path unmasked, or masked by something that shows the node's
    (_edit(RUNC_MOUNTS, "/proc/keys", drop=True), None,
     "mount /proc/keys: none in the image, so it is unmasked there; the spec's maskedPaths "
     "lists it"),
    (_edit(RUNC_MOUNTS, "/sys/firmware", fstype=2, ext_key=None), None,
     "mount /sys/firmware is sysfs (root /) in the image; the spec masks it"),
    # a mount the spec does not make, renamed or added
    (_edit(RUNC_MOUNTS, "/dev/mqueue", mountpoint="/mnt"), None,
     "mount /mnt (mqueue) in the image; the spec makes no mount there"),
    (RUNC_MOUNTS + [(90, 75, "/host", 3, 0, "/", None)], None,
     "mount /host (devtmpfs) in the image; the spec makes no mount there"),
    (RUNC_MOUNTS + [(90, 51, "/proc/sys", 1, 0x200000, "/sys", None)], None,
     "mount /proc/sys: 2 mounts stacked there in the image; the spec makes 1"),
    # the root writable where the spec's is read-only; flags the spec sets dropped
    (_edit(RUNC_MOUNTS, "/", flags=0x200000), None,
     "mount / lacks ro in the image (it has none of ro,nosuid,nodev,noexec); the spec makes it ro"),
    (_edit(RUNC_MOUNTS, "/dev/shm", flags=0x200000), None,
     "mount /dev/shm lacks nosuid,nodev,noexec in the image (it has none of ro,nosuid,nodev,"
     "noexec); the spec makes it nosuid,nodev,noexec"),
    # another filesystem where the spec names one
    (_edit(RUNC_MOUNTS, "/dev/shm", fstype=3), None,
     "mount /dev/shm is devtmpfs in the image; the spec mounts tmpfs there"),
    (_edit(RUNC_MOUNTS, "/sys", fstype=1), None,
     "mount /sys is proc in the image; the spec mounts sysfs there"),
    # an external mount with a key the runtime maps elsewhere
    (_edit(RUNC_MOUNTS, "/dev/shm", ext_key="/etc/hosts"), None,
     "mount /dev/shm: external mount key /etc/hosts in the image"),
    # a bind the spec makes that is not the spec's source
    (RUNC_MOUNTS + [(90, 75, "/data", 1, 0x200003, "/sys", None)],
     lambda s: s["mounts"].append(BINDS[0]),
     "mount /data (proc, root /sys) in the image; the spec bind-mounts /b/hostdir there"),
    (RUNC_MOUNTS + [(90, 75, "/data", 0, 0x200000, "/b/hostdir", "/data")],
     lambda s: s["mounts"].append(BINDS[0]),
     "mount /data lacks ro,nosuid in the image (it has none of ro,nosuid,nodev,noexec); the "
     "spec makes it ro,nosuid"),
    # /dev/console without a terminal
    (RUNC_MOUNTS + [(90, 77, "/dev/console", 6, 0x20000a, "/0", None)], None,
     "mount /dev/console (devpts) in the image; the spec makes no mount there"),
])
def test_each_mount_escalation_is_named(rows, spec_edit, want):
    spec = _ro_spec()
    if spec_edit:
        spec_edit(spec)
    found = _check(_real_image(rows), spec)
    assert any(want in p for p in found), found


def test_mounts_a_task_could_make_itself_are_not_compared():
    """CAP_SYS_ADMIN (no user namespace): the container may mount and remount itself. A
    terminal's /dev/console and a masked path this node lacks are the runtime's own."""
    rows = _edit(RUNC_MOUNTS, "/proc/sys", flags=0) + [(90, 75, "/mnt", 5, 0, "/", None)]
    spec = _ro_spec()
    spec["process"]["capabilities"]["permitted"].append("CAP_SYS_ADMIN")
    assert _check(_real_image(rows), spec) == []
    spec = _ro_spec()
    spec["process"]["terminal"] = True
    assert _check(_real_image(RUNC_MOUNTS + [(90, 77, "/dev/console", 6, 0x20000a, "/0", None)]),
                  spec) == []
    host = dict(HOST, paths=[p for p in HOST["paths"] if p != "/proc/keys"])
    assert _check(_real_image(_edit(RUNC_MOUNTS, "/proc/keys", drop=True)), _ro_spec(),
                  host=host) == []


@pytest.mark.parametrize("task, spec_edit, want", [
    (dict(secbits=1 << 2), None, "securebit SECBIT_NO_SETUID_FIXUP (capabilities survive a "
                                 "change of uid from or to 0) in the image; the spec grants "
                                 "no CAP_SETPCAP to set it"),
    (dict(secbits=1 << 4 | 1 << 5), None, "securebit SECBIT_KEEP_CAPS"),
    (dict(rlimit=(7, 4096)), None,
     "RLIMIT_NOFILE hard limit 4096 in the image; the spec's hard limit is 1024"),
    (dict(rlimit=(8, privileges.RLIM_INFINITY)), None,
     "RLIMIT_MEMLOCK hard limit unlimited in the image; the spec sets none, and runc-grit's "
     "own is 8388608"),
    (dict(lsm_profile="unconfined-but-named"), "apparmor",
     "LSM label unconfined-but-named in the image; the spec names no apparmor label"),
    (dict(lsm_profile="system_u:system_r:spc_t:s0"), "selinux",
     "LSM label system_u:system_r:spc_t:s0 in the image; the spec names no selinux label"),
    (dict(apparmor_data={"namespace": "x"}), None, "AppArmor namespace data in the image"),
    (dict(sched={"nice": -20, "policy": 0}), None,
     "nice -20 in the image; runc-grit's is 0 and RLIMIT_NICE (0) allows no lower than 0 "
     "without CAP_SYS_NICE"),
    (dict(sched={"nice": 0, "policy": 1, "prio": 99}), None,
     "real-time scheduling (SCHED_FIFO, priority 99) in the image; RLIMIT_RTPRIO allows 0 "
     "without CAP_SYS_NICE"),
    (dict(oom_score_adj=-1000), None,
     "oom_score_adj -1000 in the image; the spec's (or runc-grit's) is 0, and lower needs "
     "CAP_SYS_RESOURCE"),
    (dict(loginuid=1000), None,
     "loginuid 1000 in the image; runc-grit's (which the container inherits) is 0"),
])
def test_each_credential_escalation_is_named(task, spec_edit, want):
    img = _real_image()
    c = img["tasks"][0]["creds"]
    if "rlimit" in task:
        i, v = task.pop("rlimit")
        img["tasks"][0]["rlimits"][i] = v
    for k in ("sched", "oom_score_adj", "loginuid"):
        if k in task:
            img["tasks"][0][k] = task.pop(k)
    c.update(task)
    host = dict(HOST, lsm=spec_edit, label="system_u:system_r:container_runtime_t:s0")
    found = _check(img, _ro_spec(), host=host)
    assert any(want in p for p in found), found


def test_what_a_task_could_do_itself_passes():
    """Restrictive securebits; KEEP_CAPS with CAP_SETUID, NO_SETUID_FIXUP with CAP_SETPCAP;
    raised limits with CAP_SYS_RESOURCE; lower limits, a higher nice, a batch or idle policy,
    a higher OOM score; a lower nice or real-time priority its limits allow; a loginuid set
    where runc-grit's is unset (a task may set it once); the node's own SELinux label where the
    spec names none; a label the spec overrides (restore_flags)."""
    img = _real_image()
    img["tasks"][0]["creds"]["secbits"] = 0b11101011  # NOROOT, the locks, NO_CAP_AMBIENT_RAISE
    assert _check(img, _ro_spec()) == []
    img["tasks"][0]["creds"]["secbits"] = 1 << 2 | 1 << 4
    spec = _ro_spec()
    spec["process"]["capabilities"]["permitted"] += ["CAP_SETPCAP", "CAP_SETUID"]
    assert _check(img, spec) == []
    img = _real_image()
    img["tasks"][0]["rlimits"][7] = 1 << 20
    spec = _ro_spec()
    assert _check(img, spec)
    spec["process"]["capabilities"]["permitted"].append("CAP_SYS_RESOURCE")
    assert _check(img, spec) == []
    img = _real_image()
    img["tasks"][0]["rlimits"] = [0] * 16
    img["tasks"][0].update(sched={"nice": 19, "policy": 5, "prio": 0}, oom_score_adj=1000)
    assert _check(img, _ro_spec()) == []
    spec = _ro_spec()   # what RLIMIT_NICE and RLIMIT_RTPRIO allow; a spec's oomScoreAdj
    spec["process"]["rlimits"] += [{"type": "RLIMIT_NICE", "hard": 30, "soft": 30},
                                   {"type": "RLIMIT_RTPRIO", "hard": 10, "soft": 10}]
    spec["process"]["oomScoreAdj"] = -500
    img["tasks"][0]["rlimits"] = list(RLIMITS)
    img["tasks"][0].update(sched={"nice": -10, "policy": 2, "prio": 10}, oom_score_adj=-500)
    assert _check(img, spec) == []
    img["tasks"][0].update(loginuid=1000)   # a node whose runc-grit has no loginuid set
    assert _check(img, spec, host=dict(HOST, loginuid=privileges.UNSET_LOGINUID)) == []
    img = _real_image()
    img["tasks"][0]["creds"]["lsm_profile"] = "system_u:system_r:container_runtime_t:s0"
    host = dict(HOST, lsm="selinux", label="system_u:system_r:container_runtime_t:s0")
    assert _check(img, _ro_spec(), host=host) == []
    img["tasks"][0]["creds"]["lsm_profile"] = "docker-default (enforce)"
    spec = _ro_spec()
    spec["process"]["apparmorProfile"] = "cri-containerd.apparmor.d"
    assert _check(img, spec, host=dict(HOST, lsm="apparmor")) == []
    assert _check(img, _ro_spec()) == []   # a node without that LSM: CRIU applies none


def test_seccomp_content_is_the_source_containers():
    spec = _ro_spec()
    spec["linux"]["seccomp"] = SECCOMP
    img = _real_image(seccomp="filter")
    allow_all = {"defaultAction": "SCMP_ACT_ALLOW"}
    other = _ro_spec()
    other["linux"]["seccomp"] = allow_all
    found = _check(img, spec, source=other)
    assert any("seccomp: the spec's profile (sha256 " in p and "is not the source container's"
               in p for p in found), found
    found = _check(img, spec, source=_ro_spec())   # the source had none
    assert any("is not the source container's (none, its spec.dump)" in p for p in found), found
    found = _check(img, spec, source=None)          # no spec.dump in the checkpoint
    assert any("the checkpoint has no spec.dump" in p for p in found), found
    # key order and spacing do not matter: canonical JSON
    reordered = json.loads(json.dumps(spec))
    reordered["linux"]["seccomp"] = dict(reversed(list(SECCOMP.items())))
    assert _check(img, spec, source=reordered) == []
    # a task whose chain lost its filter; more filters (the task's own) only restrict more
    img["tasks"][0]["seccomp_filters"] = 0
    assert any("seccomp filter chain of no filters in the image" in p
               for p in _check(img, spec)), _check(img, spec)
    img["tasks"][0]["seccomp_filters"] = 3
    assert _check(img, spec) == []
    # without a profile in the spec, anything goes
    assert _check(img, _ro_spec(), source=other) == []


def test_user_namespaces_are_the_specs():
    img = _real_image(USERNS_MOUNTS)
    img["userns"] = [{"ns": 14, "uid_map": [{"first": 0, "lower_first": 0, "count": 65536}],
                      "gid_map": [{"first": 0, "lower_first": 100000, "count": 65536}]}]
    found = _check(img, _runc_spec())
    assert any("user namespace 14 in the image; the spec creates and joins none" in p
               for p in found), found
    spec = _runc_spec()
    spec["linux"]["namespaces"].append({"type": "user"})
    spec["linux"]["uidMappings"] = spec["linux"]["gidMappings"] = [
        {"containerID": 0, "hostID": 100000, "size": 65536}]
    found = _check(img, spec)
    assert any("user namespace 14: uid_map [(0, 0, 65536)] in the image; the spec's "
               "uidMappings are [(0, 100000, 65536)]" in p for p in found), found
    assert not any("gid_map" in p for p in found), found
    spec["linux"]["namespaces"][-1]["path"] = "/proc/1/ns/user"   # joined: not compared
    assert not any("user namespace" in p for p in _check(img, spec))


# containerd 1.6's CRI container of test_containerd (a pod on the node's network, cgroup v1,
# runc 1.1.5): /sys is the node's own sysfs, which CRIU found external at the dump
# (`external mnt[]`, key CRIU:AUTOGENERATED): at a restore CRIU binds the image's `source`
CRI_SANDBOX = "/ctd/root/io.containerd.grpc.v1.cri/sandboxes/26c2"
CRI_MOUNTS = [
    (144, 127, "/dev/shm", 5, 0x20000e, "/", "/dev/shm"),
    (143, 121, "/etc/resolv.conf", 0, 0x200000, CRI_SANDBOX + "/resolv.conf", "/etc/resolv.conf"),
    (142, 121, "/etc/hosts", 0, 0x200000, CRI_SANDBOX + "/hosts", "/etc/hosts"),
    (141, 121, "/etc/hostname", 0, 0x200000, CRI_SANDBOX + "/hostname", "/etc/hostname"),
    (140, 131, "/sys/fs/cgroup/systemd", 12, 0x20000f, "/k8s.io/3794", "/sys/fs/cgroup/systemd"),
    (135, 131, "/sys/fs/cgroup/memory", 12, 0x20000f, "/k8s.io/3794", "/sys/fs/cgroup/memory"),
    (131, 130, "/sys/fs/cgroup", 5, 0x20000e, "/", None),
    (130, 121, "/sys", 2, 0x20000f, "/", "CRIU:AUTOGENERATED"),
    (129, 127, "/dev/mqueue", 14, 0x20000e, "/", None),
    (128, 127, "/dev/pts", 6, 0x20000a, "/", None),
    (127, 121, "/dev", 5, 0x1000002, "/", None),
    (124, 121, "/proc", 1, 0x20000e, "/", None),
    (121, 77, "/", 17, 0x200000, "/", None),
]


def _cri_spec():
    spec = _runc_spec()
    opts = ["nosuid", "noexec", "nodev"]
    spec["mounts"] = [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": opts},
        spec["mounts"][1], spec["mounts"][2],
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": opts},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": opts + ["ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": opts + ["relatime", "ro"]}] + [
        {"destination": d, "type": "bind", "source": CRI_SANDBOX + d[4:],
         "options": ["rbind", "rprivate", "rw"]}
        for d in ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf")] + [
        {"destination": "/dev/shm", "type": "bind", "source": "/ctd/state/shm",
         "options": ["rbind", "rprivate", "rw"]}]
    spec["linux"]["namespaces"] = [{"type": "pid"}, {"type": "mount"}] + [
        {"type": t, "path": "/proc/22970/ns/" + t[:3]} for t in ("ipc", "uts", "network")]
    del spec["linux"]["maskedPaths"], spec["linux"]["readonlyPaths"]
    return spec


def _autogenerated(rows, mountpoint, source):
    img = _real_image(rows)
    for m in img["mounts"]:
        if m["mountpoint"] == mountpoint:
            m["source"] = source
    return img


def test_a_mount_criu_found_external_binds_only_the_nodes_own():
    """`external mnt[]`: CRIU restores a CRIU:AUTOGENERATED mount by bind-mounting the image's
    `source`, a path of the node. The node's own /sys for a pod on the node's network passes;
    another path, or the node's /sys where the container has a network namespace of its own,
    or such a mount where the spec makes none, is refused."""
    spec = _cri_spec()
    assert _check(_autogenerated(CRI_MOUNTS, "/sys", "/sys/"), spec) == []
    found = _check(_autogenerated(CRI_MOUNTS, "/sys", "/"), spec)
    assert any("mount /sys: CRIU would bind the node's / there (an external mount it detected "
               "at the checkpoint); the spec mounts sysfs there" in p for p in found), found
    spec["linux"]["namespaces"][-1].pop("path")   # a network namespace of its own
    assert any("CRIU would bind the node's /sys/ there" in p
               for p in _check(_autogenerated(CRI_MOUNTS, "/sys", "/sys/"), spec))
    rows = _edit(RUNC_MOUNTS, "/proc", ext_key="CRIU:AUTOGENERATED")
    assert any("mount /proc: CRIU would bind the node's /proc there" in p
               for p in _check(_autogenerated(rows, "/proc", "/proc"), _ro_spec()))
    rows = _edit(RUNC_MOUNTS, "/sys/firmware", ext_key="CRIU:AUTOGENERATED")
    assert any("mount /sys/firmware: CRIU would bind the node's /etc there" in p and
               "the spec makes no such mount" in p
               for p in _check(_autogenerated(rows, "/sys/firmware", "/etc"), _ro_spec()))


def test_source_spec_is_the_checkpoints_spec_dump(tmp_path):
    """spec.dump in the image dir; for a raw CRIU dir named checkpoint (Podman's and
    containerd's archive layout, no manifest) beside it; never beside a runc-grit checkpoint."""
    img = tmp_path / "checkpoint"
    img.mkdir()
    assert privileges.source_spec(str(img)) is None
    (tmp_path / "spec.dump").write_text(json.dumps({"linux": {"seccomp": SECCOMP}}))
    assert privileges.source_spec(str(img))["linux"]["seccomp"] == SECCOMP
    (img / "grit-manifest.json").write_text("{}")
    assert privileges.source_spec(str(img)) is None
    (img / "spec.dump").write_text(json.dumps({"ociVersion": "1"}))
    assert privileges.source_spec(str(img)) == {"ociVersion": "1"}
    (img / "spec.dump").write_text("[not json")
    assert privileges.source_spec(str(img)) is None


def test_a_bind_a_rootfs_symlink_moves_is_the_specs(tmp_path):
    """runc and crun mount a destination through the rootfs's symlinks (Debian's /var/run ->
    /run: a pod's /var/run/secrets is mounted at /run/secrets, keyed there): with the bundle
    known, the image's mount there is the spec's bind."""
    b = tmp_path / "bundle"
    (b / "rootfs" / "run").mkdir(parents=True)
    (b / "rootfs" / "var").mkdir()
    os.symlink("../run", str(b / "rootfs" / "var" / "run"))
    os.symlink("/etc/../../../run/x", str(b / "rootfs" / "abs"))
    os.symlink("loop", str(b / "rootfs" / "loop"))
    rootfs = str(b / "rootfs")
    assert privileges.resolve_in_rootfs(rootfs, "/var/run/secrets") == "/run/secrets"
    assert privileges.resolve_in_rootfs(rootfs, "/abs/y") == "/run/x/y"   # never above it
    assert privileges.resolve_in_rootfs(rootfs, "/loop/z").endswith("/loop/z")
    assert privileges.resolve_in_rootfs(rootfs, "/data") == "/data"
    spec = _ro_spec()
    spec["mounts"].append({"destination": "/var/run/secrets", "type": "bind",
                           "source": "/b/token", "options": ["rbind", "ro"]})
    rows = RUNC_MOUNTS + [(90, 75, "/run/secrets", 0, 0x200001, "/b/token", "/run/secrets")]
    found = _check(_real_image(rows), spec)
    assert any("mount /run/secrets (a bind or other filesystem) in the image; the spec makes "
               "no mount there" in p for p in found), found
    host = dict(HOST, resolved=privileges.host_facts(spec, str(b))["resolved"])
    assert host["resolved"] == {"/var/run/secrets": "/run/secrets"}
    assert _check(_real_image(rows), spec, host=host) == []
    rows[-1] = rows[-1][:4] + (0x200000,) + rows[-1][5:]   # moved, and made writable
    assert any("mount /run/secrets lacks ro" in p for p in _check(_real_image(rows), spec,
                                                                  host=host))
    # crun keys the bind by its unresolved destination: CRIU found it external itself, and
    # binds the image's `source` of the node, which must be the spec's source
    rows[-1] = (90, 75, "/run/secrets", 0, 0x200001, "/b/token", "CRIU:AUTOGENERATED")
    img = _autogenerated(rows, "/run/secrets", "//b/token")
    assert _check(img, spec, host=host) == []
    img = _autogenerated(rows, "/run/secrets", "/etc")
    found = _check(img, spec, host=host)
    assert any("mount /run/secrets: CRIU would bind the node's /etc there" in p
               for p in found), found


def test_restore_flags_give_the_runtime_the_specs_label():
    spec = {"process": {"apparmorProfile": "cri-containerd.apparmor.d",
                        "selinuxLabel": "system_u:system_r:container_t:s0:c1,c2"}}
    assert privileges.restore_flags(spec, "runc", lsm="apparmor") == [
        "--lsm-profile", "apparmor:cri-containerd.apparmor.d"]
    assert privileges.restore_flags(spec, "/usr/bin/crun", lsm="selinux") == [
        "--lsm-profile", "selinux:system_u:system_r:container_t:s0:c1,c2"]
    assert privileges.restore_flags({"process": {}}, "runc", lsm="apparmor") == []
    with pytest.raises(GritError, match="no --lsm-profile"):
        privileges.restore_flags(spec, "youki", lsm="apparmor")
    # this node: the LSM CRIU would see decides
    want = privileges.host_lsm()
    assert privileges.restore_flags(spec, "runc") == (
        [] if want is None else ["--lsm-profile", "%s:%s" % (want, privileges.spec_label(
            spec, want))])


def test_host_facts_are_this_nodes():
    import resource
    spec = _runc_spec()
    facts = privileges.host_facts(spec)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert facts["rlimits"][7] == (privileges.RLIM_INFINITY if hard == resource.RLIM_INFINITY
                                   else hard)
    assert "/proc/sys" in facts["paths"]
    assert all(os.path.lexists(p) for p in facts["paths"])


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
    """Edit one CRIU image's first entry the way an attacker would (crit decode, change,
    crit encode)."""
    _crit(image_dir, name, lambda entries: edit(entries[0]))


def _crit(image_dir, name, edit):
    """crit decode, edit(entries), crit encode: any entry of one image."""
    crit = shutil.which("crit")
    if not crit:
        pytest.skip("crit (pycriu) not installed")
    path = os.path.join(image_dir, name)
    doc = json.loads(subprocess.run([crit, "decode", "-i", path], check=True,
                                    capture_output=True).stdout)
    edit(doc["entries"])
    subprocess.run([crit, "encode", "-o", path], input=json.dumps(doc).encode(), check=True,
                   capture_output=True)


def _resign(e, image_dir):
    """The manifest made to match the edited files again, signed with this node's key (an
    attacker who has the key): only the privilege check is left to catch the edit."""
    path = os.path.join(image_dir, _manifest.NAME)
    m = json.load(open(path))
    m["images"] = _manifest.list_images(image_dir, digest=True)
    integrity.load_signer(os.path.join(e.dir, "node.key")).sign(m)
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
def test_the_early_decoder_reads_what_a_child_started_late_reads(senv):
    """A restore starts the image decoder first thing (criuimages.Decoder) and names the dir
    only once verified: it decodes the same as a child started with the dir, once however
    many ask, takes any path (its bytes, on stdin), and one never given a dir ends."""
    e = senv
    src = e.bundle("src")
    out = _run(e, src, "src")
    img = os.path.join(e.ckroot, "dec")
    checkpoint(e, src, "src", img)
    out.closed()
    if criuimages.pycriu_path() is None:
        pytest.skip("pycriu not installed")
    late = criuimages.read(img)
    assert late["tasks"] and late["tasks"][0]["creds"]["uid"] == 0
    d = criuimages.Decoder().start()
    child = d.proc
    assert child is not None and child.poll() is None  # started before any dir is known
    assert d.read(img) == late
    assert child.returncode == 0 and d.proc is None
    assert d.read(img) is d.read(img)  # decoded once
    odd = os.path.join(e.dir, "new\nline -")  # a path is bytes to EOF, not a line or a flag
    shutil.copytree(img, odd)
    assert criuimages.Decoder().start().read(odd) == late
    with open(os.path.join(odd, "pstree.img"), "r+b") as f:
        f.write(b"\xff" * 16)
    with pytest.raises(GritError, match="its images cannot be decoded"):
        criuimages.read(odd, where="restore source X")
    idle = criuimages.Decoder().start()
    child = idle.proc
    idle.close()
    assert child.returncode == 0 and idle.proc is None  # EOF: it exits, reaped


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
        f.write("#!/bin/sh\nif [ -e %s ]; then mv %s %s/core-1.img; rm %s; touch %s; fi\n"
                "exec %s \"$@\"\n" % (armed, os.path.join(e.dir, "evil"), "$IMG", armed, swapped,
                                        shutil.which("criu")))
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
    shutil.copy(os.path.join(evil, "core-1.img"), os.path.join(e.dir, "evil"))
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
    """install.sh (what a node runs, and the DaemonSet) makes the node's own Ed25519 key pair
    (the private key root-only, and no copy of it in its records) and writes a config that
    requires signatures, trusts trusted.d and enforces the privilege check; a second run keeps
    the key; --signing-key installs a given private key, --trust a peer's public key;
    uninstall takes out the key it made, and only that one."""
    import sys
    from conftest import REPO
    from runc_grit.checkpoint import integrity
    from runc_grit.node import config
    root = str(tmp_path / "root")
    rec = os.path.join(root, "var/lib/runc-grit/install")

    def install(*extra):
        p = subprocess.run(["bash", os.path.join(REPO, "install", "install.sh"), "--destdir", root,
                            "--venv", sys.prefix, "--containerd-version", "1"] + list(extra),
                           capture_output=True, timeout=300)
        assert p.returncode == 0, p.stderr
        return p

    def no_private_key_in_records():
        for dirpath, _, files in os.walk(rec):
            for f in files:
                with open(os.path.join(dirpath, f), "rb") as fh:
                    assert b"PRIVATE KEY" not in fh.read(), os.path.join(dirpath, f)

    def uninstall():
        subprocess.run(["bash", os.path.join(REPO, "install", "uninstall.sh"), "--destdir", root],
                       check=True, capture_output=True, timeout=120)

    install()
    key = os.path.join(root, "etc/runc-grit/signing.key")
    pub = os.path.join(root, "etc/runc-grit/signing.pub")
    st = os.stat(key)
    text = open(key).read()
    assert st.st_mode & 0o777 == 0o600 and st.st_uid == 0
    assert text.startswith("-----BEGIN PRIVATE KEY-----")
    signer = integrity.load_signer(key)
    assert signer.alg == "ed25519" and integrity.key_id_of_file(pub) == signer.key_id
    assert os.stat(pub).st_mode & 0o777 == 0o644
    no_private_key_in_records()
    conf = config.load(os.path.join(root, "etc/runc-grit/config.yaml"))
    assert conf.require_signature is True and conf.signing_key == "/etc/runc-grit/signing.key"
    assert conf.trusted_keys == ["/etc/runc-grit/trusted.d"]
    assert conf.privilege_check == "enforce" and conf.staging == "auto"
    install()
    assert open(key).read() == text  # kept
    # a peer's public key: trusted; a private key given to --trust: refused
    peer = tmp_path / "peer"
    _, peer_pub, peer_id = integrity.write_key_pair(str(peer), "node-b")
    p = install("--trust", peer_pub)
    assert peer_id.encode() in p.stdout
    trusted = os.path.join(root, "etc/runc-grit/trusted.d/node-b.pub")
    assert open(trusted).read() == open(peer_pub).read()
    assert os.stat(trusted).st_mode & 0o777 == 0o644
    p = subprocess.run(["bash", os.path.join(REPO, "install", "install.sh"), "--destdir", root,
                        "--venv", sys.prefix, "--containerd-version", "1", "--trust",
                        str(peer / "node-b.key")], capture_output=True, timeout=300)
    assert p.returncode != 0 and b"not a PEM public key" in p.stderr
    # a given private key replaces the one install made (and its signing.pub)
    given, _, given_id = integrity.write_key_pair(str(tmp_path / "given"))
    install("--signing-key", given)
    assert open(key).read() == open(given).read() and os.stat(key).st_mode & 0o777 == 0o600
    assert integrity.load_signer(key).key_id == given_id and not os.path.exists(pub)
    no_private_key_in_records()
    uninstall()
    assert os.path.exists(key)  # a given key is not install's to remove
    assert os.path.exists(trusted)  # nor a given public key
    os.unlink(key)
    install()
    no_private_key_in_records()
    made = open(key).read()
    uninstall()
    assert not os.path.exists(key) and not os.path.exists(pub)  # the one it made is
    assert made not in "".join(open(os.path.join(d, f)).read()
                               for d, _, fs in os.walk(root) for f in fs
                               if f.endswith((".made", ".key")))


def test_the_nodes_mounts_below_a_spec_rbind_come_with_it():
    """A spec `rbind` of the node's /usr brings the node's mounts below it (the GPU machine's
    read-only driver dir /usr/local/nvidia): CRIU finds them as external mounts of the node's
    paths. That path passes; another node path there, or the same mount without the rbind,
    is refused."""
    spec = _ro_spec()
    spec["mounts"].append({"destination": "/usr", "type": "bind", "source": "/usr",
                           "options": ["rbind", "ro"]})
    rows = RUNC_MOUNTS + [(90, 75, "/usr", 0, 0x1, "/usr", "/usr"),
                          (91, 90, "/usr/local/nvidia", 0, 0x1, "/", "CRIU:AUTOGENERATED")]
    host = dict(HOST, rbind_submounts=privileges.rbind_submounts(
        spec, ["/", "/usr", "/usr/local/nvidia", "/proc"]))
    assert host["rbind_submounts"] == {"/usr/local/nvidia": "/usr/local/nvidia"}
    assert _check(_autogenerated(rows, "/usr/local/nvidia", "/usr/local/nvidia"), spec,
                  host=host) == []
    found = _check(_autogenerated(rows, "/usr/local/nvidia", "/etc"), spec, host=host)
    assert any("CRIU would bind the node's /etc there" in p for p in found), found
    found = _check(_autogenerated(rows, "/usr/local/nvidia", "/usr/local/nvidia"), spec)
    assert any("mount /usr/local/nvidia" in p and "the spec makes no mount there" in p
               for p in found), found
