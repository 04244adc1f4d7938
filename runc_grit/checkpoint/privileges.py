"""A restore may never give a process more than the destination's spec grants.

CRIU brings back what the image says about each task (credentials, capability sets,
no_new_privs, seccomp, namespaces), not what the new container's config.json says. An image
from a privileged container, or one edited with crit, would otherwise restore its privileges
into a pod whose spec grants none. So before CRIU runs, every task of the image is compared
with the destination spec:

  user and groups     uid/euid/suid/fsuid = the spec's uid, the gids likewise, every
                      supplementary group among the spec's gid and additionalGids
  capabilities        each of the five sets (bounding, effective, permitted, inheritable,
                      ambient) within the spec's set of the same name
  noNewPrivileges     set in the spec: set on every task
  seccomp             a profile in the spec: every task under a filter
  namespaces          a namespace the spec creates (no path): no task in the node's own
Each refusal names the field, the task and both sides. config `privilege_check`: `enforce`
(default) refuses, `warn` logs and restores, `off` skips the check.
"""
from runc_grit.errors import GritError

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


def cap_names(words):
    """CRIU's capability words ([low 32 bits, high 32 bits]) -> set of names."""
    bits = 0
    for i, w in enumerate(words or []):
        bits |= int(w) << (32 * i)
    return {(CAPS[b] if b < len(CAPS) else "CAP_%d" % b)
            for b in range(bits.bit_length()) if bits >> b & 1}


def _fmt(names):
    return "[%s]" % ", ".join(sorted(names)) if names else "none"


def problems(image, spec):
    """Why restoring image (criuimages.read) into spec would escalate: a list, one entry per
    finding, naming the tasks it holds for. Pure."""
    proc = spec.get("process") or {}
    user = proc.get("user") or {}
    uid, gid = int(user.get("uid", 0)), int(user.get("gid", 0))
    groups = {gid} | {int(g) for g in user.get("additionalGids") or []}
    caps = proc.get("capabilities") or {}
    nnp = bool(proc.get("noNewPrivileges"))
    linux = spec.get("linux") or {}
    seccomp = bool(linux.get("seccomp"))
    new_ns = [n.get("type") for n in linux.get("namespaces") or [] if not n.get("path")]
    root_ids = image.get("root_ids") or {}
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
        if nnp and not c.get("no_new_privs"):
            add("no_new_privs is off in the image; the spec sets noNewPrivileges")
        if seccomp and t.get("seccomp_mode") in (None, 0, "disabled"):
            add("no seccomp filter in the image; the spec has a seccomp profile")
        for ns in new_ns if t.get("ids") else ():
            key = NAMESPACES.get(ns)
            if key and key in t["ids"] and t["ids"][key] == root_ids.get(key):
                add("in the node's own %s namespace in the image; the spec gives the "
                    "container a %s namespace of its own" % (ns, ns))
    return ["%s %s: %s" % ("task" if len(tids) == 1 else "tasks", ", ".join(tids), text)
            for text, tids in found.items()]


def check(image_dir, spec, conf, log=None, where=None):
    """Refuse (GritError) a restore of image_dir into spec that would escalate, as config
    `privilege_check` says."""
    mode = getattr(conf, "privilege_check", "enforce")
    if mode == "off":
        return []
    from runc_grit.checkpoint import criuimages
    found = problems(criuimages.read(image_dir, conf, where=where), spec)
    if found and mode == "enforce":
        raise GritError("%s: the checkpoint would give its processes more than this container's "
                        "spec grants: %s" % (where or "restore of %s" % image_dir,
                                             "; ".join(found[:10])), kind="source")
    if found and log is not None:
        log.warning("%s: privilege_check is 'warn': restoring although %s"
                    % (where or image_dir, "; ".join(found[:10])))
    return found
