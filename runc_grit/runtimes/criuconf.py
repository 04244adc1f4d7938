"""The CRIU config that runc hands to CRIU (annotation org.criu.config), shared by containers.

It names runc-grit's action script and carries defaults that make container checkpoints
work: external mounts auto-detected (GPU driver mounts, volumes), established TCP, external
unix sockets, file locks, and the cgroup mode for restores (config ``restore_cgroups``).
CRIU's default mode ("soft") puts restored tasks back into the cgroup *path they were dumped
from*, since it ignores the new root runc passes for the unified (v2) hierarchy: the restored
container then runs in its source's cgroup, runc freezes the (empty) new cgroup at the next
checkpoint and CRIU fails with "Unseizable non-zombie". In "ignore" mode CRIU leaves cgroups
alone, and as runc starts CRIU inside the new container's cgroup, the tasks land there (what
runc >= 1.2 and crun do). At a dump, "ignore" only leaves the cgroup properties out of the
images, which such a restore does not read. But "ignore" also skips the cgroup namespace:
a container whose spec gives it one of its own gets the runtime's mode (cgroups_mode_for).

The bundle's config.json belongs to its caller, who may create many containers from it, one
after another or at once. So the file is the same for every container: its name is the
digest of its content (``<state_dir>/criu/<digest>.conf``), it is written once and never
changed or removed, and the annotation in config.json stays valid after any container is gone.
A CRIU config the bundle named itself (or the node's /etc/criu/runc.conf, which runc reads
only when no annotation is set) is kept: its lines come first, ours after, and its path is
remembered in the annotation ``grit.dev/criu-config`` so that a second create from the same
bundle finds it again. CRIU allows several action scripts, so one of the bundle's is kept too.
"""
import hashlib
import os

from runc_grit.fsutil import write_atomic
from runc_grit.oci.spec import CRIU_CONFIG_ANNOTATION as ANNOTATION

USER_ANNOTATION = "grit.dev/criu-config"  # the bundle's own CRIU config, kept
DEFAULT_OPTIONS = (
    "external mnt[]",
    "tcp-established",
    "ext-unix-sk",
    "file-locks",
)
NODE_DEFAULT = "/etc/criu/runc.conf"
SUBDIR = "criu"


def conf_dir(state_dir):
    return os.path.join(state_dir, SUBDIR)


HEADER = b"# runc-grit: the CRIU config of every container with this content"


def is_ours(path, state_dir):
    """A CRIU config runc-grit wrote: in this node's dir, or (another state_dir's, a test's)
    starting with our header."""
    if not path:
        return False
    if os.path.dirname(path) == conf_dir(state_dir):
        return True
    try:
        with open(path, "rb") as f:
            return f.read(len(HEADER)) == HEADER
    except OSError:
        return False


def user_config(annotations, state_dir):
    """The CRIU config the caller chose for this bundle: (path or "" or None).
    "" means "no config file at all" (runc's meaning of an empty annotation)."""
    named = annotations.get(ANNOTATION)
    if named is not None and not is_ours(named, state_dir):
        return named
    return annotations.get(USER_ANNOTATION)


def private_namespaces(spec):
    """The namespace types the spec gives the container of its own (no path to join)."""
    linux = (spec or {}).get("linux") or {}
    return {n.get("type") for n in linux.get("namespaces") or [] if not n.get("path")}


def cgroups_mode_for(configured, spec):
    """The CRIU cgroup mode for a container with this spec. CRIU restores a cgroup namespace
    as part of its cgroup work, which "ignore" skips: the restored tasks would land in the
    node's cgroup namespace. A spec with a cgroup namespace of its own gets the runtime's
    mode (runc's and crun's "soft") instead."""
    if configured == "ignore" and "cgroup" in private_namespaces(spec):
        return "runtime"
    return configured


def options(cgroups_mode):
    """Our lines besides the action script: the defaults and the restore cgroup mode
    (config ``restore_cgroups``; "runtime": none)."""
    lines = list(DEFAULT_OPTIONS)
    if cgroups_mode and cgroups_mode != "runtime":
        # CRIU turns each line into --key=value words; an optional argument needs the '='
        lines.append("manage-cgroups=%s" % cgroups_mode)
    return lines


def render(hook_script, extra_options=(), inherited_path=None, inherited_text="",
           cgroups_mode="ignore"):
    lines = [HEADER.decode()]
    if inherited_path:
        lines.append("# kept from %s:" % inherited_path)
        lines += [ln.rstrip() for ln in inherited_text.splitlines() if ln.strip()]
        lines.append("# runc-grit:")
    lines.append("action-script %s" % hook_script)
    lines += options(cgroups_mode)
    lines += [o.strip() for o in extra_options if o.strip()]
    return "\n".join(lines) + "\n"


def content(hook_script, extra_options, user_path, cgroups_mode):
    """The bytes of the CRIU config. user_path: the bundle's own config (None: the node
    default, if any; "": none)."""
    keep, text = None, ""
    if user_path is None and os.path.isfile(NODE_DEFAULT):
        keep = NODE_DEFAULT
    elif user_path:
        keep = user_path
    if keep:
        try:
            with open(keep) as f:
                text = f.read()
        except OSError:
            text = ""
    return render(hook_script, extra_options, keep, text, cgroups_mode).encode()


def ensure(state_dir, data):
    """The path of the shared CRIU config holding data, written if it is not there yet."""
    path = os.path.join(conf_dir(state_dir), hashlib.sha256(data).hexdigest()[:20] + ".conf")
    try:
        with open(path, "rb") as f:
            if f.read() == data:
                return path
    except OSError:
        pass
    os.makedirs(conf_dir(state_dir), mode=0o755, exist_ok=True)
    write_atomic(path, data, mode=0o644)
    return path


def recreate(path, state_dir, data):
    """A container names one of our configs that is gone (state_dir wiped): CRIU would run
    without it, silently. Write it again, at the name the container knows."""
    if is_ours(path, state_dir) and not os.path.exists(path):
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        write_atomic(path, data, mode=0o644)
        return True
    return False
