"""runc-style log lines in the --log file: JSON ({"level","msg","time"}) or logrus text.

containerd reads the last "error" line of this file and shows its msg as the reason a
create/restore/checkpoint failed. Nothing here ever writes to stdout: on runc paths that is
the container's stdio. With no --log, errors go to stderr, as runc does.
"""
import json
import os
import sys
import time

LEVELS = ("debug", "info", "warning", "error", "fatal")


def _timestamp():
    """RFC 3339 in local time, as logrus (runc's logger) writes it: 2006-01-02T15:04:05Z07:00."""
    lt = time.localtime()
    off = lt.tm_gmtoff or 0
    zone = "Z" if off == 0 else "%s%02d:%02d" % ("+" if off > 0 else "-", abs(off) // 3600,
                                                 abs(off) % 3600 // 60)
    return time.strftime("%Y-%m-%dT%H:%M:%S", lt) + zone


def format_line(level, msg, fmt="json", **fields):
    """One log line as runc writes it: compact JSON {"level","msg","time"} (logrus's
    JSONFormatter), or logrus's text form."""
    msg = " ".join(str(msg).split())
    if fmt == "json":
        rec = {"level": level, "msg": msg, "time": _timestamp()}
        rec.update(fields)
        return json.dumps(rec, separators=(",", ":")) + "\n"
    extra = "".join(" %s=%s" % (k, json.dumps(str(v))) for k, v in fields.items())
    return 'time="%s" level=%s msg=%s%s\n' % (_timestamp(), level, json.dumps(msg), extra)


class Logger:
    """Writes to the runtime's --log file. ``debug`` lines only with --debug."""

    def __init__(self, path=None, fmt="text", debug=False):
        self.path = path
        self.fmt = fmt if fmt in ("json", "text") else "text"
        self.debug_enabled = debug

    @classmethod
    def from_invocation(cls, inv):
        if inv is None:
            return cls()
        return cls(inv.global_value("log"), inv.global_value("log-format", "text"),
                   inv.has_global("debug"))

    def write(self, level, msg, **fields):
        line = format_line(level, msg, self.fmt, **fields)
        if self.path and self.path != "/dev/stderr":
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
                try:
                    size = os.fstat(fd).st_size
                    if size and os.pread(fd, 1, size - 1) != b"\n":
                        line = "\n" + line  # runsc ends its JSON lines without one
                    os.write(fd, line.encode())
                finally:
                    os.close(fd)
                return
            except OSError:
                pass
        if level in ("error", "fatal"):
            try:
                sys.stderr.write(line)
                sys.stderr.flush()
            except (OSError, ValueError):
                pass

    def debug(self, msg, **fields):
        if self.debug_enabled:
            self.write("debug", "runc-grit: " + msg, **fields)

    def info(self, msg, **fields):
        self.write("info", "runc-grit: " + msg, **fields)

    def warning(self, msg, **fields):
        self.write("warning", "runc-grit: " + msg, **fields)

    def error(self, msg, **fields):
        self.write("error", "runc-grit: " + msg, **fields)


def failure_reason(log_path, rc, who="runtime"):
    """Why a runtime call failed: its last error in the --log file, else its exit status."""
    return (last_error(log_path) if log_path else None) or "%s exited with status %d" % (who, rc)


def last_error(path):
    """The msg of the last error line in a runc log file (what containerd would show)."""
    try:
        with open(path, "rb") as f:
            data = f.read()[-65536:].decode("utf-8", "replace")
    except OSError:
        return None
    found = None
    for line in data.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            # JSON objects, possibly several on a line (runsc writes no newline after its own)
            dec, i = json.JSONDecoder(), 0
            while i < len(line):
                try:
                    rec, i = dec.raw_decode(line, i)
                except ValueError:
                    break
                while i < len(line) and line[i] in " \t":
                    i += 1
                if isinstance(rec, dict) and rec.get("level") in ("error", "fatal"):
                    found = rec.get("msg")
        elif "level=error" in line or "level=fatal" in line:
            _, _, rest = line.partition("msg=")
            found = rest.strip().strip('"')
    return found
