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
from runc_grit.errors import GritError
from runc_grit.node import config as _config
from runc_grit.node.state import ID_RE, ContainerState
from runc_grit.oci import spec as _spec
from runc_grit.oci.runclog import Logger
from runc_grit.runtimes import base, selection


def dispatch(inv, args):
    log = Logger.from_invocation(inv)
    try:
        conf = _config.load()
        req = base.Request(inv, args, conf, log)
        if len(inv.args) != 1 or not ID_RE.match(req.cid or "") or req.cid in (".", ".."):
            if inv.command in ("create", "run"):
                _refuse_if_restore(req, "%s needs one container id, got %r"
                                   % (inv.command, inv.args))
            rt = selection.for_invocation(conf, inv).rt
            os.execv(rt.path, rt.command(args))  # the runtime reports the usage error
        req.runtime = selection.for_invocation(conf, inv)
        req.st = ContainerState(conf.state_dir, req.cid)
        return HANDLERS[inv.command](req)
    except GritError as e:
        log.error(e.message)
        return errors.exit_code(e)
    except Exception as e:  # noqa: BLE001 - one line in --log, never a traceback on stdio
        log.error("internal error: %s: %s" % (type(e).__name__, e))
        return 1


def do_create(req):
    req.spec = _spec.load(req.bundle, req.spec_name)
    req.restore = source.requested(_spec.annotations(req.spec), req.conf.on_restore_failure)
    st = req.st
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
    req.spec = _spec.load(req.bundle, req.spec_name)
    with req.st:
        if not _claim_state(req):
            req.exec(req.runtime.translate(req.inv, req.args))
        return req.runtime.restore(req)


def do_checkpoint(req):
    req.info = req.rt.state(req.cid)
    if req.info is None:  # the runtime reports the missing container
        req.exec(req.runtime.translate(req.inv, req.args))
    return req.runtime.checkpoint(req)


HANDLERS = {"create": do_create, "run": do_create, "restore": do_restore,
            "checkpoint": do_checkpoint}


def _claim_state(req):
    """A fresh state dir for a new container. False if the id is already a live container."""
    st = req.st
    if st.read() is not None and req.rt.state(st.id) is not None:
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
        raise GritError("%s asks for a restore from %s, but runc-grit cannot understand this "
                        "command line (%s); refused"
                        % (os.path.join(req.bundle, req.spec_name), ask.path, why), kind="usage")
