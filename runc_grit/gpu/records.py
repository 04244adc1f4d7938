"""What the GPU phases of one container did, in its state dir.

cuda.json: the CUDA processes the pre-dump hook found, locked and checkpointed (the rollback
reads it to resume them), the GPUs they used (the manifest records them), timings.
cuda-<action>.done: the init pid a hook action finished for. runc runs every hook twice; the
second run finds the marker (the shell script reads it too) and does nothing.
cuda-restore.json: what the post-resume hook restored.
"""
import os

RECORD = "cuda.json"


def st_path(st, name=RECORD):
    return os.path.join(st.dir, name) if st is not None else None


def read_record(st):
    if st is None:
        return {}
    return st.read(RECORD, default={}) or {}


def write_record(st, rec):
    if st is not None:
        st.write(rec, RECORD)


def reset_records(st):
    for name in (RECORD, "cuda-pre-dump.done", "cuda-post-resume.done"):
        try:
            os.unlink(os.path.join(st.dir, name))
        except FileNotFoundError:
            pass


def marker(st, action):
    return st_path(st, "cuda-%s.done" % action)


def done(st, action, init_pid):
    p = marker(st, action)
    if not p:
        return False
    try:
        with open(p) as f:
            return f.read().strip() == str(init_pid)
    except OSError:
        return False


def mark(st, action, init_pid):
    p = marker(st, action)
    if p:
        with open(p, "w") as f:
            f.write("%s\n" % init_pid)


def hook_timings(st):
    return {k: v for k, v in (read_record(st).get("timings") or {}).items()
            if isinstance(v, (int, float))}


def manifest_section(st):
    rec = read_record(st)
    procs = rec.get("processes") or {}
    if not procs:
        return None
    return {
        "driver_version": rec.get("driver_version"),
        "devices": rec.get("devices") or [],
        "processes": [{"pid": int(p), "vram_bytes": v.get("vram_bytes"),
                       "devices": v.get("devices") or []} for p, v in sorted(procs.items())],
    }
