"""The dispatcher of the runc commands runc-grit changes: create/run, restore, checkpoint.

It builds the Request (runtimes.base), claims the container's state and hands the command to
the runtime (runtimes.base.Runtime: the same methods for runc, crun, nvidia-container-runtime
and runsc). What it cannot understand it passes through, except a create whose config.json
asks for a restore: that is refused, never started fresh.
"""
import os
import shutil

from runc_grit import errors
from runc_grit.checkpoint import source
from runc_grit.errors import GritError, UsageError
from runc_grit.node import config as _config
from runc_grit.node.state import ID_RE, ContainerState
from runc_grit.oci import spec as _spec
from runc_grit.oci.runclog import Logger
from runc_grit.runtimes import base, selection


def dispatch(inv, args):
    log = Logger.from_invocation(inv)
    try:
        conf = _config.load()
        cid = inv.container_id
        if len(inv.args) != 1 or not ID_RE.match(cid or "") or cid in (".", ".."):
            req = base.Request(inv, args, conf, log)
            if inv.command in ("create", "run"):
                _refuse_if_restore(req, "%s needs one container id, got %r"
                                   % (inv.command, inv.args))
            d = selection.for_invocation(conf, inv).delegate
            os.execv(d.path, d.command(args))  # the runtime reports the usage error
        return HANDLERS[inv.command](build(inv, args, conf, log))
    except GritError as e:
        log.error(e.message)
        return errors.exit_code(e)
    except Exception as e:  # noqa: BLE001 - one line in --log, never a traceback on stdio
        log.error("internal error: %s: %s" % (type(e).__name__, e))
        return 1


def build(inv, args, conf, log):
    """The whole Request of one command: the runtime, the container's state, and what the
    command needs besides (create/run/restore: the spec and the restore it asks for;
    checkpoint: the runtime's state of the container, None when it has none)."""
    req = base.Request(inv, args, conf, log, runtime=selection.for_invocation(conf, inv))
    req.state = ContainerState(conf.state_dir, req.cid)
    if inv.command in ("create", "run", "restore"):
        req.spec = _spec.load(req.bundle, req.spec_name)
    if inv.command in ("create", "run"):
        req.restore = source.requested(_spec.annotations(req.spec), conf.on_restore_failure)
    elif inv.command == "checkpoint":
        req.runtime_state = req.delegate.state(req.cid)
    return req


def do_create(req):
    st = req.state
    st.lock()
    try:
        if not _claim_state(req):
            st.unlock()
            req.exec(req.runtime.translate(req.inv, req.args))  # "container exists"
        if req.restore is None:
            return req.runtime.create(req)
        return req.runtime.restore_on_create(req)
    finally:
        st.unlock()


def do_restore(req):
    with req.state:
        if not _claim_state(req):
            req.exec(req.runtime.translate(req.inv, req.args))
        return req.runtime.restore(req)


def do_checkpoint(req):
    if req.runtime_state is None:  # the runtime reports the missing container
        req.exec(req.runtime.translate(req.inv, req.args))
    return req.runtime.checkpoint(req)


HANDLERS = {"create": do_create, "run": do_create, "restore": do_restore,
            "checkpoint": do_checkpoint}


def _claim_state(req):
    """A fresh state dir for a new container. False if the id is already a live container."""
    st = req.state
    if st.read() is not None and req.delegate.state(st.id) is not None:
        return False
    for name in os.listdir(st.dir):
        if name != "lock":
            p = st.path(name)
            if os.path.isdir(p):
                shutil.rmtree(p, ignore_errors=True)
            else:
                os.unlink(p)
    return True


def _refuse_if_restore(req, why):
    """An argv runc-grit cannot understand is never a silent fresh start: when its bundle
    asks for a restore, it is refused."""
    try:
        ask = source.requested(_spec.annotations(_spec.load(req.bundle, req.spec_name)),
                               req.conf.on_restore_failure)
    except GritError:
        return
    if ask is not None:
        raise UsageError("%s asks for a restore from %s, but runc-grit cannot understand this "
                        "command line (%s); refused"
                        % (os.path.join(req.bundle, req.spec_name), ask.path, why))
