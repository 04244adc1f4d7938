"""`start`, `delete` (and `state`) of a container runc-grit holds state for.

start: after a restore-on-create the process already runs (runc restore --detach), so the
first `start` succeeds without calling the runtime. Any other start goes to the runtime.
delete: the runtime deletes the container, then runc-grit removes its state.
A runsc container that a checkpoint stopped (its sandbox killed while paused) is reported
"stopped" by `state`, and deleted with --force: runsc itself still calls it paused. The
`delete` of a container crun removed at its checkpoint succeeds (runtimes.crun).
"""
import os

from runc_grit import argv as _argv
from runc_grit import errors
from runc_grit.errors import GritError, RestoreError
from runc_grit.node import config as _config
from runc_grit.node import procs
from runc_grit.node.state import STOPPED_MARK, ContainerState
from runc_grit.oci.runclog import Logger
from runc_grit.runtimes.selection import for_invocation


def dispatch(inv, args):
    log = Logger.from_invocation(inv)
    try:
        conf = _config.load()
        st = ContainerState(conf.state_dir, inv.args[0])
        rt = for_invocation(conf, inv).delegate
        if inv.command == "start":
            return start(st, rt, args, log)
        if inv.command == "state":
            return state(st, rt, args)
        if (st.read() or {}).get("removed_by_checkpoint") and rt.state(st.id) is None:
            st.remove()  # crun removed it at its checkpoint (runtimes.crun)
            return 0
        if os.path.exists(st.path(STOPPED_MARK)) and not inv.has("force"):
            args = _argv.Invocation(inv.globals, inv.command, inv.flags + [("force", None)],
                                    inv.args).render()
        return delete(st, rt, args)
    except GritError as e:
        log.error(e.message)
        return errors.exit_code(e)
    except Exception as e:  # noqa: BLE001 - one line in --log, never a traceback on stdio
        log.error("internal error: %s: %s" % (type(e).__name__, e))
        return 1


def start(st, rt, args, log):
    with st:
        rec = st.read() or {}
        marked = st.take_restored_mark()
        # no mark, but restored: runc-grit died after the restore and before marking it
        unmarked = (not marked and rec.get("restored_from") and not rec.get("started")
                    and rec.get("phase") in ("restoring", "restored"))
        if marked or unmarked:
            info = rt.state(st.id)
            if info is None:
                raise RestoreError("container %s: restored process is gone" % st.id)
            if marked or info.get("status") == "running":
                st.update(started=True)
                log.debug("start %s: restored container already running" % st.id)
                return 0
    os.execv(rt.path, rt.command(args))


def delete(st, rt, args):
    with st:
        rc, _ = procs.run(rt.command(args))
        if rc == 0 or rt.state(st.id) is None:
            st.remove()
        return rc


def state(st, rt, args):
    """The runtime's state, "stopped" for a runsc source a checkpoint ended."""
    import json
    import sys
    rc, out = procs.run(rt.command(args), capture=True, timeout=60)
    if rc != 0 or not out:
        return rc or 1
    try:
        info = json.loads(out)
    except ValueError:
        sys.stdout.buffer.write(out)
        return rc
    if info.get("status") == "paused" and not procs.alive(info.get("pid")):
        info["status"], info["pid"] = "stopped", 0
    sys.stdout.write(json.dumps(info, indent=2) + "\n")
    return 0
