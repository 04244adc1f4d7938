"""nvidia-container-runtime: runc's CRIU flow. It edits create's spec (GPU devices, hooks)
and runs runc; runc-grit's spec change reaches it first."""
from runc_grit.runtimes.runc import Runc


class NvidiaContainerRuntime(Runc):
    name = "nvidia-container-runtime"
    nvidia_runtime = True
