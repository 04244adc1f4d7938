"""The page images' digests checked while the runtime restores, the resume gated on them.

Hashing a 16 GiB checkpoint's pages takes about 1.4 s on 16 cores, before CRIU could start.
CRIU parses the other images (the process tree, mappings, files, namespaces), and those are
all verified before it runs; pages-N.img is only copied into the restored memory. So a
restore-on-create checks everything else first (checkpoint.source.validate), starts the
runtime, and hashes the page images in this process meanwhile, from the same root-only dir
CRIU reads (a staged copy, or a dir this node made and nobody else can write).

The restored tasks run only once the hashes matched: CRIU's action script blocks at
post-restore (every task restored, none resumed) until runc-grit writes its verdict into the
container's root-only state dir, and fails the restore on anything but "ok" with this
restore's token (CRIU then kills the tasks; runc-grit removes the container and reports the
mismatch as a refused source). A runc-grit that is gone, or a verdict that never comes within
the wait, fails the restore too. Only runtimes that run the action script there use it
(Runtime.gates_resume); `page_digests: before` turns it off.
"""
import os
import secrets
import threading
import time

from runc_grit import fsutil
from runc_grit.checkpoint import manifest
from runc_grit.errors import GritError, SourceError

VERDICT = "pages-verdict"
WAIT_S = 600  # the most CRIU's post-restore waits for the verdict


class PageCheck:
    """The deferred digests of one restore: start(), env() for the runtime, wait()."""

    def __init__(self, image_dir, items, where, state):
        self.image_dir, self.items, self.where = image_dir, items, where
        self.verdict = state.path(VERDICT)
        self.token = secrets.token_hex(16)
        self.error = None
        self.seconds = None
        self.finished = False  # hashed every page image to the end (then error says how)
        self._thread = None

    def start(self):
        try:
            os.unlink(self.verdict)  # a verdict left by an earlier restore of this name
        except FileNotFoundError:
            pass
        t = threading.Thread(target=self._run, name="page-digests", daemon=True)
        t.start()
        self._thread = t

    def _run(self):
        t0 = time.monotonic()
        try:
            manifest.check_digests(self.image_dir, self.items, self.where)
        except GritError as e:
            self.error = e
        except Exception as e:  # noqa: BLE001 - a read that failed is a failed check
            self.error = SourceError("%s: the page images could not be verified: %s"
                                     % (self.where, e))
        self.seconds = time.monotonic() - t0
        self.finished = True
        word = "ok" if self.error is None else "bad"
        try:
            fsutil.write_atomic(self.verdict, ("%s %s\n" % (word, self.token)).encode(), 0o600)
        except OSError:
            pass  # the state dir went (a refused restore): nothing waits any more

    def env(self):
        """What the action script needs to wait for this restore's verdict."""
        return {"RUNC_GRIT_PAGES_VERDICT": self.verdict, "RUNC_GRIT_PAGES_TOKEN": self.token,
                "RUNC_GRIT_PAGES_PID": str(os.getpid()), "RUNC_GRIT_PAGES_WAIT": str(WAIT_S)}

    def wait(self):
        """The check's error (GritError) or None, once it finished."""
        if self._thread is not None:
            self._thread.join()
        return self.error

    def outcome(self):
        """After wait(): True (every page image matched), False (one did not, or could not
        be read), None (the check never ran: nothing is known about the pages)."""
        if not self.finished:
            return None
        return self.error is None
