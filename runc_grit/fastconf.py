"""What the pass-through path needs from the config, read without yaml or jsonschema.

Only three top-level keys are read here: ``runtime`` and ``state_dir`` (scalars) and
``runtime_flags`` (a one-line flow list of plain words, ``[--network=none, --nvproxy]``). A line this
reader cannot be sure of (flow or block syntax, anchors, escapes) makes it return None, and
the caller falls back to the full loader (runc_grit.config). Validation always happens in the
full loader, which every intercepted command uses.

The pass-through path uses only ``posix`` (built in), not ``os``: without ``site``, importing
os (posixpath, stat, abc, ...) would be most of runc-grit's own start-up time.
"""
import posix

DEFAULT_PATH = "/etc/runc-grit/config.yaml"
DEFAULTS = {"runtime": "runc", "state_dir": "/run/runc-grit", "runtime_flags": []}
_KEYS = ("runtime", "state_dir")
_LISTS = ("runtime_flags",)
_UNSURE = tuple("[{&*!|>%@`\"'")


def getenv(name, default=None):
    v = posix.environ.get(name.encode())
    return v.decode("utf-8", "surrogateescape") if v is not None else default


def config_path():
    return getenv("RUNC_GRIT_CONFIG") or DEFAULT_PATH


def _scalar(raw):
    raw = raw.strip()
    if not raw:
        return None
    if raw[0] in "\"'":
        q = raw[0]
        end = raw.find(q, 1)
        if end < 0 or "\\" in raw[:end] or raw[end + 1:].strip()[:1] not in ("", "#"):
            return None
        return raw[1:end]
    if raw[0] in _UNSURE:
        return None
    value = raw.split(" #", 1)[0].strip()
    return value or None


def _flow_list(raw):
    """'[a, b]' -> ['a', 'b'] for plain words only; None when unsure."""
    raw = raw.split(" #", 1)[0].strip()
    if len(raw) < 2 or raw[0] != "[" or raw[-1] != "]":
        return None
    body = raw[1:-1].strip()
    if not body:
        return []
    items = [i.strip() for i in body.split(",")]
    for i in items:
        if not i or any(c in i for c in "[]{}&*!|>%@`\"'#:") or " " in i:
            return None
    return items


def read(path=None):
    """dict with runtime and state_dir, or None when the full loader must decide."""
    path = path or config_path()
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except FileNotFoundError:
        return dict(DEFAULTS)
    except (OSError, UnicodeDecodeError):
        return None
    out = dict(DEFAULTS)
    out["runtime_flags"] = []
    for line in text.splitlines():
        if not line or line[0] in " \t#" or line.startswith("---"):
            continue
        if line == "-" or line[:2] in ("- ", "-\t"):
            continue  # an item of the key above, in a flush-left block list (yaml.safe_dump)
        key, sep, rest = line.partition(":")
        if not sep:
            return None
        key = key.strip()
        if key in _KEYS:
            value = _scalar(rest)
            if value is None:
                return None
            out[key] = value
        elif key in _LISTS:
            value = _flow_list(rest)
            if value is None:
                return None
            out[key] = value
    return out


def _stat(path):
    try:
        return posix.stat(path)
    except (OSError, ValueError):
        return None


def exists(path):
    return _stat(path) is not None


def is_dir(path):
    st = _stat(path)
    return st is not None and (st.st_mode & 0o170000) == 0o040000


def which(name, skip=None):
    """Find an executable like a shell would. ``skip``: a path whose file (after symlinks)
    is stepped over: runc-grit itself, when it is installed under the runtime's name."""
    if "/" in name:
        return name if posix.access(name, 1) else None
    skip_st = _stat(skip) if skip else None
    for d in getenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin").split(":"):
        cand = (d or ".").rstrip("/") + "/" + name
        st = _stat(cand)
        if st is None or (st.st_mode & 0o170000) != 0o100000 or not posix.access(cand, 1):
            continue
        if skip_st is not None and (st.st_dev, st.st_ino) == (skip_st.st_dev, skip_st.st_ino):
            continue
        return cand
    return None
