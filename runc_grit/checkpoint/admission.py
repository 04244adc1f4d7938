"""Whether an image dir's checkpoint may be used at all, whatever its source (a checkpoint
root, a direct restore's dir, a registry pull): its manifest authenticated first (signature,
then schema), then admitted for the destination (tenant, age, nothing unlisted), and its
listed files regular and of their listed sizes."""
import json
import os

from runc_grit.checkpoint import manifest as _manifest
from runc_grit.checkpoint import tenant
from runc_grit.errors import SourceError

MANIFEST_LIMIT = 16 << 20


def authenticate(src, conf, where, missing=None):
    """(manifest, its bytes, whether its signature was verified) of the open image dir src,
    or (None, None, False) where it has none (refused, saying `missing`, when that is given).
    Authentication comes first: the manifest is read through src's descriptor (a regular
    file, at most 16 MiB), parsed, and its signature checked before any schema work, copy or
    image read; only a verified manifest is then validated against the schema."""
    raw = src.read(_manifest.NAME, MANIFEST_LIMIT)
    if raw is None:
        if missing:
            raise SourceError("%s: no %s: %s" % (where, _manifest.NAME, missing))
        return None, None, False
    try:
        m = json.loads(raw)
    except ValueError as e:
        raise SourceError("%s: unreadable %s: %s" % (where, _manifest.NAME, e)) from None
    if not isinstance(m, dict):
        raise SourceError("%s: %s is not a JSON object" % (where, _manifest.NAME))
    from runc_grit.checkpoint import integrity
    signed = integrity.check_signature(m, conf, where)
    _manifest.validate(m, where)
    return m, raw, signed


def admit(src, m, conf, spec, where):
    """After authentication, what may be restored from src at all: the checkpoint's tenant
    and age, and nothing in the dir its manifest does not list. Returns [(name, size)] of
    the listed files."""
    tenant.check(m, _annotations(spec), conf, where)
    check_age(m, conf, where)
    items = [(i["name"], i["size"]) for i in m["images"]]
    src.refuse_unlisted({n for n, _ in items} | {_manifest.NAME})
    return items


def check_regular(src, items):
    """Each listed file a regular file of its listed size (opened once, never followed)."""
    for name, size in items:
        os.close(src.open_regular(name, size=size)[0])


def check_age(m, conf, where):
    """Refuse a checkpoint older than config max_checkpoint_age (seconds; 0: no limit)."""
    limit = getattr(conf, "max_checkpoint_age", 0) or 0
    if not limit or m is None:
        return
    import calendar
    import time
    try:
        made = calendar.timegm(time.strptime(m["created"][:19], "%Y-%m-%dT%H:%M:%S"))
    except (KeyError, ValueError):
        raise SourceError("%s: the manifest's creation time %r cannot be read"
                        % (where, m.get("created"))) from None
    age = time.time() - made
    if age > limit:
        raise SourceError("%s: the checkpoint is %d s old; this node restores checkpoints up to "
                        "max_checkpoint_age %d s" % (where, age, limit))


def _annotations(spec):
    return (spec or {}).get("annotations") or {}
