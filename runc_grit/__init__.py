"""runc-grit: a drop-in OCI runtime wrapper that checkpoints and restores (GPU) containers."""

__version__ = "0.1.0"
