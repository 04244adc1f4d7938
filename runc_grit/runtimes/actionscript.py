"""`runc-grit hook`: what CRIU's action script runs for pre-dump and post-resume.

Inputs come from CRIU (CRTOOLS_SCRIPT_ACTION, CRTOOLS_INIT_PID, CRTOOLS_IMAGE_DIR) and from
runc-grit, which started the runtime (RUNC_GRIT_STATE: the container's state dir,
RUNC_GRIT_CONFIG, RUNC_GRIT_IMAGE_DIR). A non-zero exit makes CRIU abort the dump (tasks keep
running) or fail the restore (runc-grit then removes the half-restored container).
Each call appends one line to hooks.jsonl in the state dir.
"""
import json
import os
import sys
import time

from runc_grit.errors import GritError
from runc_grit.gpu import postresume, predump
from runc_grit.node import config as _config
from runc_grit.node.state import ContainerState


def _state():
    d = os.environ.get("RUNC_GRIT_STATE")
    if not d:
        return None
    return ContainerState(os.path.dirname(d), os.path.basename(d))


def _journal(st, rec):
    if st is None:
        return
    try:
        with open(os.path.join(st.dir, "hooks.jsonl"), "a") as f:
            f.write(json.dumps(rec) + "\n")
    except OSError:
        pass


def _load_config():
    """The config runc-grit validated moments ago (RUNC_GRIT_HOOK_CONF), else the file."""
    raw = os.environ.get("RUNC_GRIT_HOOK_CONF")
    if raw:
        try:
            return _config.Config(json.loads(raw), os.environ.get("RUNC_GRIT_CONFIG"))
        except ValueError:
            pass
    return _config.load(os.environ.get("RUNC_GRIT_CONFIG") or None)


def main():
    action = os.environ.get("CRTOOLS_SCRIPT_ACTION", "")
    init_pid = os.environ.get("CRTOOLS_INIT_PID", "")
    st = _state()
    t0 = time.time()
    rec = {"action": action, "init_pid": init_pid, "t": t0, "pid": os.getpid()}
    try:
        conf = _load_config()
        if action == "pre-dump" and init_pid:
            rec["cuda"] = predump.pre_dump(int(init_pid), st, conf)
        elif action == "post-restore" and init_pid:
            if os.environ.get("RUNC_GRIT_READONLY_ROOT"):
                from runc_grit.node import rootmount
                rec["root_made_readonly"] = rootmount.make_readonly(int(init_pid))
            if os.environ.get("RUNC_GRIT_GPU_NODES"):
                rec["gpu_nodes"] = postresume.post_restore(int(init_pid), st)
        elif action == "post-resume" and init_pid:
            image_dir = os.environ.get("RUNC_GRIT_IMAGE_DIR") or os.environ.get("CRTOOLS_IMAGE_DIR")
            pairs = os.environ.get("RUNC_GRIT_DEVICE_PAIRS")
            rec["cuda"] = postresume.post_resume(int(init_pid), st, conf, image_dir,
                                          pairs=json.loads(pairs) if pairs else None)
    except GritError as e:
        rec.update(error=e.message, dt=time.time() - t0)
        _journal(st, rec)
        sys.stderr.write("runc-grit hook %s: %s\n" % (action, e.message))
        return 1
    rec["dt"] = time.time() - t0
    _journal(st, rec)
    return 0
