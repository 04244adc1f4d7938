"""GPU containers for the device tests and bench: host /usr, /opt, /etc read-only, the
NVIDIA device nodes, the app dir and a log dir; the host's network namespace."""
import glob
import json
import os

APP_DIR = os.path.dirname(os.path.abspath(__file__))


def gpu_spec(args, env, logs, annotations=None, devices=None):
    from runc_grit.oci.bundle import make_spec
    spec = make_spec(args, annotations)
    spec["root"]["readonly"] = True
    spec["process"]["env"] = ["PATH=" + os.environ.get("PATH", "/usr/bin:/bin"),
                              "LD_LIBRARY_PATH=" + os.environ.get("LD_LIBRARY_PATH", ""),
                              "HOME=/tmp"] + ["%s=%s" % kv for kv in env.items()]
    spec["process"]["capabilities"] = {k: ["CAP_AUDIT_WRITE", "CAP_KILL"] for k in
                                       ("bounding", "effective", "permitted", "ambient")}
    for src, dst, rw in (("/usr", "/usr", False), ("/opt", "/opt", False), ("/etc", "/etc", False),
                         (APP_DIR, "/app", False), (logs, "/logs", True)):
        spec["mounts"].append({"destination": dst, "type": "bind", "source": src,
                               "options": ["rbind", "rw" if rw else "ro"]})
    spec["mounts"].append({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                           "options": ["nosuid", "nodev"]})
    devs = []
    for d in sorted(glob.glob("/dev/nvidia*")):
        if os.path.isdir(d):
            continue
        if devices is not None and d[11:].isdigit() and int(d[11:]) not in devices:
            continue
        st = os.stat(d)
        devs.append({"path": d, "type": "c", "major": os.major(st.st_rdev),
                     "minor": os.minor(st.st_rdev), "fileMode": 0o666, "uid": 0, "gid": 0})
    spec["linux"]["devices"] = devs
    spec["linux"]["resources"]["devices"] = [{"allow": True, "access": "rwm"}]
    spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"] if n["type"] != "network"]
    return spec


def make_gpu_bundle(path, logs, log_name, env, annotations=None, devices=None, args=None):
    """devices: GPU indices (/dev/nvidiaN) the container gets; None: all. args: the process
    (default: app.py logging to /logs/log_name)."""
    os.makedirs(os.path.join(path, "rootfs"), exist_ok=True)
    r = os.path.join(path, "rootfs")
    for d in ("usr", "opt", "etc", "proc", "dev", "sys", "tmp", "app", "logs", "run"):
        os.makedirs(os.path.join(r, d), exist_ok=True)
    for d in ("lib", "lib64", "bin", "sbin"):
        if os.path.islink("/" + d) and not os.path.lexists(os.path.join(r, d)):
            os.symlink(os.readlink("/" + d), os.path.join(r, d))
    spec = gpu_spec(args or ["python3", "/app/app.py", "/logs/" + log_name], env, logs,
                    annotations, devices)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(spec, f, indent=1)
    return path


def wait_steps(path, n, timeout=120):
    """Wait until the app log at path reaches step n; returns the highest step logged."""
    import time
    end = time.time() + timeout
    while time.time() < end:
        s = read_steps(path)
        if s and max(s) >= n:
            return max(s)
        time.sleep(0.2)
    raise AssertionError("%s did not reach step %d: %s" % (path, n, max(read_steps(path) or [0])))


def read_steps(path):
    """{step: (val, pid)} from an app log; later lines win."""
    out = {}
    try:
        with open(path) as f:
            for ln in f:
                parts = dict(kv.split("=", 1) for kv in ln.split() if "=" in kv)
                if "step" in parts:
                    out[int(parts["step"])] = (parts["val"], int(parts["pid"]))
    except OSError:
        pass
    return out
