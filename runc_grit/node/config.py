"""The node configuration: YAML, validated with jsonschema, defaults filled in."""
import copy
import json
import os

from runc_grit import fastconf
from runc_grit.errors import ConfigError

# runc_grit/: its schemas/ and hooks/ are found from here however runc-grit is installed
PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DEFAULTS = {
    "runtime": "runc",
    "runtime_flags": [],
    "criu": "criu",
    "checkpoint_roots": ["/var/lib/runc-grit/checkpoints"],
    "state_dir": "/run/runc-grit",
    "criu_options": [],
    "on_restore_failure": "fail",
    "accept_raw_criu": False,
    "hook_script": None,
    "verify": "size",
    "restore_cgroups": "ignore",
    "signing_key": None,
    "trusted_keys": ["/etc/runc-grit/trusted.d"],
    "require_signature": True,
    "staging": "auto",
    "page_digests": "overlap",
    "staging_dir": "/var/lib/runc-grit/staging",
    "tenant_transfers": [],
    "max_checkpoint_age": 0,
    "privilege_check": "enforce",
    "device_env": "refuse",
    "registry": {
        "auth_file": None,
        "insecure": [],
        "ca_file": None,
        "timeout": 600,
        "cache_dir": None,
        "cache_bytes": 64 << 30,
        "blob_size": 512 << 20,
        "jobs": 8,
    },
    "cuda": {
        "enabled": "auto",
        "helper": "builtin",
        "lock_timeout_ms": 10000,
        "require_same_gpu_model": True,
        "library": "libcuda.so.1",
        "sandbox_helper": "/usr/local/bin/cuda-checkpoint",
    },
}


def load_schema(name):
    from importlib import resources
    return json.loads(resources.files("runc_grit").joinpath("schemas", name).read_text())


class Config:
    """Validated settings. Attribute access for top-level keys; ``cuda`` is a dict."""

    def __init__(self, data, path=None):
        self._data = data
        self.path = path

    def __getattr__(self, key):
        try:
            return self._data[key]
        except KeyError:
            raise AttributeError(key) from None

    def as_dict(self):
        return copy.deepcopy(self._data)


def _key_path(err):
    parts = [str(p) for p in err.absolute_path]
    if err.validator == "additionalProperties":
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        parts += extra[:1]
    return ".".join(parts) or "(top level)"


def validate(data, source="config"):
    import jsonschema
    schema = load_schema("config.schema.json")
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(data),
                    key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        raise ConfigError("%s: invalid key %s: %s" % (source, _key_path(e), e.message))


def merge(data):
    out = copy.deepcopy(DEFAULTS)
    for k, v in data.items():
        if k in ("cuda", "registry"):
            out[k].update(v)
        else:
            out[k] = v
    return out


CACHE = "config-cache.json"


def _cache_key(path):
    """What a cached validation depends on: the config file's identity and this package's
    schema (an upgrade with a new schema validates again)."""
    st = os.stat(path)
    schema = os.path.join(PACKAGE_DIR, "schemas", "config.schema.json")
    sst = os.stat(schema)
    return [os.path.abspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
            st.st_ctime_ns, sst.st_size, sst.st_mtime_ns]


def _cache_path(path):
    fast = fastconf.read(path)
    return os.path.join(fast["state_dir"], CACHE) if fast else None


def _cached(path):
    """The validated config from the state dir's cache, when the file is unchanged: spares
    every intercepted command the YAML parser and jsonschema (~150 ms)."""
    try:
        cp = _cache_path(path)
        if cp is None:
            return None
        with open(cp) as f:
            data = json.load(f)
        if data.get("key") == _cache_key(path) and isinstance(data.get("config"), dict):
            return data["config"]
    except (OSError, ValueError, TypeError):
        pass
    return None


def _remember(path, merged):
    try:
        cp = _cache_path(path)
        if cp is None:
            return
        from runc_grit.fsutil import write_json_atomic
        os.makedirs(os.path.dirname(cp), mode=0o700, exist_ok=True)
        write_json_atomic(cp, {"key": _cache_key(path), "config": merged}, mode=0o600)
    except OSError:
        pass


def load(path=None):
    path = path or fastconf.config_path()
    cached = _cached(path)
    if cached is not None:
        return Config(cached, path)
    try:
        with open(path, "rb") as f:
            text = f.read()
    except FileNotFoundError:
        if path != fastconf.DEFAULT_PATH:
            raise ConfigError("config %s: no such file" % path) from None
        return Config(merge({}), None)
    except OSError as e:
        raise ConfigError("config %s: %s" % (path, e.strerror)) from None
    import yaml
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = " at line %d" % (mark.line + 1) if mark is not None else ""
        raise ConfigError("config %s: bad YAML%s: %s" % (path, where, getattr(e, "problem", e))) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("config %s: top level must be a mapping" % path)
    validate(data, "config %s" % path)
    merged = merge(data)
    _remember(path, merged)
    return Config(merged, path)


def hook_script(conf):
    """The CRIU action script every container's CRIU config names: the config's, else the
    one inside this package (found the same way however runc-grit is installed: editable,
    pip + launcher, console script)."""
    if conf.hook_script:
        return conf.hook_script
    path = os.path.join(PACKAGE_DIR, "hooks", "grit-hook")
    if not os.path.isfile(path):
        raise ConfigError("CRIU action script %s not found; set hook_script in the config" % path)
    if not os.access(path, os.X_OK):
        raise ConfigError("CRIU action script %s is not executable" % path)
    return path
