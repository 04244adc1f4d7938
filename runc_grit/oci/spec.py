"""The bundle's config.json as a plain dict: load, save, read. Changes to it are
oci.modifiers'. Unknown fields are never touched, so whatever the runtime or a newer OCI spec
adds survives.
"""
import json
import os

from runc_grit.errors import SpecError
from runc_grit.fsutil import write_json_atomic

CRIU_CONFIG_ANNOTATION = "org.criu.config"


def load(bundle, name="config.json"):
    """The spec (config.json, or crun's --config NAME) of a bundle, as a plain dict."""
    path = os.path.join(bundle, name)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise SpecError("bundle %s: cannot read %s: %s" % (bundle, name, e.strerror)) from None
    try:
        spec = json.loads(raw)
    except ValueError as e:
        raise SpecError("bundle %s: malformed %s: %s" % (bundle, name, e)) from None
    if not isinstance(spec, dict):
        raise SpecError("bundle %s: malformed %s: top level is not an object" % (bundle, name))
    ann = spec.get("annotations")
    if ann is not None and (not isinstance(ann, dict)
                            or not all(isinstance(v, str) for v in ann.values())):
        raise SpecError("bundle %s: malformed %s: annotations must map strings to strings"
                        % (bundle, name))
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


def env(spec):
    """{name: value} of the spec's process.env (the last of a name wins)."""
    out = {}
    for kv in ((spec or {}).get("process") or {}).get("env") or []:
        k, _, v = str(kv).partition("=")
        out[k] = v
    return out
