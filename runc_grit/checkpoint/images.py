"""What an image dir must hold, per image format, before a runtime may read it.

  CRIU     CRIU's images; inventory.img starts with CRIU's inventory magic
  gVisor   runsc's checkpoint.img, which starts with gVisor's state-file magic
Either way: only regular files and directories, no symlinks (a restore runs as root).
"""
import os
import stat
import struct

from runc_grit.errors import SourceError

INVENTORY = "inventory.img"
INVENTORY_MAGIC = 0x58313116  # CRIU's INVENTORY_MAGIC, first 4 bytes of inventory.img
GVISOR_IMAGE = "checkpoint.img"
GVISOR_MAGIC = b"gVisorSF"


def check_entries(image_dir):
    """The names in an image dir, refusing symlinks and anything but files and dirs."""
    try:
        names = os.listdir(image_dir)
    except OSError as e:
        raise SourceError("restore source %s: %s" % (image_dir, e.strerror)) from None
    for name in names:
        st = os.lstat(os.path.join(image_dir, name))
        if stat.S_ISLNK(st.st_mode):
            raise SourceError("restore source %s: %s is a symlink; refused" % (image_dir, name))
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            raise SourceError("restore source %s: %s is not a regular file" % (image_dir, name))
    return names


def check_criu(image_dir):
    """Only regular files; an inventory with CRIU's magic."""
    names = check_entries(image_dir)
    if INVENTORY not in names:
        raise SourceError("restore source %s: not a CRIU image dir (no %s)" % (image_dir, INVENTORY))
    head = _head(image_dir, INVENTORY, 8)
    if len(head) < 8 or struct.unpack("<I", head[:4])[0] != INVENTORY_MAGIC:
        raise SourceError("restore source %s: corrupt %s (bad CRIU magic)" % (image_dir, INVENTORY))


def check_gvisor(image_dir):
    """A gVisor image dir: only regular files (and dirs), a checkpoint.img with gVisor's magic."""
    names = check_entries(image_dir)
    if GVISOR_IMAGE not in names:
        raise SourceError("restore source %s: not a gVisor (runsc) image dir (no %s)"
                        % (image_dir, GVISOR_IMAGE))
    head = _head(image_dir, GVISOR_IMAGE, len(GVISOR_MAGIC))
    if head != GVISOR_MAGIC:
        raise SourceError("restore source %s: corrupt %s (no gVisor state-file magic)"
                        % (image_dir, GVISOR_IMAGE))


def _head(image_dir, name, n):
    """The first n bytes of the regular file name (a FIFO, device or link is never opened:
    fsutil.open_regular)."""
    from runc_grit import fsutil
    try:
        fd = fsutil.open_regular(os.path.join(image_dir, name))
    except OSError as e:
        raise SourceError("restore source %s: %s is %s" % (image_dir, name, e.strerror)) from None
    try:
        return os.read(fd, n)
    finally:
        os.close(fd)


def check(image_dir, image_format="CRIU"):
    (check_gvisor if image_format == "gVisor" else check_criu)(image_dir)
