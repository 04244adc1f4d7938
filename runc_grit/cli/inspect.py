"""`runc-grit inspect DIR`: what a checkpoint holds and whether this node can restore it."""
import os
import shutil
import subprocess

from runc_grit.checkpoint import compat, integrity
from runc_grit.checkpoint import manifest as _manifest
from runc_grit.errors import GritError


def _process_tree(image_dir):
    """(tree lines, note): from CRIU's pstree.img through crit, where crit is installed."""
    crit = shutil.which("crit")
    if not crit:
        return None, "crit (pycriu) not installed: no process tree"
    try:
        p = subprocess.run([crit, "x", image_dir, "ps"], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, "crit failed: %s" % e
    if p.returncode != 0:
        return None, "crit failed: %s" % p.stderr.decode("utf-8", "replace").strip()[-200:]
    return p.stdout.decode("utf-8", "replace").splitlines(), None


def inspect(image_dir, conf, runtime_name, criu_version):
    """A dict report; never raises for a bad checkpoint (the report says what is wrong)."""
    rep = {"dir": os.path.abspath(image_dir), "manifest": None, "problems": []}
    try:
        m = _manifest.load(image_dir)
    except GritError as e:
        rep["problems"].append(e.message)
        m = None
    if m is None:
        if not rep["problems"]:
            rep["problems"].append("no %s: not a complete runc-grit checkpoint" % _manifest.NAME)
        return rep
    rep["manifest"] = "valid"
    rep["container"] = m["container"]["id"]
    rep["created"] = m["created"]
    rep["runtime"] = m["runtime"]
    rep["criu"] = m["criu"]
    rep["node"] = m.get("node")
    rep["images"] = {"files": len(m["images"]),
                     "bytes": sum(i["size"] for i in m["images"]),
                     "digests": all(_manifest.has_digest(i) for i in m["images"])}
    rep["timings"] = m.get("timings")
    rep["gpu"] = m.get("gpu")
    sig = m.get("signature")
    rep["signature"] = {"present": bool(sig), "key_id": (sig or {}).get("key_id")}
    try:
        verified = integrity.check_signature(m, conf, "checkpoint")
        rep["signature"]["valid"] = True if verified else None
    except GritError as e:
        rep["signature"]["valid"] = False
        rep["problems"].append(e.message)
    try:
        _manifest.check_files(image_dir, m, digest=rep["images"]["digests"])
        rep["images"]["match_manifest"] = True
    except GritError as e:
        rep["images"]["match_manifest"] = False
        rep["problems"].append(e.message)
    here = compat.here(runtime_name, criu_version)
    rep["compatible"] = compat.problems(m, here, {})
    rep["problems"] += rep["compatible"]
    if compat.image_format((m.get("runtime") or {}).get("name")) == "gVisor":
        rep["tree"], note = None, "gVisor image: the processes are inside checkpoint.img"
    else:
        rep["tree"], note = _process_tree(image_dir)
    if note:
        rep["tree_note"] = note
    return rep


def render(rep):
    lines = ["checkpoint  %s" % rep["dir"]]
    if rep["manifest"] is None:
        lines += ["manifest    MISSING OR INVALID"] + ["  ! " + p for p in rep["problems"]]
        return "\n".join(lines)
    img = rep["images"]
    sig = rep["signature"]
    sig_text = ("not signed" if not sig["present"] else
                {True: "valid", False: "INVALID", None: "not checked (no signing_key here)"}
                [sig["valid"]] + " (key %s)" % sig["key_id"])
    lines += [
        "container   %s, checkpointed %s" % (rep["container"], rep["created"]),
        "made with   %s %s, CRIU %s, kernel %s" % (
            rep["runtime"].get("name"), rep["runtime"].get("version"),
            rep["criu"].get("version") or "none",
            (rep.get("node") or {}).get("kernel")),
        "images      %d files, %.1f MB, %s; %s" % (
            img["files"], img["bytes"] / 1e6, "sha256 listed" if img["digests"] else "sizes only",
            "match the manifest" if img["match_manifest"] else "DO NOT match the manifest"),
        "signature   %s" % sig_text,
    ]
    g = rep.get("gpu")
    if g and g.get("in_sandbox"):
        lines.append("GPUs        %d CUDA process(es) frozen inside the gVisor sandbox (%s)"
                     % (len(g.get("processes") or []), g.get("helper")))
    elif g and g.get("processes"):
        lines.append("GPUs        %s, driver %s; %d CUDA process(es), %.1f GB VRAM" % (
            ", ".join(d.get("name", d["uuid"]) for d in g.get("devices") or []) or "?",
            g.get("driver_version"), len(g["processes"]),
            sum(p.get("vram_bytes") or 0 for p in g["processes"]) / 1e9))
    lines.append("this node   %s" % ("can restore it" if not rep["compatible"] else
                                     "CANNOT restore it: " + "; ".join(rep["compatible"])))
    if rep.get("tree"):
        lines.append("processes")
        lines += ["  " + ln for ln in rep["tree"]]
    else:
        lines.append("processes   %s" % rep.get("tree_note"))
    for p in rep["problems"]:
        if p not in rep["compatible"]:
            lines.append("  ! " + p)
    return "\n".join(lines)
