"""runc-grit's own commands (click): doctor, demo, inspect, export, import, config, gc,
cuda-checkpoint; and the harness that drives runc-grit the way containerd does."""
