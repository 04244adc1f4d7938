"""The runc-grit binary: decide, then exec the delegate runtime or handle the command.

The pass-through path imports only sys, posix (both built in) and two small modules of ours
beside this one (argv, fastconf); not even os, whose import is most of a site-less
interpreter's extra work, nor any subpackage (each costs ~0.15 ms: bench/passthrough.py).
passthrough() does nothing but exec.
Commands that runc-grit intercepts (create, run, restore, checkpoint; start and delete of a
container it holds state for) and its own operator commands load the heavier modules lazily.
"""
import posix
import sys

from runc_grit import argv as _argv
from runc_grit import fastconf

INTERCEPTED = frozenset(("create", "run", "restore", "checkpoint"))
# Operator commands: not runc's. `hook` is what the CRIU action script calls.
OPERATOR = frozenset(("doctor", "demo", "cuda-checkpoint", "inspect", "export", "import",
                      "config", "hook", "gc", "keygen", "key-id", "push", "pull"))
HELP = (["--help"], ["-h"], ["help"], ["h"])


def runtime_path(conf):
    """The delegate's path: $RUNC_GRIT_RUNTIME or the config's runtime, found on PATH
    (stepping over runc-grit itself, when it is installed under the runtime's name)."""
    rt = fastconf.getenv("RUNC_GRIT_RUNTIME") or conf["runtime"]
    return fastconf.which(rt, skip=sys.argv[0] if sys.argv else None) or rt


def passthrough(args, conf):
    """exec the delegate runtime with argv unchanged (after the config's runtime_flags, none
    by default). Does not return on success."""
    runtime = runtime_path(conf)
    try:
        posix.execv(runtime, [runtime] + list(conf.get("runtime_flags") or ()) + list(args))
    except OSError as e:
        from runc_grit.oci.runclog import Logger
        try:
            inv = _argv.parse(args)
        except _argv.ArgvError:
            inv = None
        Logger.from_invocation(inv).error("cannot run runtime %r: %s" % (runtime, e.strerror))
        return 127


def _valid_id(cid):
    return bool(cid) and "/" not in cid and cid not in (".", "..") and "\0" not in cid


def main(argv=None):
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["hook"]:  # the CRIU action script: no click
        from runc_grit.runtimes.actionscript import main as hook_main
        return hook_main()
    if args and args[0] in OPERATOR:
        from runc_grit.cli.main import operator_main
        return operator_main(args)
    if args in HELP:  # the runtime's help, then runc-grit's own commands
        from runc_grit.cli.main import full_help
        return full_help(runtime_path(fastconf.read() or fastconf.DEFAULTS), args)
    try:
        inv = _argv.parse(args)
    except _argv.ArgvError:
        inv = None  # let the runtime produce its own usage error
    cmd = inv.command if inv is not None else None
    if cmd in INTERCEPTED:  # loads and validates the full config itself
        from runc_grit.intercept import dispatch
        return dispatch(inv, args)
    conf = fastconf.read()
    if conf is None:
        from runc_grit.node.config import load
        conf = load().as_dict()
    if cmd in ("start", "delete", "state") and len(inv.args) == 1 and _valid_id(inv.args[0]):
        d = conf["state_dir"].rstrip("/") + "/" + inv.args[0]
        if fastconf.is_dir(d) if cmd != "state" else fastconf.exists(d + "/stopped-by-checkpoint"):
            from runc_grit.lifecycle import dispatch
            return dispatch(inv, args)
    return passthrough(args, conf)
