"""The memory pages' digests taken while CRIU writes them, off the checkpoint's critical path.

CRIU appends each ``pages-N.img`` from start to end (page-xfer writes or splices in order,
never seeking back). A thread watches the image dir during the dump; whenever a file has
grown past the end of a whole ``CHUNK``, that chunk is hashed on a pool, from a descriptor
opened once (``O_NOFOLLOW``, a regular file, inside the dir opened once). When the dump
ends, the manifest only hashes what is left: each file's last, partial chunk and any file
that appeared too late. A file whose identity changed, or that shrank, is hashed again
whole. The chunks are the same 64 MiB pieces a restore checks (``integrity.digests``), so
a checkpoint signed from these digests verifies like any other, and one that CRIU wrote
otherwise than appending is refused at its restore, never trusted.
"""
import os
import stat
import threading
from concurrent.futures import ThreadPoolExecutor

from runc_grit.checkpoint.integrity import CHUNK, sha256_range
from runc_grit.checkpoint.manifest import is_page_data


class TailHash:
    def __init__(self, image_dir, chunk=CHUNK, interval=0.05, workers=None):
        self.image_dir, self.chunk, self.interval = image_dir, chunk, interval
        self.workers = workers or (os.cpu_count() or 1)
        self._stop = threading.Event()
        self._thread = self._pool = self._dfd = None
        self._files = {}   # name -> [fd, (st_dev, st_ino), [futures of whole chunks]]

    def start(self):
        self._dfd = os.open(self.image_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                            | os.O_CLOEXEC)
        self._pool = ThreadPoolExecutor(max(1, self.workers))
        self._thread = threading.Thread(target=self._loop, name="tailhash", daemon=True)
        self._thread.start()
        return self

    def _loop(self):
        try:
            while not self._stop.wait(self.interval):
                self._scan()
        except OSError:   # the dir went away (a failed dump): hash nothing more
            return

    def _scan(self):
        for name in os.listdir(self._dfd):
            if is_page_data(name) and name not in self._files:
                try:
                    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
                                 | os.O_NONBLOCK, dir_fd=self._dfd)
                except OSError:
                    continue
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    os.close(fd)
                    self._files[name] = None   # never hashed here; the manifest decides
                    continue
                self._files[name] = [fd, (st.st_dev, st.st_ino), []]
        for entry in self._files.values():
            if entry is None:
                continue
            fd, _, chunks = entry
            size = os.fstat(fd).st_size
            while (len(chunks) + 1) * self.chunk <= size:
                chunks.append(self._pool.submit(sha256_range,
                                                (fd, len(chunks) * self.chunk, self.chunk)))

    def finish(self):
        """Stop watching; {name: ((st_dev, st_ino), [sha256 of each whole chunk hashed])}.
        Nothing is kept of a file whose hashing failed."""
        if self._thread is None:
            return {}
        self._stop.set()
        self._thread.join()
        out = {}
        try:
            for name, entry in self._files.items():
                if entry is None:
                    continue
                try:
                    out[name] = (entry[1], [f.result() for f in entry[2]])
                except OSError:
                    pass
        finally:
            self._pool.shutdown(wait=True)
            for entry in self._files.values():
                if entry is not None:
                    os.close(entry[0])
            os.close(self._dfd)
            self._thread = None
        return out
