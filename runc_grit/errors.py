"""The one domain error type, and the one place that maps errors to exit codes."""


class GritError(Exception):
    """Any failure runc-grit reports. ``kind`` picks the exit code; the message is one line."""

    kind = "error"

    def __init__(self, message, kind=None, exit_code=None):
        super().__init__(" ".join(str(message).split()))
        if kind is not None:
            self.kind = kind
        self._exit_code = exit_code

    @property
    def message(self):
        return self.args[0]


# kind -> process exit code. runc itself exits 1 on every error; so do we, except where the
# delegate runtime's own exit code is passed on (kind "runtime", exit_code set).
EXIT_CODES = {
    "error": 1,
    "config": 1,
    "usage": 1,
    "spec": 1,
    "source": 1,       # restore source refused (roots, symlinks, images, manifest)
    "restore": 1,      # restore attempted and failed; cleaned up
    "checkpoint": 1,
    "runtime": 1,
    "gpu": 1,
    "blocker": 2,      # doctor found a blocker
    "not-found": 127,  # delegate runtime binary missing
}


def exit_code(exc):
    """Exit code for an exception reaching the top of a runc-grit command."""
    if isinstance(exc, GritError):
        if exc._exit_code is not None:
            return exc._exit_code
        return EXIT_CODES.get(exc.kind, 1)
    return 1
