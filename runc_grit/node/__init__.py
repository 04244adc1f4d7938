"""This node: the configuration, runc-grit's per-container state, child processes and the crash
guard, and `doctor`."""
