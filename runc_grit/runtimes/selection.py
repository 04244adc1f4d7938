"""Which Runtime serves the configured delegate binary (by its name: runtimes.names), and
that binary with the flags every call of this invocation carries."""
from runc_grit.runtimes import names
from runc_grit.runtimes.delegate import Delegate


def select(delegate):
    """The Runtime for a delegate binary, by its name."""
    kind = names.kind(delegate.path)
    if kind == "runsc":
        from runc_grit.runtimes.runsc import Runsc as cls
    elif kind == "crun":
        from runc_grit.runtimes.crun import Crun as cls
    elif kind == "nvidia-container-runtime":
        from runc_grit.runtimes.nvidia import NvidiaContainerRuntime as cls
    else:
        from runc_grit.runtimes.runc import Runc as cls
    return cls(delegate)


def for_invocation(conf, inv):
    """The configured runtime, its binary carrying the config's runtime_flags and the
    caller's global flags (as this runtime takes them)."""
    delegate = Delegate(conf.runtime)
    runtime = select(delegate)
    delegate.flags = list(conf.runtime_flags)
    delegate.globals = delegate.flags + runtime.globals(inv.globals)
    return runtime
