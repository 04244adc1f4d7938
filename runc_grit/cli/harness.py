"""Driving runc-grit the way containerd does: argv, pipes for stdio, log.json, pid file.

Shared by `runc-grit demo` and the integration tests.
"""
import os
import subprocess
import sys
import threading
import time


class PipeReader:
    """Collects the lines a container writes to its stdout pipe."""

    def __init__(self, fd):
        self.lines = []
        self._f = os.fdopen(fd, "rb", buffering=0)
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        buf = b""
        while True:
            try:
                chunk = self._f.read(4096)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
            *full, buf = buf.split(b"\n")
            self.lines += [ln.decode("utf-8", "replace") for ln in full]
        self._f.close()

    def ints(self):
        out = []
        for ln in self.lines:
            try:
                out.append(int(ln.strip()))
            except ValueError:
                pass
        return out

    def wait_for(self, pred, timeout=10.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred(self):
                return True
            time.sleep(0.05)
        return pred(self)

    def closed(self, timeout=5.0):
        self._t.join(timeout)
        return not self._t.is_alive()


class Grit:
    """runc-grit with containerd's global flags: --root R --log B/log.json --log-format json."""

    def __init__(self, root, env=None, argv0=None):
        self.root = root
        self.env = dict(os.environ if env is None else env)
        self.argv0 = argv0 or [sys.executable, "-m", "runc_grit"]

    def argv(self, bundle, *args):
        g = ["--root", self.root]
        if bundle:
            g += ["--log", os.path.join(bundle, "log.json"), "--log-format", "json"]
        return list(self.argv0) + g + list(args)

    def run(self, bundle, *args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, timeout=120):
        return subprocess.run(self.argv(bundle, *args), stdin=stdin, stdout=stdout, stderr=stderr,
                              env=self.env, timeout=timeout)

    def create_with_pipes(self, bundle, cid, extra=(), console_socket=None, pid_file=None):
        """create like containerd: stdio are pipes. Returns (CompletedProcess, PipeReader)."""
        r_out, w_out = os.pipe()
        r_in, w_in = os.pipe()
        args = ["create", "--bundle", bundle, "--pid-file",
                pid_file or os.path.join(bundle, "init.pid")]
        if console_socket:
            args += ["--console-socket", console_socket]
        args += list(extra) + [cid]
        try:
            p = subprocess.run(self.argv(bundle, *args), stdin=r_in, stdout=w_out, stderr=w_out,
                               env=self.env, timeout=180)
        finally:
            os.close(w_out)
            os.close(r_in)
        reader = PipeReader(r_out)
        reader.stdin_w = w_in
        return p, reader

    def log_error(self, bundle):
        from runc_grit.oci.runclog import last_error
        return last_error(os.path.join(bundle, "log.json"))

    def state(self, cid):
        import json
        p = self.run(None, "state", cid)
        if p.returncode != 0:
            return None
        return json.loads(p.stdout)
