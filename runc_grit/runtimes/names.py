"""Which runtime a delegate binary is, decided once from its name (no imports: the
checkpoint checks ask it too).

  runc, nvidia-container-runtime   CRIU images; GPU steps in CRIU's action scripts (the
                                   NVIDIA runtime edits create's spec, then runs runc)
  crun                             the same, when built with CRIU (`crun --version`: +CRIU)
  runsc (gVisor)                   its own images (checkpoint.img); GPU steps inside the
                                   sandbox, around the runtime call
Any other name is taken to be runc-compatible.
"""
import os

# (name found in the binary's base name, image format), in the order they are tried
KINDS = (("runsc", "gVisor"), ("crun", "CRIU"), ("nvidia-container-runtime", "CRIU"))


def kind(path):
    """'runsc', 'crun', 'nvidia-container-runtime' or 'runc'."""
    base = os.path.basename(path or "")
    for name, _ in KINDS:
        if name in base:
            return name
    return "runc"


def image_format(path):
    """The images a runtime of this name writes and reads: 'CRIU' or 'gVisor'."""
    return dict(KINDS).get(kind(path), "CRIU")
