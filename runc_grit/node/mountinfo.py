"""/proc/<pid>/mountinfo, parsed in one place: one record per mount, paths unescaped."""
from collections import namedtuple

# mountpoint and source unescaped; options (per mount) and super_options as lists
Mount = namedtuple("Mount", "mountpoint options fstype source super_options")

ESCAPES = (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\"))


def unescape(s):
    """A path as the kernel escapes it in mountinfo (octal space, tab, newline, backslash)."""
    for esc, ch in ESCAPES:
        s = s.replace(esc, ch)
    return s


def parse(text):
    """The mounts of a mountinfo text, in its order (of mounts stacked on one point, the
    last is the visible one). Pure."""
    out = []
    for line in text.splitlines():
        pre, sep, post = line.partition(" - ")
        fields, tail = pre.split(), post.split()
        if not sep or len(fields) < 6 or len(tail) < 3:
            continue
        out.append(Mount(unescape(fields[4]), fields[5].split(","), tail[0], unescape(tail[1]),
                         tail[2].split(",")))
    return out


def read(pid="self"):
    """The mounts /proc/<pid>/mountinfo lists, or None when it cannot be read."""
    try:
        with open("/proc/%s/mountinfo" % pid) as f:
            return parse(f.read())
    except OSError:
        return None
