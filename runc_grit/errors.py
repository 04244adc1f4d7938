"""The domain errors, one class per kind of failure, and the one table that maps them to exit
codes.

runc itself exits 1 on every error; so does runc-grit, except where the delegate runtime's own
exit code is passed on (RuntimeFailure, or any error given exit_code), a doctor blocker (2) and
a missing runtime binary (127). ``GritError(message, kind="source")`` still works: it makes the
class of that kind (SourceError).
"""


class GritError(Exception):
    """Any failure runc-grit reports. Its class picks the exit code (``kind`` names it); the
    message is one line."""

    kind = "error"

    def __new__(cls, message=None, kind=None, exit_code=None):
        if kind is not None and kind in KINDS and not issubclass(cls, KINDS[kind]):
            cls = KINDS[kind]
        return super().__new__(cls)

    def __init__(self, message, kind=None, exit_code=None):
        super().__init__(" ".join(str(message).split()))
        if kind is not None and kind != type(self).kind:
            self.kind = kind
        self._exit_code = exit_code

    @property
    def message(self):
        return self.args[0]

    @property
    def exit_code(self):
        """The process exit code this error ends a runc-grit command with."""
        if self._exit_code is not None:
            return self._exit_code
        return EXIT_CODES.get(self.kind, 1)


class ConfigError(GritError):
    """runc-grit's config (or a setting it names) is invalid."""
    kind = "config"


class UsageError(GritError):
    """A command line runc-grit (or the runtime under it) cannot do what it asks."""
    kind = "usage"


class SpecError(GritError):
    """A bundle's config.json is missing or malformed."""
    kind = "spec"


class SourceError(GritError):
    """A restore source refused: roots, symlinks, images, manifest, signature, privileges."""
    kind = "source"


class RestoreError(GritError):
    """A restore attempted and failed (cleaned up)."""
    kind = "restore"


class CheckpointError(GritError):
    """A checkpoint refused or failed; the container was not checkpointed."""
    kind = "checkpoint"


class RegistryError(GritError):
    """An OCI registry refused or failed a push or pull (auth, TLS, a missing or bad blob,
    the deadline); nothing of it is left on this node."""
    kind = "registry"


class RuntimeFailure(GritError):
    """The delegate runtime's own run failed; its exit code is passed on."""
    kind = "runtime"


class GpuError(GritError):
    """A GPU step (CUDA checkpoint, device mapping, driver) failed or cannot be done."""
    kind = "gpu"


class BlockerError(GritError):
    """doctor found something this node lacks that checkpoint/restore needs."""
    kind = "blocker"


class NotFoundError(GritError):
    """The delegate runtime's binary is not on PATH."""
    kind = "not-found"


KINDS = {c.kind: c for c in (ConfigError, UsageError, SpecError, SourceError, RestoreError,
                             CheckpointError, RegistryError, RuntimeFailure, GpuError, BlockerError,
                             NotFoundError)}

# The one exit-code table: class kind -> process exit code.
EXIT_CODES = {
    "error": 1,
    "config": 1,
    "usage": 1,
    "spec": 1,
    "source": 1,
    "restore": 1,
    "checkpoint": 1,
    "registry": 1,
    "runtime": 1,      # unless exit_code: the runtime's own
    "gpu": 1,
    "blocker": 2,
    "not-found": 127,
}


def exit_code(exc):
    """Exit code for an exception reaching the top of a runc-grit command."""
    if isinstance(exc, GritError):
        return exc.exit_code
    return 1
