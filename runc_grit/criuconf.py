"""The per-container CRIU config that runc hands to CRIU (annotation org.criu.config).

It names runc-grit's action script and carries defaults that make container checkpoints
work: external mounts auto-detected (GPU driver mounts, volumes), established TCP, external
unix sockets, file locks. The CRIU config the bundle already named (or the node's
/etc/criu/runc.conf, which runc reads only when no annotation is set) is kept: its lines come
first, ours after. CRIU allows several action scripts, so one of the bundle's is kept too.
"""
import os

from runc_grit.fsutil import write_atomic

DEFAULT_OPTIONS = (
    "external mnt[]",
    "tcp-established",
    "ext-unix-sk",
    "file-locks",
)
NODE_DEFAULT = "/etc/criu/runc.conf"


def inherited(spec_criu_config, own_path):
    """Path of the CRIU config to keep: the bundle's, else the node default, else None."""
    if spec_criu_config and spec_criu_config != own_path:
        return spec_criu_config
    if not spec_criu_config and os.path.isfile(NODE_DEFAULT):
        return NODE_DEFAULT
    return None


def render(container_id, hook_script, extra_options=(), inherited_path=None, inherited_text=""):
    lines = ["# runc-grit: CRIU config of container %s (written at create)" % container_id]
    if inherited_path:
        lines.append("# kept from %s:" % inherited_path)
        lines += [ln.rstrip() for ln in inherited_text.splitlines() if ln.strip()]
        lines.append("# runc-grit:")
    lines.append("action-script %s" % hook_script)
    lines += list(DEFAULT_OPTIONS)
    lines += [o.strip() for o in extra_options if o.strip()]
    return "\n".join(lines) + "\n"


def write(path, container_id, hook_script, extra_options, spec_criu_config):
    keep = inherited(spec_criu_config, path)
    text = ""
    if keep:
        with open(keep) as f:
            text = f.read()
    write_atomic(path, render(container_id, hook_script, extra_options, keep, text), mode=0o644)
    return path
