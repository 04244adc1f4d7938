"""A restored container's GPU device nodes: those its spec grants, no others.

CRIU brings back the source's /dev (a tmpfs, dumped with its contents): the source GPU's
/dev/nvidiaN is there, whatever the new spec grants, and the destination's may be missing
(the driver then refuses a remap onto it). Before the restored process runs again (CRIU's
post-restore action, tasks still stopped), /dev is made to hold the spec's /dev/nvidiaN nodes
and no other: missing ones are made, others removed. The work is done from the node through
the init's /proc/<pid>/root/dev, opened with O_NOFOLLOW (a /dev that is a symlink is
refused), with the *at calls: nothing of the container's image is run.
"""
import os
import stat

from runc_grit.errors import GpuError
from runc_grit.gpu import grants


NVIDIA_MAJOR = 195


def wanted(spec, nvidia_runtime=False, inventory=None):
    """{name in /dev: OCI device} of the GPU nodes the spec grants: its linux.devices
    /dev/nvidiaN, and (CDI, NVIDIA_VISIBLE_DEVICES with the nvidia runtime or hook: gpu.grants)
    the node's GPUs those name, by their minor (inventory: a callable returning
    discovery.inventory(), asked only then). Pure but for inventory."""
    want = grants.gpu_devices(spec)
    g = grants.of_spec(spec, nvidia_runtime)
    if (g.all or g.names) and inventory is not None:
        inv = inventory() or {}
        for dev in g.select(inv.get("devices") or []):
            minor = int(dev.get("minor", dev["index"]))
            want.setdefault("nvidia%d" % minor, {"path": "/dev/nvidia%d" % minor, "type": "c",
                                                 "major": NVIDIA_MAJOR, "minor": minor,
                                                 "fileMode": 0o666, "uid": 0, "gid": 0})
    return want


def plan(want, present):
    """(create, remove): the wanted devices missing from present (names in /dev), and the
    present GPU nodes not wanted. Pure."""
    create = [want[n] for n in sorted(want) if n not in present]
    remove = sorted(n for n in present if grants.is_gpu_node(n) and n not in want)
    return create, remove


def sync(init_pid, spec, nvidia_runtime=False, inventory=None):
    """Apply plan() to the /dev of the restored init init_pid. Returns (made, removed)."""
    want = wanted(spec, nvidia_runtime, inventory)
    try:
        root = os.open("/proc/%d/root" % int(init_pid), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fd = os.open("dev", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                         dir_fd=root)
        finally:
            os.close(root)
    except OSError as e:
        raise GpuError("the restored container's /dev: %s" % e.strerror) from None
    try:
        create, remove = plan(want, set(os.listdir(fd)))
        for name in remove:
            os.unlink(name, dir_fd=fd)
        for d in create:
            name = d["path"][5:]
            old = os.umask(0)  # the spec's fileMode, exactly
            try:
                os.mknod(name, stat.S_IFCHR | (int(d.get("fileMode", 0o666)) & 0o777),
                         os.makedev(int(d["major"]), int(d["minor"])), dir_fd=fd)
            finally:
                os.umask(old)
            os.chown(name, int(d.get("uid", 0)), int(d.get("gid", 0)), dir_fd=fd,
                     follow_symlinks=False)
        return [d["path"] for d in create], ["/dev/" + n for n in remove]
    except OSError as e:
        raise GpuError("the restored container's GPU device nodes: %s" % e) from None
    finally:
        os.close(fd)
