"""The delegate runtimes behind one protocol (base.Runtime): runc with CRIU (runc), crun, the
NVIDIA runtime, gVisor (runsc); the delegate binary (delegate), which class serves it
(names, selection), the shared CRIU config (criuconf) and CRIU's action script (actionscript)."""
