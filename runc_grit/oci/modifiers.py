"""Every change runc-grit makes to a bundle's config.json, one function each.

A modifier is a function ``(spec: dict) -> None`` (as nvidia-container-toolkit's are);
``apply`` runs a list of them. Unknown fields are never touched, so whatever the runtime or a
newer OCI spec adds survives. ``for_criu`` is the list a create or restore composes: the
changes that point the container at runc-grit's shared CRIU config.
"""
from runc_grit.oci.spec import CRIU_CONFIG_ANNOTATION


def apply(spec, modifiers):
    """Run each modifier on spec, in order. Returns spec."""
    for modify in modifiers:
        modify(spec)
    return spec


def set_annotation(key, value):
    """The modifier that sets annotation key to value (making the map if there is none)."""
    def modify(spec):
        ann = spec.get("annotations")
        if not isinstance(ann, dict):
            ann = spec["annotations"] = {}
        ann[key] = value
    modify.__name__ = "set_annotation(%s)" % key
    return modify


def drop_annotation(key):
    """The modifier that removes annotation key (nothing when it is not there)."""
    def modify(spec):
        ann = spec.get("annotations")
        if isinstance(ann, dict):
            ann.pop(key, None)
    modify.__name__ = "drop_annotation(%s)" % key
    return modify


def set_criu_config(path):
    """Name the container's CRIU config; runc hands it to CRIU at checkpoint and restore."""
    return set_annotation(CRIU_CONFIG_ANNOTATION, path)


def for_criu(spec, config_path, user_config, user_annotation):
    """The modifiers that point spec at the shared CRIU config config_path (and record the
    container's own CRIU config, user_config, under user_annotation): only those that change
    something, so an empty list means config.json needs no write."""
    ann = spec.get("annotations") or {}
    out = []
    if ann.get(CRIU_CONFIG_ANNOTATION) != config_path:
        out.append(set_criu_config(config_path))
    if user_config is not None and ann.get(user_annotation) != user_config:
        out.append(set_annotation(user_annotation, user_config))
    return out
