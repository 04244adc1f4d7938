"""`runc-grit doctor`: what this node has and lacks. Blockers make it exit non-zero."""
import ctypes
import json
import os
import platform

from runc_grit import fastconf
from runc_grit.node import procs


class Check:
    __slots__ = ("name", "ok", "detail", "blocker")

    def __init__(self, name, ok, detail, blocker=True):
        self.name, self.ok, self.detail, self.blocker = name, bool(ok), detail, blocker


def _version_tuple(v):
    out = []
    for part in (v or "").split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


def run_checks():
    from runc_grit.errors import GritError
    from runc_grit.node.config import hook_script, load
    checks = []
    try:
        conf = load()
        checks.append(Check("config", True, conf.path or "defaults (%s absent)" % fastconf.DEFAULT_PATH))
    except GritError as e:
        checks.append(Check("config", False, e.message))
        from runc_grit.node.config import Config, merge
        conf = Config(merge({}))
    rt = fastconf.which(conf.runtime)
    checks.append(Check("runtime", rt is not None,
                        "%s %s" % (rt, procs.version_of(rt)) if rt else "%s not found" % conf.runtime))
    if rt is not None:
        from runc_grit.runtimes.delegate import Delegate
        from runc_grit.runtimes.selection import select
        strat = select(Delegate.at(rt))
        why = strat.checkpoint_problem()
        checks.append(Check("checkpoint/restore", why is None,
                            "%s strategy, %s images" % (strat.name, strat.image_format)
                            if why is None else why, blocker=False))
    criu = fastconf.which(conf.criu)
    ver = procs.version_of(criu) if criu else None
    checks.append(Check("criu >= 4.1", criu is not None and _version_tuple(ver) >= (4, 1),
                        "%s %s" % (criu, ver) if criu else "%s not found" % conf.criu))
    if criu:
        rc, out = procs.run([criu, "check"], capture=True, timeout=60)
        checks.append(Check("criu check", rc == 0, "Looks good" if rc == 0 else "failed (run `criu check`)"))
    for t in ("iptables-restore", "ip6tables-restore"):
        p = fastconf.which(t)
        checks.append(Check(t, p is not None, p or "missing: CRIU's network lock needs it"))
    checks.append(Check("kernel", os.path.exists("/proc/sys/kernel/ns_last_pid"),
                        "%s; ns_last_pid %s" % (platform.release(),
                        "present" if os.path.exists("/proc/sys/kernel/ns_last_pid") else "missing")))
    cg2 = os.path.exists("/sys/fs/cgroup/cgroup.controllers")
    checks.append(Check("cgroup", True, "v2 (unified)" if cg2 else "v1 or hybrid", blocker=False))
    try:
        hs = hook_script(conf)
        checks.append(Check("action script", os.access(hs, os.X_OK), hs))
    except GritError as e:
        checks.append(Check("action script", False, e.message))
    try:
        os.makedirs(conf.state_dir, exist_ok=True)
        checks.append(Check("state_dir", os.access(conf.state_dir, os.W_OK), conf.state_dir))
    except OSError as e:
        checks.append(Check("state_dir", False, "%s: %s" % (conf.state_dir, e.strerror)))
    checks += _trust_checks(conf)
    checks += speed_checks(conf)
    roots = [r for r in conf.checkpoint_roots if os.path.isdir(r)]
    checks.append(Check("checkpoint_roots", bool(roots),
                        ", ".join(conf.checkpoint_roots) + ("" if roots else " (none exists yet)"),
                        blocker=False))
    need_cuda = conf.cuda.get("enabled") == "always"
    try:
        lib = ctypes.CDLL(conf.cuda.get("library", "libcuda.so.1"))
        api = hasattr(lib, "cuCheckpointProcessLock")
        v = ctypes.c_int(0)
        lib.cuDriverGetVersion(ctypes.byref(v))
        checks.append(Check("CUDA driver", True, "libcuda API %d.%d" % (v.value // 1000, v.value % 1000 // 10),
                            blocker=need_cuda))
        checks.append(Check("CUDA checkpoint API", api, "cuCheckpointProcess* %s"
                            % ("present" if api else "missing (driver < 570)"), blocker=need_cuda))
    except OSError:
        checks.append(Check("CUDA driver", False, "libcuda.so.1 not found (GPU checkpoints off)",
                            blocker=need_cuda))
    return checks


def _trust_checks(conf):
    """What protects restores (docs/security.md): signatures, the privilege check, staging."""
    from runc_grit.checkpoint import criuimages, integrity
    from runc_grit.errors import GritError
    out = []
    if not conf.require_signature:
        out.append(Check("signatures", False, "require_signature is false: unsigned checkpoints "
                         "are restored (an explicit choice; pods can point at any image under "
                         "the checkpoint roots)", blocker=False))
    else:
        try:
            key = integrity.load_signer(conf.signing_key) if conf.signing_key else None
            trusted = integrity.trusted_keys(conf, key)
            if key is None and not trusted:
                out.append(Check("signatures", False, "require_signature is true but there is "
                                 "no signing_key and no trusted key: every restore is refused "
                                 "(install/install.sh makes a key)"))
            elif key is None:
                out.append(Check("signatures", True, "required; trusts %s; no signing_key: this "
                                 "node's checkpoints are unsigned (refused where signatures are "
                                 "required)" % integrity.describe(trusted), blocker=False))
            elif key.symmetric:
                out.append(Check("signatures", False, "required; key %s (id %s) is a symmetric "
                                 "key: any node that verifies can also sign; use an Ed25519 key "
                                 "for a cluster (runc-grit keygen)" % (conf.signing_key,
                                                                      key.key_id),
                                 blocker=False))
            else:
                out.append(Check("signatures", True, "required; Ed25519 key %s (id %s); trusts %s"
                                 % (conf.signing_key, key.key_id, integrity.describe(trusted))))
        except GritError as e:
            out.append(Check("signatures", False, e.message))
    mode = conf.privilege_check
    where = criuimages.pycriu_path(conf)
    out.append(Check("privilege check", mode == "enforce" and where is not None,
                     "%s; pycriu %s" % (mode, where or "not found (install/deps.sh)"),
                     blocker=mode == "enforce"))
    out.append(Check("staging", True, {
        "copy": "copy into %s" % conf.staging_dir,
        "none": "none: in place, root-only local dirs only",
        "auto": "auto: in place from root-only local dirs, else a copy into %s" % conf.staging_dir,
    }[conf.staging], blocker=False))
    return out


THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"


def thp_mode(path=THP_ENABLED):
    """The node's transparent huge page mode ("always", "madvise", "never"), or None."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    return text.split("[", 1)[1].split("]", 1)[0] if "[" in text else None


def speed_checks(conf, thp_path=THP_ENABLED, mountinfo_path="/proc/self/mountinfo"):
    """What decides GPU migration downtime on this node (bench/results/gpu-h200-thp.md): huge
    pages for the process memory CUDA and CRIU fill, and for the image files. Advice only."""
    from runc_grit.checkpoint.staging import mount_of
    mode = thp_mode(thp_path)
    out = [Check("huge pages", mode == "always",
                 "transparent_hugepage=%s%s" % (mode, "" if mode == "always" else
                                                ": 'always' took a 16 GiB GPU migration from "
                                                "27.4 s to 22.1 s on the H200 (README, "
                                                "\"GPU migration downtime\")"),
                 blocker=False)]
    try:
        with open(mountinfo_path) as f:
            info = f.read()
    except OSError:
        return out
    for name, d in [("checkpoint root", r) for r in conf.checkpoint_roots] + \
            [("staging_dir", conf.staging_dir)]:
        fstype, opts = mount_of(d, info)
        huge = fstype == "tmpfs" and any(o in opts.split(",") for o in ("huge=always", "huge=within_size"))
        out.append(Check("images: " + name, huge, "%s on %s%s" % (
            d, fstype, "" if huge else " (a tmpfs with huge=always writes and reads "
            "images fastest)"), blocker=False))
    return out


def render(checks, as_json=False):
    if as_json:
        return json.dumps([{"check": c.name, "ok": c.ok, "blocker": c.blocker and not c.ok,
                            "detail": c.detail} for c in checks], indent=1)
    w = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        mark = "ok" if c.ok else ("MISSING" if c.blocker else "warn")
        lines.append("%-*s  %-7s  %s" % (w, c.name, mark, c.detail))
    bad = [c.name for c in checks if c.blocker and not c.ok]
    lines.append("")
    lines.append("blockers: %s" % (", ".join(bad) if bad else "none"))
    return "\n".join(lines)
