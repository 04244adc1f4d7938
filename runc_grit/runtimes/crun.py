"""crun: runc's CRIU flow, when crun was built with CRIU (`crun --version` lists +CRIU)."""
from runc_grit.node import procs
from runc_grit.runtimes.runc import Runc


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
