"""The per-container CRIU config that runc hands to CRIU (annotation org.criu.config).

It names runc-grit's action script and carries defaults that make container checkpoints
work: external mounts auto-detected (GPU driver mounts, volumes), established TCP, external
unix sockets, file locks. The CRIU config the bundle already named (or the node's
/etc/criu/runc.conf, which runc reads only when no annotation is set) is kept: its lines come
first, ours after. CRIU allows several action scripts, so one of the bundle's is kept too.

A restore gets a few more lines, in a block at the end that is removed once the container is
restored (the same file serves its later dumps). The main one is the cgroup mode: CRIU's
default ("soft") puts restored tasks back into the cgroup *path they were dumped from*, since
it ignores the new root runc passes for the unified (v2) hierarchy. The restored container
then runs in its source's cgroup, not its own: runc freezes the (empty) new cgroup at the
next checkpoint, CRIU never seizes the tasks and fails with "Unseizable non-zombie"; with a
live source on the same node, both share one cgroup. In "ignore" mode CRIU leaves cgroups
alone, and as runc starts CRIU inside the new container's cgroup, the tasks are restored
there (what runc >= 1.2 and crun do).
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
RESTORE_MARK = "# runc-grit: for the restore only (removed once restored):"


def inherited(spec_criu_config, own_path):
    """Path of the CRIU config to keep: the bundle's, else the node default, else None."""
    if spec_criu_config and spec_criu_config != own_path:
        return spec_criu_config
    if not spec_criu_config and os.path.isfile(NODE_DEFAULT):
        return NODE_DEFAULT
    return None


def restore_options(cgroups_mode):
    """The restore-only lines for config ``restore_cgroups`` ("runtime": none)."""
    if cgroups_mode and cgroups_mode != "runtime":
        # CRIU turns each line into --key=value words; an optional argument needs the '='
        return ("manage-cgroups=%s" % cgroups_mode,)
    return ()


def render(container_id, hook_script, extra_options=(), inherited_path=None, inherited_text="",
           restore_lines=()):
    lines = ["# runc-grit: CRIU config of container %s (written at create)" % container_id]
    if inherited_path:
        lines.append("# kept from %s:" % inherited_path)
        lines += [ln.rstrip() for ln in inherited_text.splitlines() if ln.strip()]
        lines.append("# runc-grit:")
    lines.append("action-script %s" % hook_script)
    lines += list(DEFAULT_OPTIONS)
    lines += [o.strip() for o in extra_options if o.strip()]
    if restore_lines:
        lines.append(RESTORE_MARK)
        lines += list(restore_lines)
    return "\n".join(lines) + "\n"


def write(path, container_id, hook_script, extra_options, spec_criu_config, restore_lines=()):
    keep = inherited(spec_criu_config, path)
    text = ""
    if keep:
        with open(keep) as f:
            text = f.read()
    write_atomic(path, render(container_id, hook_script, extra_options, keep, text,
                              restore_lines), mode=0o644)
    return path


def drop_restore_lines(path):
    """After a restore: the container's later dumps use the file without the restore block."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return
    if RESTORE_MARK in text:
        write_atomic(path, text.split(RESTORE_MARK, 1)[0], mode=0o644)
