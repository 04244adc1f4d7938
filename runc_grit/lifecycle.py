"""`start` and `delete` of a container runc-grit holds state for.

start: after a restore-on-create the process already runs (runc restore --detach), so the
first `start` succeeds without calling the runtime. Any other start goes to the runtime.
delete: the runtime deletes the container, then runc-grit removes its state.
"""
import os

from runc_grit import config as _config
from runc_grit import errors, procs
from runc_grit.errors import GritError
from runc_grit.runclog import Logger
from runc_grit.runtime import Runtime
from runc_grit.state import ContainerState


def dispatch(inv, args):
    log = Logger.from_invocation(inv)
    try:
        conf = _config.load()
        st = ContainerState(conf.state_dir, inv.args[0])
        rt = Runtime.for_invocation(conf, inv)
        if inv.command == "start":
            return start(st, rt, args, log)
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
                raise GritError("container %s: restored process is gone" % st.id, kind="restore")
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
