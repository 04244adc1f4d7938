"""The bundle's config.json as a plain dict, and small changes to it.

Each change is a function ``(spec: dict) -> None``; ``apply`` runs a list of them. Unknown
fields are never touched, so whatever the runtime or a newer OCI spec adds survives.
"""
import json
import os

from runc_grit.errors import GritError
from runc_grit.fsutil import write_json_atomic

CRIU_CONFIG_ANNOTATION = "org.criu.config"


def load(bundle, name="config.json"):
    """The spec (config.json, or crun's --config NAME) of a bundle, as a plain dict."""
    path = os.path.join(bundle, name)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise GritError("bundle %s: cannot read %s: %s" % (bundle, name, e.strerror),
                        kind="spec") from None
    try:
        spec = json.loads(raw)
    except ValueError as e:
        raise GritError("bundle %s: malformed %s: %s" % (bundle, name, e), kind="spec") from None
    if not isinstance(spec, dict):
        raise GritError("bundle %s: malformed %s: top level is not an object" % (bundle, name),
                        kind="spec")
    ann = spec.get("annotations")
    if ann is not None and (not isinstance(ann, dict)
                            or not all(isinstance(v, str) for v in ann.values())):
        raise GritError("bundle %s: malformed %s: annotations must map strings to strings"
                        % (bundle, name), kind="spec")
    return spec


def save(bundle, spec, name="config.json"):
    mode = 0o644
    path = os.path.join(bundle, name)
    try:
        mode = os.stat(path).st_mode & 0o7777
    except OSError:
        pass
    write_json_atomic(path, spec, mode=mode)


def annotations(spec):
    return spec.get("annotations") or {}


def apply(spec, changes):
    for change in changes:
        change(spec)
    return spec


# --- changes ------------------------------------------------------------------------------

def set_annotation(key, value):
    def change(spec):
        ann = spec.get("annotations")
        if not isinstance(ann, dict):
            ann = spec["annotations"] = {}
        ann[key] = value
    change.__name__ = "set_annotation(%s)" % key
    return change


def set_criu_config(path):
    """Name the container's CRIU config; runc hands it to CRIU at checkpoint and restore."""
    return set_annotation(CRIU_CONFIG_ANNOTATION, path)


def drop_annotation(key):
    def change(spec):
        ann = spec.get("annotations")
        if isinstance(ann, dict):
            ann.pop(key, None)
    change.__name__ = "drop_annotation(%s)" % key
    return change


def env(spec):
    """{name: value} of the spec's process.env (the last of a name wins)."""
    out = {}
    for kv in ((spec or {}).get("process") or {}).get("env") or []:
        k, _, v = str(kv).partition("=")
        out[k] = v
    return out
