"""A checkpoint's image dir, opened once and read only through that descriptor.

A restore source is content a pod may control (a shared volume): between a path check and
an open, any component can become a symlink, and a name can be a FIFO (an open hangs) or a
device node (an open as root has effects). So the dir is opened walking its real path one
component at a time with O_NOFOLLOW, and each file in it is opened as O_PATH|O_NOFOLLOW,
checked with fstat (a regular file, the size expected), and only then reopened for reading
through /proc/self/fd: the same inode, never a device, never a link.
"""
import os

from runc_grit import fsutil
from runc_grit.errors import SourceError
from runc_grit.fsutil import DIR_FLAGS
# written into an image dir by a restore that read it in place: never read by CRIU
RESTORE_OUTPUTS = frozenset(("stats-restore", "restore.log"))


def open_dir(path, where):
    """A descriptor of the dir at the absolute, already resolved path, walked from / with
    O_NOFOLLOW at every component: a component swapped for a symlink meanwhile fails it."""
    try:
        parts = fsutil.confined_parts(path.lstrip("/"))
    except ValueError as e:
        raise SourceError("%s: %s" % (where, e)) from None
    root = os.open("/", DIR_FLAGS)
    try:
        return fsutil.walk(root, parts)
    except OSError as e:
        raise SourceError("%s: %s (a symlink on its path is refused)" % (where, e.strerror)) from None
    finally:
        os.close(root)


class ImageDir:
    """An image dir held open: names, stats and reads go through its descriptor."""

    def __init__(self, path, where):
        self.path, self.where = path, where
        self.fd = open_dir(path, where)

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def names(self):
        return os.listdir(self.fd)

    def lstat(self, name):
        return os.stat(name, dir_fd=self.fd, follow_symlinks=False)

    def stat_dir(self):
        return os.fstat(self.fd)

    def open_regular(self, name, size=None, limit=None):
        """(fd open for reading, its stat) of the regular file name; refused (GritError) when
        missing, not a regular file, of another size than `size`, or larger than `limit`.
        Returns None for a missing file when size is None (optional files)."""
        try:
            fd, st = fsutil.open_regular(name, self.fd, with_stat=True)
        except FileNotFoundError:
            if size is None:
                return None
            raise SourceError("%s: image %s listed in the manifest is missing"
                            % (self.where, name)) from None
        except OSError as e:
            raise SourceError("%s: %s is %s" % (self.where, name, e.strerror)) \
                from None
        why = None
        if size is not None and st.st_size != size:
            why = "image %s has %d bytes, the manifest says %d" % (name, st.st_size, size)
        elif limit is not None and st.st_size > limit:
            why = "%s is too large (%d bytes, at most %d)" % (name, st.st_size, limit)
        if why:
            os.close(fd)
            raise SourceError("%s: %s" % (self.where, why))
        return fd, st

    def read(self, name, limit):
        """The bytes of a small regular file (None when there is none)."""
        got = self.open_regular(name, limit=limit)
        if got is None:
            return None
        fd, st = got
        try:
            chunks, left = [], st.st_size
            while left > 0:
                b = os.read(fd, min(left, 1 << 20))
                if not b:
                    break
                chunks.append(b)
                left -= len(b)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def unlisted(self, listed):
        """Entries of the dir that are neither listed nor a restore's own outputs."""
        return sorted(n for n in self.names() if n not in listed and n not in RESTORE_OUTPUTS)

    def refuse_unlisted(self, listed):
        extra = self.unlisted(listed)
        if extra:
            raise SourceError("%s: %s not listed in the signed manifest; an image dir holds only "
                            "what its manifest lists" % (self.where, ", ".join(extra[:5])))
