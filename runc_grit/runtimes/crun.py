"""crun: runc's CRIU flow, when crun was built with CRIU (`crun --version` lists +CRIU).

One difference is handled here. crun bind-mounts every masked directory from one shared empty
dir, `<root>/.empty-directory`, and registers it with CRIU as an external mount whose key is
that path. crun 1.24-1.28 computes the key at a checkpoint from its *default* root
(/run/crun), not from `--root` (containers/crun#2239, fixed after 1.28), and at a restore from
the restoring call's `--root`; and even a fixed crun keys the mount on the source's root. Under
containerd (`--root /run/containerd/runc/<namespace>`), on another node or in another
namespace, the keys differ and CRIU fails: "mnt: No mapping for ... mountpoint". So a restore
maps every such key found in the images onto this call's empty dir, in the CRIU config.

Two more, so that containerd's shim gets what it gets from runc: runc's restore and
checkpoint flags crun lacks are dropped (its argp would exit 64 before writing --log), and the
`delete` of a container crun removed at its checkpoint succeeds (runc_grit.lifecycle): the
shim takes runc's failing delete for "already gone" by its words, "does not exist", and crun's
words differ, so the CRI task never finished exiting.
"""
import os
import re

from runc_grit.errors import UsageError
from runc_grit.node import procs
from runc_grit.runtimes.runc import Runc

# runc restore/checkpoint flags crun 1.8-1.28 does not take (its argp exits 64 on them):
# dropped. containerd's shim passes --no-subreaper to every restore; crun registers a
# namespace given by path (a pod's netns) with CRIU as external itself (--empty-ns's use).
CRUN_LACKS = {
    "restore": ("no-subreaper", "no-pivot", "pidfd-socket", "empty-ns", "auto-dedup"),
    "checkpoint": ("empty-ns", "auto-dedup", "status-fd"),
}
# ... and those whose meaning would be lost: refused, before anything runs
CRUN_REFUSES = {
    "restore": ("lazy-pages",),
    "checkpoint": ("lazy-pages", "page-server"),
}

EMPTY_DIR = ".empty-directory"
# a key that can be crun's shared empty dir: an absolute path of plain characters (it goes into
# a CRIU config line, so no spaces, newlines or ':')
_EMPTY_DIR_KEY = re.compile(r"^(/[A-Za-z0-9._+@-]+)+/\.empty-directory$")


def run_dir(globals_, environ=os.environ):
    """crun's state root for a call with these global flags (crun's get_run_directory)."""
    root = None
    for i, tok in enumerate(globals_):
        if tok == "--root" and i + 1 < len(globals_):
            root = globals_[i + 1]
        elif tok.startswith("--root="):
            root = tok.split("=", 1)[1]
    if root:
        return root
    xdg = environ.get("XDG_RUNTIME_DIR")
    return os.path.join(xdg, "crun") if xdg else "/run/crun"


def empty_dir_mappings(keys, here):
    """CRIU config lines mapping each of the image's external mount keys that is a crun
    empty dir (other than here, which crun maps itself) onto here."""
    return ["ext-mount-map %s:%s" % (k, here) for k in keys
            if k != here and _EMPTY_DIR_KEY.match(k) and ".." not in k.split("/")]


def crun_argv(inv, args):
    """args (parsed: inv) as crun takes them: restore and checkpoint without the runc flags
    crun lacks; GritError for one whose meaning would be lost."""
    lacks = CRUN_LACKS.get(inv.command)
    if not lacks:
        return list(args)
    for name in CRUN_REFUSES[inv.command]:
        if any(n == name for n, _ in inv.flags):
            raise UsageError("crun %s has no --%s" % (inv.command, name))
    flags = [(n, v) for n, v in inv.flags if n not in lacks]
    if len(flags) == len(inv.flags):
        return list(args)
    from runc_grit.argv import Invocation
    return Invocation(inv.globals, inv.command, flags, inv.args).render()


class Crun(Runc):
    name = "crun"
    # crun removes a container it checkpointed, as runc does; but then its `delete` fails
    # with "error opening file .../status", where containerd's shim looks for runc's
    # "does not exist" before it takes the task for gone
    deletes_checkpointed = True
    # its page images are verified before CRIU runs: no test shows crun's libcriu calls
    # running the CRIU config's action script at post-restore
    gates_resume = False
    decodes_mounts = True  # restore_criu_options: containers/crun#2239

    def translate(self, inv, args):
        return crun_argv(inv, args)

    def checkpoint_problem(self):
        try:
            out = procs.run([self.delegate.path, "--version"], capture=True, timeout=20)[1] or b""
        except OSError:
            out = b""
        if b"+CRIU" not in out:
            return ("%s was built without CRIU (its --version lists no +CRIU), so it cannot "
                    "checkpoint or restore; use runc, or a crun built with CRIU" % self.delegate.path)
        return None

    def restore_criu_options(self, req, image_dir):
        from runc_grit.checkpoint import criuimages
        if not any(n.startswith("mountpoints-") for n in os.listdir(image_dir)):
            return []  # no mount namespace in the images, no external mounts
        keys = criuimages.read(image_dir, req.conf, where="restore of %s" % req.cid,
                               decoder=req.decoder).get(
            "external_mounts") or []
        here = os.path.join(run_dir(self.delegate.globals), EMPTY_DIR)
        lines = empty_dir_mappings(keys, here)
        for ln in lines:
            req.log.debug("crun: %s (containers/crun#2239)" % ln)
        return lines
