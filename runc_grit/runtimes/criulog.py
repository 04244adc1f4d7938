"""Why CRIU failed, from its log: the cause line, a hint a user can act on, and the log kept.

CRIU prints the error that stopped it, then "Restoring FAILED." / "Dumping FAILED.", then the
errors of its clean-up (cgroupd, ghost files, ...): the cause is the last `Error (` line
*before* the first FAILED line (the first of the cluster it ends: the cause, not its
consequences), not the last line of the log. A log with no result at all
means CRIU was killed; one that finished means CRIU succeeded and something after it failed.
A failed restore's container (and its state dir) is removed, so the log a reason names is
first kept under <state_dir>/failed/, the newest KEEP of them; `runc-grit gc` removes them.
"""
import os
import re
import shutil
import time

FAILED = ("Restoring FAILED", "Dumping FAILED", "Pre-dumping FAILED")
FINISHED = ("Restore finished successfully", "Dumping finished successfully",
            "Pre-dumping finished successfully")
KEEP = 10
CLUSTER = 3  # errors at most this many lines apart belong to one failure
KEPT_DIR = "failed"

# (pattern in the cause, or anywhere before the failure, hint)
HINTS = (
    (re.compile(r"Address already in use|Can't bind|EADDRINUSE", re.I),
     "a copy of this checkpoint (or another process) already holds one of its sockets in this "
     "network namespace (an abstract unix socket or a port): stop it, or restore into a "
     "network namespace of its own"),
    (re.compile(r"No space left on device|ENOSPC|Disk quota exceeded", re.I),
     "no space left on the device that holds the images, the container's rootfs or its tmpfs "
     "mounts"),
    (re.compile(r"cuda|nvidia|/dev/nvidia", re.I),
     "a GPU the checkpoint used is missing here, or of another model or driver "
     "(`runc-grit doctor`, `nvidia-smi`)"),
    (re.compile(r"not supported|isn't supported|doesn't support|Function not implemented|"
                r"ENOSYS|kerndat|Unknown (?:option|feature)|not available", re.I),
     "a kernel or CRIU feature the checkpoint needs is missing on this node (`criu check "
     "--all`)"),
)


def read_tail(path, limit=400000):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            return f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None


def _message(line):
    return line.split("):", 1)[-1].strip() if "):" in line else line.strip()


def cause(lines):
    """(status, cause line) of a CRIU log's lines: status 'failed' (cause: the first error of
    the last cluster before the first FAILED line), 'finished' (no cause), 'killed' (no
    result). Pure."""
    first_failed = next((i for i, ln in enumerate(lines) if any(f in ln for f in FAILED)), None)
    if first_failed is None:
        if any(any(f in ln for f in FINISHED) for ln in lines):
            return "finished", None
        return "killed", None
    errs = [i for i, ln in enumerate(lines[:first_failed]) if "Error (" in ln]
    if not errs:
        return "failed", None
    # the last error is often a consequence ("Unable to open fd=3", "Dump files ... failed
    # with -1") printed right after the cause: the cause opens the last cluster of errors
    i = len(errs) - 1
    while i > 0 and errs[i] - errs[i - 1] <= CLUSTER:
        i -= 1
    return "failed", _message(lines[errs[i]])[:300]


def hint(cause_line, lines=()):
    """A short hint for a cause a user can act on, or None. Pure."""
    for text in [cause_line or ""] + [ln for ln in list(lines)[-400:] if "Error (" in ln]:
        for rx, h in HINTS:
            if text and rx.search(text):
                return h
    return None


def keep(log_path, state_dir, cid):
    """A copy of a failed run's log under <state_dir>/failed/ (the newest KEEP kept); its
    path, or None."""
    d = os.path.join(state_dir, KEPT_DIR)
    try:
        os.makedirs(d, mode=0o700, exist_ok=True)
        dst = os.path.join(d, "%s.%d.%s" % (cid, int(time.time() * 1000),
                                            os.path.basename(log_path)))
        shutil.copyfile(log_path, dst)
        kept = sorted((os.path.join(d, n) for n in os.listdir(d)), key=os.path.getmtime)
        for old in kept[:-KEEP]:
            os.unlink(old)
        return dst
    except OSError:
        return None


def kept(state_dir):
    d = os.path.join(state_dir, KEPT_DIR)
    try:
        return sorted(os.path.join(d, n) for n in os.listdir(d))
    except OSError:
        return []


def _full(path):
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail == 0


def explain(work_dir, names, state_dir=None, cid=None):
    """The reason a CRIU run in work_dir failed (one sentence), with its hint and the log it
    comes from (kept when state_dir is given, since work_dir may go with the container), or
    None when there is no log."""
    for name in names:
        path = os.path.join(work_dir, name) if work_dir else None
        lines = read_tail(path) if path else None
        if lines is None:
            continue
        status, line = cause(lines)
        where = (keep(path, state_dir, cid) if state_dir else None) or path
        if status == "killed":
            text = "%s ends without a result (CRIU was killed?)" % name
            if _full(work_dir):  # the log itself could not be written to its end
                text = "%s ends without a result: its filesystem is full" % name
                lines = lines + ["Error (runc-grit): No space left on device"]
        elif status == "finished":
            text = "CRIU finished (%s says so); the failure came after it" % name
        else:
            text = line or "CRIU failed without an error line"
        h = hint(line, lines if status != "finished" else ())
        return "criu: %s%s (log: %s)" % (text, "; hint: " + h if h else "", where)
    return None


def run_failure(log_path, work_dir, rc, state_dir=None, cid=None):
    """Why a runtime run that ran CRIU failed: the runtime's last --log error
    (oci.runclog.failure_reason) and CRIU's cause line, hint and log (explain; the log kept
    under state_dir when the container goes)."""
    from runc_grit.oci.runclog import last_error
    parts = []
    msg = last_error(log_path) if log_path else None
    if msg:
        parts.append(msg)
    criu_err = explain(work_dir, ("restore.log", "dump.log"), state_dir, cid)
    if criu_err:
        parts.append(criu_err)
    return "; ".join(parts) or "runtime exited with status %d" % rc
