"""crun: runc's CRIU flow, when crun was built with CRIU (`crun --version` lists +CRIU).

One difference is handled here. crun bind-mounts every masked directory from one shared empty
dir, `<root>/.empty-directory`, and registers it with CRIU as an external mount whose key is
that path. crun 1.24-1.28 computes the key at a checkpoint from its *default* root
(/run/crun), not from `--root` (containers/crun#2239, fixed after 1.28), and at a restore from
the restoring call's `--root`; and even a fixed crun keys the mount on the source's root. Under
containerd (`--root /run/containerd/runc/<namespace>`), on another node or in another
namespace, the keys differ and CRIU fails: "mnt: No mapping for ... mountpoint". So a restore
maps every such key found in the images onto this call's empty dir, in the CRIU config.
"""
import os
import re

from runc_grit.node import procs
from runc_grit.runtimes.runc import Runc

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


class Crun(Runc):
    name = "crun"

    def checkpoint_problem(self):
        try:
            out = procs.run([self.rt.path, "--version"], capture=True, timeout=20)[1] or b""
        except OSError:
            out = b""
        if b"+CRIU" not in out:
            return ("%s was built without CRIU (its --version lists no +CRIU), so it cannot "
                    "checkpoint or restore; use runc, or a crun built with CRIU" % self.rt.path)
        return None

    def restore_criu_options(self, req, image_dir):
        from runc_grit.checkpoint import criuimages
        keys = criuimages.read(image_dir, req.conf, where="restore of %s" % req.cid).get(
            "external_mounts") or []
        here = os.path.join(run_dir(self.rt.globals), EMPTY_DIR)
        lines = empty_dir_mappings(keys, here)
        for ln in lines:
            req.log.debug("crun: %s (containers/crun#2239)" % ln)
        return lines
