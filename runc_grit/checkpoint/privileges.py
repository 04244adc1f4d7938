"""A restore may never give a process more than the destination's spec grants.

CRIU brings back what the image says about each task (credentials, capability sets,
securebits, no_new_privs, LSM label, seccomp filters, rlimits, namespaces, the mount tree, user
namespace maps), not what the new container's config.json says. An image from a privileged
container, or one edited with crit, would otherwise restore its privileges into a pod whose
spec grants none. So before CRIU runs, the image is compared with the destination spec:

  user and groups     uid/euid/suid/fsuid = the spec's uid, the gids likewise, every
                      supplementary group among the spec's gid and additionalGids
  capabilities        each of the five sets (bounding, effective, permitted, inheritable,
                      ambient) within the spec's set of the same name
  securebits          no bit that widens privilege (SECBIT_NO_SETUID_FIXUP, SECBIT_KEEP_CAPS)
                      unless the spec grants what a task needs to set it itself
  noNewPrivileges     set in the spec: set on every task
  LSM label           the spec's label goes to the runtime (restore_flags: --lsm-profile, which
                      CRIU applies to every task instead of the image's); a label in the image
                      where the spec names none (on a node that enforces that LSM): refused;
                      AppArmor policy in the image (CRIU would load it): refused
  seccomp             a profile in the spec: the same profile (canonical JSON) as the source
                      container's spec.dump, and every task under a chain of at least one
                      filter (the one the runtime installed). BPF is not compiled from the
                      spec: the filters' bytes are the source's, trusted as far as spec.dump is
  rlimits             every hard limit within the spec's (process.rlimits), or, for those the
                      spec does not set, within runc-grit's own, unless the spec grants
                      CAP_SYS_RESOURCE
  scheduling          a nice value below runc-grit's, a real-time policy or priority, only as
                      far as RLIMIT_NICE / RLIMIT_RTPRIO allow, unless CAP_SYS_NICE
  oom_score_adj       not below the spec's oomScoreAdj (else runc-grit's own), unless
                      CAP_SYS_RESOURCE
  loginuid            runc-grit's own once that is set (the audit identity), unless
                      CAP_AUDIT_CONTROL
  namespaces          a namespace the spec creates (no path): no task in the node's own
  user namespaces     the spec creates one: the image's uid/gid maps are the spec's; the spec
                      creates and joins none: no user namespace in the image
  mounts              every mount of the image is one the spec makes (the root, mounts[],
                      maskedPaths, readonlyPaths, the runtime's /dev/console, device and cgroup
                      mounts), of the type the spec names, from the spec's source (binds: the
                      runtime's external mount key), at least as restricted (ro, nosuid, nodev,
                      noexec); masked and read-only /proc and /sys paths this node has are there
Each refusal names the field, the task (or mount, or namespace) and both sides. Only what a
task could not have done itself with what the spec grants is refused. config
`privilege_check`: `enforce` (default) refuses, `warn` logs and restores, `off` skips the check.
"""
import hashlib
import json
import os
import posixpath
import re

from runc_grit.errors import SourceError

# capability names, by bit (linux/capability.h)
CAPS = ("CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
        "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
        "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
        "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
        "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
        "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
        "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
        "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
        "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE")
# OCI capability set -> CRIU creds field
SETS = (("bounding", "cap_bnd"), ("effective", "cap_eff"), ("permitted", "cap_prm"),
        ("inheritable", "cap_inh"), ("ambient", "cap_amb"))
# OCI namespace type -> CRIU ids field
NAMESPACES = {"pid": "pid_ns_id", "network": "net_ns_id", "ipc": "ipc_ns_id",
              "uts": "uts_ns_id", "mount": "mnt_ns_id", "user": "user_ns_id",
              "cgroup": "cgroup_ns_id", "time": "time_ns_id"}
# resource numbers (asm-generic/resource.h), as CRIU's rlimits list them
RLIMITS = ("RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_DATA", "RLIMIT_STACK", "RLIMIT_CORE",
           "RLIMIT_RSS", "RLIMIT_NPROC", "RLIMIT_NOFILE", "RLIMIT_MEMLOCK", "RLIMIT_AS",
           "RLIMIT_LOCKS", "RLIMIT_SIGPENDING", "RLIMIT_MSGQUEUE", "RLIMIT_NICE",
           "RLIMIT_RTPRIO", "RLIMIT_RTTIME")
RLIM_INFINITY = (1 << 64) - 1
# securebits that widen privilege (linux/securebits.h): bit -> (name, what it does, the
# capability with which a task may set it itself). The others (NOROOT, NO_CAP_AMBIENT_RAISE,
# EXEC_RESTRICT_FILE, EXEC_DENY_INTERACTIVE, every *_LOCKED) only take privilege away.
SECBITS = {
    1 << 2: ("SECBIT_NO_SETUID_FIXUP", "capabilities survive a change of uid from or to 0",
             "CAP_SETPCAP"),
    # prctl(PR_SET_KEEPCAPS) needs no privilege, and keeping capabilities only matters to a
    # uid change, which needs CAP_SETUID
    1 << 4: ("SECBIT_KEEP_CAPS", "permitted capabilities survive a change of uid from 0",
             "CAP_SETUID"),
}
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
# mount option -> (flag, set); "r"-prefixed ones (rro, rnosuid, ...) are their recursive forms
OPTION_FLAGS = {"ro": (MS_RDONLY, True), "rw": (MS_RDONLY, False),
                "nosuid": (MS_NOSUID, True), "suid": (MS_NOSUID, False),
                "nodev": (MS_NODEV, True), "dev": (MS_NODEV, False),
                "noexec": (MS_NOEXEC, True), "exec": (MS_NOEXEC, False)}
FLAG_NAMES = ((MS_RDONLY, "ro"), (MS_NOSUID, "nosuid"), (MS_NODEV, "nodev"),
              (MS_NOEXEC, "noexec"))
# CRIU's fstype codes (images/mnt.proto)
FSTYPE_NAMES = {0: "a bind or other filesystem", 1: "proc", 2: "sysfs", 3: "devtmpfs",
                4: "binfmt_misc", 5: "tmpfs", 6: "devpts", 7: "simfs", 8: "pstore",
                9: "securityfs", 10: "fusectl", 11: "debugfs", 12: "cgroup", 13: "aufs",
                14: "mqueue", 15: "fuse", 16: "auto", 17: "overlay", 18: "autofs",
                19: "tracefs", 23: "cgroup2"}
PROC, SYSFS, DEVTMPFS, TMPFS, DEVPTS, CGROUP, CGROUP2 = 1, 2, 3, 5, 6, 12, 23
# spec mount type -> the image fstypes it may be (a "cgroup" mount is a cgroup2 mount on a v2
# node and, on a v1 node, a tmpfs with one cgroup mount per controller below it)
SPEC_FSTYPES = {"proc": (PROC,), "sysfs": (SYSFS,), "devtmpfs": (DEVTMPFS,), "tmpfs": (TMPFS,),
                "devpts": (DEVPTS,), "mqueue": (14,), "cgroup": (CGROUP, CGROUP2, TMPFS),
                "cgroup2": (CGROUP2,), "binfmt_misc": (4,), "securityfs": (9,),
                "debugfs": (11,), "tracefs": (19,), "pstore": (8,), "fusectl": (10,)}
# filesystems that are the kernel's or the node's own interfaces: only where the spec names them
KERNEL_FSTYPES = frozenset((PROC, SYSFS, DEVTMPFS, 4, 8, 9, 10, 11, CGROUP, 19, CGROUP2))
# the devices runc and crun bind-mount from the node in a user namespace (besides linux.devices)
DEFAULT_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/tty", "/dev/urandom",
                   "/dev/random")
# the key of a mount CRIU itself found external at a dump (runc-grit's CRIU config has
# `external mnt[]`): at a restore CRIU bind-mounts the image's `source`, a path of the node
AUTODETECTED = "CRIU:AUTOGENERATED"
# the namespace whose filesystem it is: shared with the node, the node's mount is the same one
NS_OF_FSTYPE = {PROC: "pid", SYSFS: "network", 14: "ipc", CGROUP: "cgroup", CGROUP2: "cgroup"}
# crun masks a directory with a bind of its shared empty dir (runtimes/crun.py)
_CRUN_EMPTY_DIR = re.compile(r"^(/[A-Za-z0-9._+@-]+)+/\.empty-directory$")
SPEC_DUMP = "spec.dump"
# runtimes whose restore takes --lsm-profile TYPE:NAME (runc >= 1.1, crun with CRIU, and what
# wraps runc)
LSM_FLAG_RUNTIMES = ("runc", "crun", "nvidia-container-runtime")


def cap_names(words):
    """CRIU's capability words ([low 32 bits, high 32 bits]) -> set of names."""
    bits = 0
    for i, w in enumerate(words or []):
        bits |= int(w) << (32 * i)
    return {(CAPS[b] if b < len(CAPS) else "CAP_%d" % b)
            for b in range(bits.bit_length()) if bits >> b & 1}


def _fmt(names):
    return "[%s]" % ", ".join(sorted(names)) if names else "none"


def _limit(v):
    return "unlimited" if v >= RLIM_INFINITY else str(v)


def _norm(path):
    """A mount path as one string: absolute, no trailing or doubled slashes, no dots."""
    return posixpath.normpath("/" + str(path or "").lstrip("/"))


def _canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _digest(obj):
    return "none" if obj is None else "sha256 %s" % hashlib.sha256(
        _canonical(obj).encode()).hexdigest()[:12]


def _flags(bits):
    return ",".join(n for b, n in FLAG_NAMES if bits & b) or "none of ro,nosuid,nodev,noexec"


def _fstype(m):
    name = FSTYPE_NAMES.get(m.get("fstype"), "fstype %s" % m.get("fstype"))
    return "%s %s" % (name, m["fsname"]) if m.get("fsname") else name


# --- what the node is: its LSM, its limits ---------------------------------------------------

def host_lsm():
    """The LSM CRIU applies labels for on this node, as CRIU decides it (kerndat_lsm):
    "apparmor", "selinux" or None."""
    if os.path.isdir("/sys/kernel/security/apparmor"):
        return "apparmor"
    if os.path.exists("/sys/fs/selinux/enforce"):
        return "selinux"
    return None


def spec_label(spec, lsm):
    """The spec's label for lsm (process.apparmorProfile or process.selinuxLabel), or None."""
    proc = spec.get("process") or {}
    key = {"apparmor": "apparmorProfile", "selinux": "selinuxLabel"}.get(lsm)
    return (proc.get(key) or None) if key else None


def restore_flags(spec, runtime_name, lsm=None):
    """The restore flags that make the runtime apply the spec's LSM label to the restored
    tasks: ["--lsm-profile", "apparmor:NAME" or "selinux:LABEL"] when the spec names one for
    the LSM this node enforces; CRIU then sets it on every task instead of the image's.
    GritError for a runtime that has no such flag (rather than restore the image's label)."""
    lsm = host_lsm() if lsm is None else lsm
    label = spec_label(spec, lsm) if lsm else None
    if not label:
        return []
    if os.path.basename(runtime_name or "") not in LSM_FLAG_RUNTIMES:
        raise SourceError("%s cannot be told the spec's %s label %s for a restore (no "
                        "--lsm-profile); CRIU would restore the checkpoint's label: refused"
                        % (runtime_name, lsm, label))
    return ["--lsm-profile", "%s:%s" % (lsm, label)]


def _own_label():
    try:
        with open("/proc/self/attr/current", "rb") as f:
            return f.read().rstrip(b"\0\n").decode("utf-8", "replace") or None
    except OSError:
        return None


def resolve_in_rootfs(rootfs, path, limit=64):
    """path inside the container as the runtime mounts it (runc's securejoin, crun's
    chroot_realpath): symlinks of rootfs followed, absolute ones from rootfs, never above it;
    what does not exist stays as written."""
    parts = [p for p in _norm(path).split("/") if p]
    done = []
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        here = os.path.join(rootfs, *(done + [part]))
        if os.path.islink(here) and limit > 0:
            limit -= 1
            target = os.readlink(here)
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p] + parts
            continue
        done.append(part)
    return "/" + "/".join(done)


def _resolved(spec, bundle):
    """spec mount destination -> where the runtime mounts it, for those a symlink of the
    rootfs moves (a destination below another mount of the spec is the runtime's to resolve
    on that mount, not in the rootfs: left as it is)."""
    root = (spec.get("root") or {}).get("path") or "rootfs"
    rootfs = root if os.path.isabs(root) else os.path.join(bundle, root)
    dests = [_norm(m.get("destination")) for m in spec.get("mounts") or []]
    out = {}
    for d in dests:
        if any(o != d and o != "/" and d.startswith(o + "/") for o in dests):
            continue
        try:
            r = resolve_in_rootfs(rootfs, d)
        except OSError:
            continue
        if r != d:
            out[d] = r
    return out


def host_facts(spec, bundle=None):
    """What the comparison needs of this node: its LSM (and runc-grit's own SELinux label),
    runc-grit's hard rlimits (what a container gets for a type its spec does not set), which
    of the spec's masked and read-only /proc and /sys paths exist here (the runtime masks only
    those), and (bundle given) where the rootfs's symlinks move the spec's mounts."""
    import resource
    lims = []
    for i in range(len(RLIMITS)):
        try:
            hard = resource.getrlimit(i)[1]
        except (ValueError, OSError):
            hard = resource.RLIM_INFINITY
        lims.append(RLIM_INFINITY if hard == resource.RLIM_INFINITY or hard < 0 else hard)
    linux = spec.get("linux") or {}
    paths = set()
    for p in (linux.get("maskedPaths") or []) + (linux.get("readonlyPaths") or []):
        p = _norm(p)
        if p.startswith(("/proc/", "/sys/")) and os.path.lexists(p):
            paths.add(p)
    lsm = host_lsm()
    return {"lsm": lsm, "label": _own_label() if lsm == "selinux" else None,
            "rlimits": lims, "paths": sorted(paths), "nice": os.getpriority(os.PRIO_PROCESS, 0),
            "oom_score_adj": _read_int("/proc/self/oom_score_adj"),
            "loginuid": _read_int("/proc/self/loginuid"),
            "resolved": _resolved(spec, bundle) if bundle else {},
            "rbind_submounts": rbind_submounts(spec, _node_mountpoints())}


def _node_mountpoints():
    from runc_grit.node import mountinfo
    return [m.mountpoint for m in mountinfo.read() or ()]


def rbind_submounts(spec, node_mounts):
    """{container path: node path} of the node's mounts below the source of a spec `rbind`
    mount: the runtime's recursive bind brings them into the container (the device machine's
    /usr/local/nvidia under a /usr rbind). Pure."""
    out = {}
    for m in spec.get("mounts") or []:
        opts = m.get("options") or []
        src = _norm(m.get("source")) if m.get("source") else None
        if not src or "rbind" not in opts:
            continue
        for node in node_mounts:
            node = _norm(node)
            if node != src and node.startswith(src.rstrip("/") + "/"):
                out[_norm(m.get("destination")).rstrip("/") + node[len(src.rstrip("/")):]] = node
    return out


def _read_int(path):
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


# --- the comparison --------------------------------------------------------------------------

def _granted(spec, cap):
    """Whether a task of spec may use cap: in its permitted (or effective, ambient) set, or in
    its bounding set when it runs as uid 0 without no_new_privs (root regains the bounding set
    at an execve)."""
    proc = spec.get("process") or {}
    caps = proc.get("capabilities") or {}
    if any(cap in (caps.get(s) or []) for s in ("permitted", "effective", "ambient")):
        return True
    uid = int((proc.get("user") or {}).get("uid", 0))
    return uid == 0 and not proc.get("noNewPrivileges") and cap in (caps.get("bounding") or [])


def problems(image, spec, source=None, host=None):
    """Why restoring image (criuimages.read) into spec would escalate: a list, one entry per
    finding, naming the tasks (mount, namespace) it holds for. source: the source container's
    spec (the checkpoint's spec.dump; None: it has none). host: host_facts() (None: nothing
    about the node is compared: LSM, rlimits the spec does not set, masked paths' presence).
    Pure."""
    host = host or {}
    proc = spec.get("process") or {}
    user = proc.get("user") or {}
    uid, gid = int(user.get("uid", 0)), int(user.get("gid", 0))
    groups = {gid} | {int(g) for g in user.get("additionalGids") or []}
    caps = proc.get("capabilities") or {}
    nnp = bool(proc.get("noNewPrivileges"))
    linux = spec.get("linux") or {}
    profile = linux.get("seccomp") or None
    new_ns = [n.get("type") for n in linux.get("namespaces") or [] if not n.get("path")]
    root_ids = image.get("root_ids") or {}
    lsm = host.get("lsm")
    label = spec_label(spec, lsm) if lsm else None
    spec_rl = {}
    for r in proc.get("rlimits") or []:
        try:
            spec_rl[r.get("type")] = int(r.get("hard"))
        except (TypeError, ValueError):
            continue
    host_rl = host.get("rlimits") or []
    may_resource = _granted(spec, "CAP_SYS_RESOURCE")
    out = []  # findings about the whole image, first
    if profile is not None:
        src = (source.get("linux") or {}).get("seccomp") if isinstance(source, dict) else None
        if source is None:
            out.append("seccomp: the checkpoint has no %s, so the source container's profile "
                       "is unknown; the spec has a profile (%s) and CRIU restores the source's "
                       "filters" % (SPEC_DUMP, _digest(profile)))
        elif _canonical(src) != _canonical(profile):
            out.append("seccomp: the spec's profile (%s) is not the source container's (%s, "
                       "its %s); CRIU restores the source's filters, not the spec's"
                       % (_digest(profile), _digest(src or None), SPEC_DUMP))
    if image.get("apparmor_namespaces"):
        out.append("AppArmor policy namespaces (%d) in the image, which CRIU would load into "
                   "the kernel; the spec loads none" % image["apparmor_namespaces"])
    found = {}  # finding -> the tasks it holds for, in order
    for t in image.get("tasks") or []:
        who = str(t["tid"])

        def add(text):
            found.setdefault(text, []).append(who)

        c = t.get("creds") or {}
        for fields, want, what in ((("uid", "euid", "suid", "fsuid"), uid, "runs it as uid"),
                                   (("gid", "egid", "sgid", "fsgid"), gid, "gives gid")):
            got = [c.get(f, 0) for f in fields]
            if any(g != want for g in got):
                add("%s %s in the image; the spec %s %d"
                    % ("/".join(fields), "/".join(map(str, got)), what, want))
        extra = set(c.get("groups") or []) - groups
        if extra:
            add("supplementary groups %s in the image; the spec grants %s"
                % (sorted(extra), sorted(groups)))
        for oci, field in SETS:
            more = cap_names(c.get(field)) - set(caps.get(oci) or [])
            if more:
                add("%s capabilities %s in the image; the spec's %s set is %s"
                    % (oci, _fmt(more), oci, _fmt(set(caps.get(oci) or []))))
        bits = int(c.get("secbits") or 0)
        for bit, (name, meaning, cap) in sorted(SECBITS.items()):
            if bits & bit and not _granted(spec, cap):
                add("securebit %s (%s) in the image; the spec grants no %s to set it"
                    % (name, meaning, cap))
        if nnp and not c.get("no_new_privs"):
            add("no_new_privs is off in the image; the spec sets noNewPrivileges")
        img_label = c.get("lsm_profile") or None
        if img_label == "unconfined":
            img_label = None
        if lsm and not label and img_label and (lsm == "apparmor"
                                                 or img_label != host.get("label")):
            add("LSM label %s in the image; the spec names no %s label (CRIU would restore "
                "the image's)" % (img_label, lsm))
        if lsm == "selinux" and c.get("lsm_sockcreate") and c["lsm_sockcreate"] != label:
            add("SELinux socket label %s in the image; the spec's label is %s"
                % (c["lsm_sockcreate"], label or "none"))
        if c.get("apparmor_data"):
            add("AppArmor namespace data in the image; the spec gives none")
        if profile is not None:
            if t.get("seccomp_mode") in (None, 0, "disabled"):
                add("no seccomp filter in the image; the spec has a seccomp profile")
            elif t.get("seccomp_mode") in ("filter", 2) and "seccomp_filters" in t \
                    and t["seccomp_filters"] < 1:
                add("seccomp filter chain of %s in the image; the spec's profile is one filter "
                    "the runtime installs in every task"
                    % ("no filters" if t["seccomp_filters"] == 0 else "a broken chain"))
        if not may_resource:
            for i, hard in enumerate(t.get("rlimits") or []):
                name = RLIMITS[i] if i < len(RLIMITS) else "RLIMIT_%d" % i
                if name in spec_rl:
                    limit, whose = spec_rl[name], "the spec's hard limit is"
                elif i < len(host_rl):
                    limit, whose = host_rl[i], "the spec sets none, and runc-grit's own is"
                else:
                    continue
                if int(hard) > limit:
                    add("%s hard limit %s in the image; %s %s"
                        % (name, _limit(int(hard)), whose, _limit(limit)))
        for text in _sched_problems(t, spec, spec_rl, host_rl, host):
            add(text)
        for ns in new_ns if t.get("ids") else ():
            key = NAMESPACES.get(ns)
            if key and key in t["ids"] and t["ids"][key] == root_ids.get(key):
                add("in the node's own %s namespace in the image; the spec gives the "
                    "container a %s namespace of its own" % (ns, ns))
    out += ["%s %s: %s" % ("task" if len(tids) == 1 else "tasks", ", ".join(tids), text)
            for text, tids in found.items()]
    out += _userns_problems(image, spec)
    out += _mount_problems(image, spec, host)
    return out


SCHED_FIFO, SCHED_RR, SCHED_DEADLINE = 1, 2, 6
UNSET_LOGINUID = (1 << 32) - 1


def _allowed_limit(name, spec_rl, host_rl):
    if name in spec_rl:
        return spec_rl[name]
    i = RLIMITS.index(name)
    return host_rl[i] if i < len(host_rl) else None


def _sched_problems(t, spec, spec_rl, host_rl, host):
    """A task's scheduling, OOM score and audit identity: what it could not have set itself.
    CRIU sets them as root."""
    out = []
    sched = t.get("sched") or {}
    if not _granted(spec, "CAP_SYS_NICE"):
        nice, base = sched.get("nice"), host.get("nice")
        rl_nice = _allowed_limit("RLIMIT_NICE", spec_rl, host_rl)
        if nice is not None and base is not None and nice < base and rl_nice is not None \
                and rl_nice < 20 - nice:
            out.append("nice %d in the image; runc-grit's is %d and RLIMIT_NICE (%s) allows "
                       "no lower than %d without CAP_SYS_NICE"
                       % (nice, base, _limit(rl_nice), min(base, 20 - min(rl_nice, 40))))
        policy, prio = sched.get("policy") or 0, sched.get("prio") or 0
        rl_rt = _allowed_limit("RLIMIT_RTPRIO", spec_rl, host_rl)
        if policy == SCHED_DEADLINE:
            out.append("scheduling policy SCHED_DEADLINE in the image; the spec grants no "
                       "CAP_SYS_NICE")
        elif policy in (SCHED_FIFO, SCHED_RR) and rl_rt is not None and prio > rl_rt:
            out.append("real-time scheduling (%s, priority %d) in the image; RLIMIT_RTPRIO "
                       "allows %s without CAP_SYS_NICE"
                       % ("SCHED_FIFO" if policy == SCHED_FIFO else "SCHED_RR", prio,
                          _limit(rl_rt)))
    adj = t.get("oom_score_adj")
    want = (spec.get("process") or {}).get("oomScoreAdj")
    want = host.get("oom_score_adj") if want is None else want
    if adj is not None and want is not None and int(adj) < int(want) \
            and not _granted(spec, "CAP_SYS_RESOURCE"):
        out.append("oom_score_adj %d in the image; the spec's (or runc-grit's) is %d, and lower "
                   "needs CAP_SYS_RESOURCE" % (int(adj), int(want)))
    lu, own = t.get("loginuid"), host.get("loginuid")
    if lu is not None and own is not None and own != UNSET_LOGINUID and int(lu) != own \
            and not _granted(spec, "CAP_AUDIT_CONTROL"):
        out.append("loginuid %d in the image; runc-grit's (which the container inherits) is %d"
                   % (int(lu), own))
    return out


def _extents(entries, first, lower, count):
    return sorted((int(e.get(first, 0)), int(e.get(lower, 0)), int(e.get(count, 0)))
                  for e in entries or [])


def _userns_problems(image, spec):
    linux = spec.get("linux") or {}
    kinds = {n.get("type"): bool(n.get("path")) for n in linux.get("namespaces") or []}
    out = []
    for u in image.get("userns") or []:
        where = "user namespace %s" % u.get("ns")
        if "user" not in kinds:
            out.append("%s in the image; the spec creates and joins none" % where)
            continue
        if kinds["user"]:
            continue  # joined by path: its maps are the node's, not compared here
        for field, key in (("uid_map", "uidMappings"), ("gid_map", "gidMappings")):
            got = _extents(u.get(field), "first", "lower_first", "count")
            want = _extents(linux.get(key), "containerID", "hostID", "size")
            if got != want:
                out.append("%s: %s %s in the image; the spec's %s are %s"
                           % (where, field, got, key, want))
    return out


def _is_bind(m):
    opts = m.get("options") or []
    return m.get("type") == "bind" or "bind" in opts or "rbind" in opts


def _node_bind(m, sm):
    """Whether image mount m is CRIU's own external bind of exactly spec bind sm's source."""
    return (m.get("ext_key") == AUTODETECTED and sm is not None and _is_bind(sm)
            and bool(sm.get("source")) and _norm(m.get("source")) == _norm(sm.get("source")))


def _option_flags(options):
    """The flags (ro, nosuid, nodev, noexec) a mount's options ask for; the last word wins."""
    want = 0
    for o in options or []:
        o = str(o)
        if o not in OPTION_FLAGS and o.startswith("r") and o[1:] in OPTION_FLAGS:
            o = o[1:]
        if o in OPTION_FLAGS:
            bit, on = OPTION_FLAGS[o]
            want = want | bit if on else want & ~bit
    return want


def _mount_problems(image, spec, host):
    """Every mount of the image against what the spec makes (see the module doc). A spec that
    grants CAP_SYS_ADMIN (and creates no user namespace) lets the container mount and remount
    itself: its mount tree is not compared."""
    mounts = image.get("mounts") or []
    linux = spec.get("linux") or {}
    private = {n.get("type") for n in linux.get("namespaces") or [] if not n.get("path")}
    userns = any(n.get("type") == "user" for n in linux.get("namespaces") or [])
    if not mounts or (_granted(spec, "CAP_SYS_ADMIN") and not userns):
        return []
    spec_at = {}  # path -> the spec's mounts there, in order
    moved = host.get("resolved") or {}   # a rootfs symlink on the way: where it is mounted
    for m in spec.get("mounts") or []:
        d = _norm(m.get("destination"))
        spec_at.setdefault(moved.get(d, d), []).append(m)
    masked = {_norm(p) for p in linux.get("maskedPaths") or []}
    ro_paths = {_norm(p) for p in linux.get("readonlyPaths") or []}
    cgroups = {p: ms[-1] for p, ms in spec_at.items()
               if ms[-1].get("type") in ("cgroup", "cgroup2") and not _is_bind(ms[-1])}
    devices = set()
    if userns:
        devices = set(DEFAULT_DEVICES) | {_norm(d.get("path")) for d in linux.get("devices") or []
                                          if d.get("path")}
    console = bool((spec.get("process") or {}).get("terminal"))
    root_ro = bool((spec.get("root") or {}).get("readonly"))
    present = set(host.get("paths") or ())
    subs = host.get("rbind_submounts") or {}
    out = []
    by_ns = {}
    for m in mounts:
        by_ns.setdefault(m.get("ns"), []).append(m)
    for ns, ms in sorted(by_ns.items(), key=lambda kv: str(kv[0])):
        ids = {m.get("mnt_id"): m for m in ms}
        at = {}
        for m in ms:
            at.setdefault(_norm(m.get("mountpoint")), []).append(m)
        for path, here in sorted(at.items()):
            where = "mount %s" % path
            under_cgroup = next((d for d in cgroups if path.startswith(d.rstrip("/") + "/")),
                                None)
            allowed = (len(spec_at.get(path, ())) + (path in masked) + (path in ro_paths)
                       + (path == "/") + (console and path == "/dev/console")
                       + (path in devices) + (under_cgroup is not None)
                       + (path in subs and path not in spec_at))
            if not allowed:
                out.append("%s (%s) in the image; the spec makes no mount there"
                           % (where, _fstype(here[0])))
                continue
            if len(here) > allowed:
                out.append("%s: %d mounts stacked there in the image; the spec makes %d"
                           % (where, len(here), allowed))
                continue
            bottoms = [m for m in here if _norm((ids.get(m.get("parent_mnt_id")) or {})
                                                .get("mountpoint")) != path
                       or m.get("parent_mnt_id") not in ids]
            tops = [m for m in here
                    if not any(o.get("parent_mnt_id") == m.get("mnt_id") for o in here)]
            sm = spec_at.get(path, [None])[-1]
            for m in here:
                key = m.get("ext_key")
                if key == AUTODETECTED:
                    # CRIU binds the node's path `source` there: only the source of the spec's
                    # bind there (crun keys a bind by its unresolved destination, so CRIU finds
                    # one a rootfs symlink moves itself), or the node's own mount of the
                    # filesystem the spec mounts there, of a namespace the container shares
                    # with the node (a hostNetwork pod's /sys)
                    types = SPEC_FSTYPES.get((sm or {}).get("type"), ())
                    if sm is None and path in subs and _norm(m.get("source")) == subs[path]:
                        continue  # the node's own mount, below a spec rbind's source
                    if not (_node_bind(m, sm) or sm is not None and not _is_bind(sm)
                            and m.get("fstype") in types
                            and NS_OF_FSTYPE.get(m.get("fstype")) not in private
                            and _norm(m.get("source")) == path):
                        out.append("%s: CRIU would bind the node's %s there (an external mount "
                                   "it detected at the checkpoint); the spec %s"
                                   % (where, m.get("source"), "mounts %s there" % sm.get("type")
                                      if sm is not None else "makes no such mount"))
                elif key and key != path and not (path in masked and (
                        key == "/dev/null" or _CRUN_EMPTY_DIR.match(key))):
                    # the runtime maps these keys only (runc, crun)
                    out.append("%s: external mount key %s in the image; the runtime maps a "
                               "mount there from %s only" % (where, key, path))
            want = 0
            if path == "/":
                want |= MS_RDONLY if root_ro else 0
            if sm is not None and len(bottoms) == 1:
                b = bottoms[0]
                if _is_bind(sm):
                    if b.get("ext_key") != path and not _node_bind(b, sm):
                        out.append("%s (%s, root %s) in the image; the spec bind-mounts %s "
                                   "there" % (where, _fstype(b), b.get("root"), sm.get("source")))
                else:
                    types = SPEC_FSTYPES.get(sm.get("type"))
                    if types is not None and b.get("fstype") not in types or (
                            types is None and b.get("fstype") in KERNEL_FSTYPES):
                        out.append("%s is %s in the image; the spec mounts %s there"
                                   % (where, _fstype(b), sm.get("type") or "a filesystem"))
            if sm is not None:
                want |= _option_flags(sm.get("options"))
                if sm.get("type") == "cgroup" and all(t.get("fstype") == TMPFS for t in tops):
                    want &= ~MS_RDONLY  # runc leaves a cgroup v1 tmpfs writable
            if path in ro_paths:
                want |= MS_RDONLY
            if under_cgroup is not None and sm is None:
                want |= _option_flags(cgroups[under_cgroup].get("options"))
            for t in tops:
                parent = ids.get(t.get("parent_mnt_id")) or {}
                if path in masked:
                    if not (t.get("fstype") == TMPFS or t.get("ext_key") in ("/dev/null", path)
                            or _CRUN_EMPTY_DIR.match(t.get("ext_key") or "")):
                        out.append("%s is %s (root %s) in the image; the spec masks it"
                                   % (where, _fstype(t), t.get("root")))
                elif path in ro_paths and sm is None:
                    if parent and t.get("fstype") != parent.get("fstype"):
                        out.append("%s is %s in the image, not the read-only bind of the %s "
                                   "below it that the spec's readonlyPaths makes"
                                   % (where, _fstype(t), _fstype(parent)))
                elif console and path == "/dev/console" and sm is None:
                    if t.get("fstype") != DEVPTS:
                        out.append("%s is %s in the image; the runtime binds the terminal's "
                                   "devpts there" % (where, _fstype(t)))
                elif path in devices and sm is None:
                    if t.get("ext_key") != path:
                        out.append("%s is %s in the image; the runtime binds the node's %s "
                                   "there" % (where, _fstype(t), path))
                elif under_cgroup is not None and sm is None:
                    if t.get("fstype") not in (CGROUP, CGROUP2) and t.get("ext_key") != path:
                        out.append("%s is %s in the image; the spec mounts cgroups at %s"
                                   % (where, _fstype(t), under_cgroup))
                lacking = want & ~int(t.get("flags") or 0)
                if lacking:
                    out.append("%s lacks %s in the image (it has %s); the spec makes it %s"
                               % (where, _flags(lacking), _flags(int(t.get("flags") or 0)),
                                  _flags(want)))
        # what the runtime masks or makes read-only in /proc and /sys must be there
        for path in sorted((masked | ro_paths) & present):
            top = "/proc" if path.startswith("/proc/") else "/sys"
            kind = "proc" if top == "/proc" else "sysfs"
            if path not in at and any(m.get("type") == kind for m in spec_at.get(top, ())):
                out.append("mount %s: none in the image, so it is %s there; the spec's %s "
                           "lists it" % (path, "unmasked" if path in masked else "writable",
                                         "maskedPaths" if path in masked else "readonlyPaths"))
    return out


def source_spec(image_dir):
    """The source container's spec: the checkpoint's spec.dump (listed in its manifest, so as
    trustworthy as its signature), or None. A raw CRIU dir (no manifest) named `checkpoint`
    may have it beside itself, as Podman's and containerd's archives lay it out."""
    paths = [os.path.join(image_dir, SPEC_DUMP)]
    if os.path.basename(os.path.normpath(image_dir)) == "checkpoint" and not os.path.lexists(
            os.path.join(image_dir, "grit-manifest.json")):
        paths.append(os.path.join(os.path.dirname(os.path.normpath(image_dir)), SPEC_DUMP))
    for path in paths:
        try:
            with open(path, "rb") as f:
                spec = json.loads(f.read(16 << 20))
        except (OSError, ValueError):
            continue
        return spec if isinstance(spec, dict) else None
    return None


def check(image_dir, spec, conf, log=None, where=None, bundle=None, decoder=None):
    """Refuse (GritError) a restore of image_dir into spec that would escalate, as config
    `privilege_check` says. bundle: the destination's (its rootfs's symlinks move mounts);
    decoder: the restore's criuimages.Decoder, started early."""
    mode = getattr(conf, "privilege_check", "enforce")
    if mode == "off":
        return []
    from runc_grit.checkpoint import criuimages
    found = problems(criuimages.read(image_dir, conf, where=where, decoder=decoder), spec,
                     source_spec(image_dir), host_facts(spec, bundle))
    if found and mode == "enforce":
        raise SourceError("%s: the checkpoint would give its processes more than this container's "
                        "spec grants: %s" % (where or "restore of %s" % image_dir,
                                             "; ".join(found[:10])))
    if found and log is not None:
        log.warning("%s: privilege_check is 'warn': restoring although %s"
                    % (where or image_dir, "; ".join(found[:10])))
    return found
