"""What a CRIU image dir says about its processes: credentials, capabilities, no_new_privs,
seccomp mode and namespaces of every task, and the keys of its external mounts. Decoded with CRIU's own pycriu (crit's library).

pycriu comes with CRIU's Python bindings (Debian's python3-pycriu; install/deps.sh unpacks
Debian 13's into CRIU's prefix) and its own pure-Python protobuf, which must not meet the
protobuf of runc-grit's environment: so this file also runs as a script in a child
interpreter whose only import path is pycriu's (`python -S criuimages.py DIR`: it imports
nothing of runc-grit's there), and prints JSON.
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


def read(image_dir, conf=None, timeout=120, where=None):
    """{"root_ids": {ns: id}, "tasks": [{"pid", "creds", "ids", "seccomp_mode"}],
    "external_mounts": [key, ...]} of image_dir.
    GritError when it cannot be read (no pycriu, a corrupt image)."""
    from runc_grit.errors import GritError
    path = pycriu_path(conf)
    if path is None:
        raise GritError("cannot read the checkpoint's process credentials: CRIU's pycriu is not "
                        "installed (install/deps.sh provides it; or set pycriu_path)",
                        kind="source")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": path,
           "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python"}
    try:
        p = subprocess.run([sys.executable, "-S", os.path.abspath(__file__), image_dir],
                           env=env, capture_output=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise GritError("reading the checkpoint's images: %s" % e, kind="source") from None
    if p.returncode != 0:
        err = p.stderr.decode("utf-8", "replace").strip().splitlines()
        raise GritError("%s: its images cannot be decoded: %s"
                        % (where or "checkpoint %s" % image_dir,
                           err[-1] if err else "exit %d" % p.returncode), kind="source")
    return json.loads(p.stdout)


def _decode(image_dir):
    """(in the child) the tasks of image_dir, from pstree, core-N and ids-N images."""
    import pycriu

    def load(name):
        with open(os.path.join(image_dir, name), "rb") as f:
            return pycriu.images.load(f)["entries"]

    root = load("inventory.img")[0].get("root_ids") or {}
    tasks = []
    for item in load("pstree.img"):
        for tid in item.get("threads") or [item["pid"]]:
            core = load("core-%d.img" % tid)[0]
            tc = core.get("thread_core") or {}
            tasks.append({"pid": item["pid"], "tid": tid, "creds": tc.get("creds") or {},
                          "seccomp_mode": tc.get("seccomp_mode", 0),
                          "ids": load("ids-%d.img" % item["pid"])[0] if tid == item["pid"]
                          else None})
    keys = set()  # the keys of its external mounts (CRIU's --external mnt[KEY]:PATH)
    for name in sorted(os.listdir(image_dir)):
        if name.startswith("mountpoints-") and name.endswith(".img"):
            for m in load(name):
                if m.get("ext_key"):
                    keys.add(m["ext_key"])
    return {"root_ids": root, "tasks": tasks, "external_mounts": sorted(keys)}


def main(argv):
    json.dump(_decode(argv[0]), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
