"""What the pass-through path needs from the config, read without yaml or jsonschema.

Only two top-level scalar keys are read here: ``runtime`` and ``state_dir``. A line this
reader cannot be sure of (flow or block syntax, anchors, escapes) makes it return None, and
the caller falls back to the full loader (runc_grit.config). Validation always happens in the
full loader, which every intercepted command uses.
"""
import os

DEFAULT_PATH = "/etc/runc-grit/config.yaml"
DEFAULTS = {"runtime": "runc", "state_dir": "/run/runc-grit"}
_KEYS = ("runtime", "state_dir")
_UNSURE = tuple("[{&*!|>%@`\"'")


def config_path():
    return os.environ.get("RUNC_GRIT_CONFIG") or DEFAULT_PATH


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
    for line in text.splitlines():
        if not line or line[0] in " \t#" or line.startswith("---"):
            continue
        key, sep, rest = line.partition(":")
        if not sep:
            return None
        key = key.strip()
        if key in _KEYS:
            value = _scalar(rest)
            if value is None:
                return None
            out[key] = value
    return out


def which(name, skip=None):
    """Find an executable like a shell would; ``skip`` is a realpath to step over (ourselves)."""
    if "/" in name:
        return name if os.access(name, os.X_OK) else None
    for d in os.environ.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin").split(":"):
        cand = os.path.join(d or ".", name)
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            if skip and os.path.realpath(cand) == skip:
                continue
            return cand
    return None
