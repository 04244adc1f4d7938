"""After a restore whose tasks run: is it a restore of this container? Their CUDA state
resumed, a read-only root read-only, and every namespace the spec gives the container its own
not shared with the node."""
import os

from runc_grit.gpu import postresume
from runc_grit.node import rootmount
from runc_grit.runtimes import criuconf

# OCI namespace type -> /proc/<pid>/ns name
NS_FILES = {"pid": "pid", "network": "net", "ipc": "ipc", "uts": "uts", "mount": "mnt",
            "user": "user", "cgroup": "cgroup", "time": "time"}


def restored_problem(st, pairs, info, spec):
    """Why a restore whose tasks run is not a restore of this container (or None): their CUDA
    state still checkpointed (CRIU ignores a failing post-resume), or a namespace the spec
    gives the container of its own shared with the node."""
    why = postresume.resume_failure(st, pairs is not None)
    if why:
        return "CUDA state not resumed: %s" % why
    pid = (info or {}).get("pid")
    if pid and rootmount.wanted(spec) and not rootmount.is_readonly(pid):
        return "the restored container's root is writable; its spec makes it read-only"
    return shared_namespaces(pid, spec)


def shared_namespaces(pid, spec):
    """Why the restored init pid is not isolated as spec says (a namespace the spec gives the
    container of its own that the init shares with runc-grit, i.e. the node), or None."""
    if not pid:
        return None
    shared = []
    for ns in sorted(criuconf.private_namespaces(spec)):
        name = NS_FILES.get(ns)
        try:
            if name and os.readlink("/proc/%d/ns/%s" % (pid, name)) == \
                    os.readlink("/proc/self/ns/%s" % name):
                shared.append(ns)
        except OSError:
            continue
    if shared:
        return ("the restored process runs in the node's %s namespace%s, where its spec gives "
                "it its own" % ("/".join(shared), "s" if len(shared) > 1 else ""))
    return None
