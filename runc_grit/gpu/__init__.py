"""CUDA state across a checkpoint, by phase.

  predump       before the dump: lock, then checkpoint, every CUDA process
  postresume    after the resume: restore (remapping GPUs), unlock, check they run
  rollback      after a failed dump or --leave-running: every process resumed again
  destination   before a restore: can this node host it, onto which GPUs
  sandbox       gVisor: the same two steps inside the sandbox, through `runsc exec`
Beneath them: discovery (which pids, which GPUs), records (what a phase did), the helper
(the driver API, or a binary with cuda-checkpoint's CLI), the driver bindings, and the
`runc-grit cuda-checkpoint` command (cli).
"""
