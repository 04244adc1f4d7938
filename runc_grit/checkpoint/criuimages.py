"""What a CRIU image dir says about its processes, as the privilege check (privileges.py) needs
it: credentials (ids, groups, capabilities, securebits, no_new_privs, LSM label), seccomp mode
and the length of each task's filter chain, hard rlimits and namespaces of every task; the mount
tree of every mount namespace; the maps of every user namespace; AppArmor policy CRIU would
load; and the keys of its external mounts. Decoded with CRIU's own pycriu (crit's library).

pycriu comes with CRIU's Python bindings (Debian's python3-pycriu; install/deps.sh unpacks
Debian 13's into CRIU's prefix) and its own pure-Python protobuf, which must not meet the
protobuf of runc-grit's environment: so this file also runs as a script in a child
interpreter whose only import path is pycriu's (`python -S criuimages.py DIR`: it imports
nothing of runc-grit's there), and prints JSON. A restore starts that child first thing
(Decoder), so its start and pycriu's import overlap the checkpoint's verification.
"""
import json
import os
import subprocess
import sys

# where pycriu may live (config `pycriu_path` first)
PYCRIU_PATHS = ("/opt/runc-grit/criu/usr/lib/python3/dist-packages",
                "/usr/lib/python3/dist-packages")
NS_KEYS = ("pid", "net", "ipc", "uts", "mnt", "user", "cgroup", "time")


def pycriu_path(conf=None):
    want = getattr(conf, "pycriu_path", None) if conf is not None else None
    for d in ([want] if want else []) + list(PYCRIU_PATHS):
        if d and os.path.isfile(os.path.join(d, "pycriu", "images", "__init__.py")):
            return d
    return None


def read(image_dir, conf=None, timeout=120, where=None, decoder=None):
    """{"root_ids": {ns: id}, "tasks": [{"pid", "tid", "creds", "ids", "seccomp_mode",
    "seccomp_filters" (filters in the task's chain), "rlimits" ([hard limit by resource
    number], the thread group leader's), "sched" ({"nice", "policy", "prio"}), "oom_score_adj"
    and "loginuid" (the leader's)}], "mounts": [{"ns", "mnt_id", "parent_mnt_id",
    "mountpoint", "fstype", "fsname", "flags", "sb_flags", "root", "source", "ext_key"}],
    "userns": [{"ns", "uid_map", "gid_map"}], "apparmor_namespaces": N,
    "external_mounts": [key, ...]} of image_dir, from decoder (a Decoder started earlier)
    or a child started now.
    GritError when it cannot be read (no pycriu, a corrupt image)."""
    if decoder is None:
        decoder = Decoder(conf)
    return decoder.read(image_dir, timeout, where)


class Decoder:
    """The child interpreter that decodes an image dir, started before the dir is known
    (start): it imports pycriu (~0.15 s of pure-Python protobuf) while the restore verifies
    the checkpoint, and is given the dir only once that is done (read), as the dir's bytes on
    its stdin. A dir is decoded once however many steps ask (read caches it). close() ends a
    child never given a dir (its stdin's EOF makes it exit; killed if it does not)."""

    def __init__(self, conf=None):
        self.path = pycriu_path(conf)
        self.proc = None
        self.results = {}

    def start(self):
        if self.path is None or self.proc is not None:
            return self
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": self.path,
               "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python"}
        try:
            self.proc = subprocess.Popen([sys.executable, "-S", os.path.abspath(__file__), "-"],
                                         env=env, stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError:
            self.proc = None  # read() starts one and reports why it could not
        return self

    def read(self, image_dir, timeout=120, where=None):
        from runc_grit.errors import SourceError
        if image_dir in self.results:
            return self.results[image_dir]
        if self.path is None:
            raise SourceError("cannot read the checkpoint's process credentials: CRIU's pycriu "
                              "is not installed (install/deps.sh provides it; or set "
                              "pycriu_path)")
        proc, self.proc = self.start().proc, None
        if proc is None:
            raise SourceError("reading the checkpoint's images: cannot start %s"
                              % sys.executable)
        try:
            out, err = proc.communicate(os.fsencode(image_dir), timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as e:
            _end(proc)
            raise SourceError("reading the checkpoint's images: %s" % e) from None
        if proc.returncode != 0:
            err = err.decode("utf-8", "replace").strip().splitlines()
            raise SourceError("%s: its images cannot be decoded: %s"
                              % (where or "checkpoint %s" % image_dir,
                                 err[-1] if err else "exit %d" % proc.returncode))
        self.results[image_dir] = json.loads(out)
        return self.results[image_dir]

    def close(self):
        proc, self.proc = self.proc, None
        if proc is not None:
            _end(proc)


def _end(proc):
    """A child done with: stdin closed (it exits on EOF), killed if it lingers, reaped."""
    try:
        proc.stdin.close()
    except OSError:
        pass
    try:
        proc.wait(timeout=2)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for f in (proc.stdout, proc.stderr):
        f.close()


def _int(v):
    """A number pycriu renders as hex text ("0x200001") or gives as an int."""
    if isinstance(v, str):
        return int(v, 0)
    return int(v or 0)


def _chain_length(filters, index):
    """Filters in the seccomp chain that starts at filters[index] (each names its `prev`);
    -1 for a chain that leaves the table or loops (a crafted image)."""
    n = 0
    while index is not None:
        if not isinstance(index, int) or not 0 <= index < len(filters) or n >= len(filters):
            return -1
        n += 1
        index = filters[index].get("prev")
    return n


def _decode(image_dir):
    """(in the child) what image_dir says: tasks from pstree, core-N and ids-N, mounts from
    mountpoints-N, user namespaces from userns-N, seccomp chains from seccomp.img."""
    import pycriu

    def load(name):
        with open(os.path.join(image_dir, name), "rb") as f:
            return pycriu.images.load(f)["entries"]

    names = sorted(os.listdir(image_dir))
    root = load("inventory.img")[0].get("root_ids") or {}
    filters = []
    if "seccomp.img" in names:
        for e in load("seccomp.img"):
            filters += e.get("seccomp_filters") or []
    tasks = []
    for item in load("pstree.img"):
        for tid in item.get("threads") or [item["pid"]]:
            core = load("core-%d.img" % tid)[0]
            tc = core.get("thread_core") or {}
            mode = tc.get("seccomp_mode", 0)
            chain = (_chain_length(filters, tc.get("seccomp_filter"))
                     if mode in ("filter", 2) else 0)
            leader = core.get("tc") or {}
            rl = (leader.get("rlimits") or {}).get("rlimits") or []
            tasks.append({"pid": item["pid"], "tid": tid, "creds": tc.get("creds") or {},
                          "seccomp_mode": mode, "seccomp_filters": chain,
                          "rlimits": [_int(r.get("max")) for r in rl],
                          "sched": {k: tc.get("sched_" + k)
                                    for k in ("nice", "policy", "prio")},
                          "oom_score_adj": leader.get("oom_score_adj"),
                          "loginuid": leader.get("loginuid"),
                          "ids": load("ids-%d.img" % item["pid"])[0] if tid == item["pid"]
                          else None})
    keys = set()  # the keys of its external mounts (CRIU's --external mnt[KEY]:PATH)
    mounts, userns, aa = [], [], 0
    for name in names:
        if name.startswith("mountpoints-") and name.endswith(".img"):
            ns = int(name[len("mountpoints-"):-len(".img")])
            for m in load(name):
                if m.get("ext_key"):
                    keys.add(m["ext_key"])
                mounts.append({"ns": ns, "mnt_id": m.get("mnt_id"),
                               "parent_mnt_id": m.get("parent_mnt_id"),
                               "mountpoint": m.get("mountpoint"), "fstype": m.get("fstype", 0),
                               "fsname": m.get("fsname"), "flags": _int(m.get("flags")),
                               "sb_flags": _int(m.get("sb_flags")), "root": m.get("root"),
                               "source": m.get("source"), "ext_key": m.get("ext_key")})
        elif name.startswith("userns-") and name.endswith(".img"):
            for u in load(name):
                userns.append({"ns": int(name[len("userns-"):-len(".img")]),
                               "uid_map": u.get("uid_map") or [],
                               "gid_map": u.get("gid_map") or []})
        elif name == "apparmor.img":
            for a in load(name):
                aa += len(a.get("namespaces") or []) or 1
    return {"root_ids": root, "tasks": tasks, "mounts": mounts, "userns": userns,
            "apparmor_namespaces": aa, "external_mounts": sorted(keys)}


def main(argv):
    """`criuimages.py DIR`, or `criuimages.py -`: pycriu imported first, then the dir read
    from stdin (its bytes, to EOF; none: exit 0 quietly)."""
    if argv[0] == "-":
        __import__("pycriu")  # imported while the parent still verifies the dir
        path = sys.stdin.buffer.read()
        if not path:
            return 0
        argv = [os.fsdecode(path)]
    json.dump(_decode(argv[0]), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
