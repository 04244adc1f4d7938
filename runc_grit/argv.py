"""runc's command line as data: an explicit table of global and per-command flags.

This module is on the pass-through path, so it imports nothing. It parses argv the way
runc's urfave/cli does (``--flag value``, ``--flag=value``, ``-flag`` with a single dash, short
aliases, ``--`` ends flags), and renders a parsed invocation back to argv. The create -> restore
rewrite is a pure function of argv.
"""

# Flag tables, from runc 1.1/1.2 `--help`. Value: True when the flag takes a value.
# Aliases map to their canonical long name.
GLOBAL_FLAGS = {
    "debug": False, "log": True, "log-format": True, "root": True, "criu": True,
    "systemd-cgroup": False, "rootless": True, "help": False, "version": False,
}
GLOBAL_ALIASES = {"h": "help", "v": "version"}

COMMAND_FLAGS = {
    "create": {
        "bundle": True, "console-socket": True, "pidfd-socket": True, "pid-file": True,
        "no-pivot": False, "no-new-keyring": False, "preserve-fds": True,
    },
    "run": {
        "bundle": True, "console-socket": True, "pidfd-socket": True, "detach": False,
        "keep": False, "pid-file": True, "no-subreaper": False, "no-pivot": False,
        "no-new-keyring": False, "preserve-fds": True,
    },
    "restore": {
        "console-socket": True, "pidfd-socket": True, "image-path": True, "work-path": True,
        "tcp-established": False, "ext-unix-sk": False, "shell-job": False,
        "file-locks": False, "manage-cgroups-mode": True, "bundle": True, "detach": False,
        "pid-file": True, "no-subreaper": False, "no-pivot": False, "empty-ns": True,
        "auto-dedup": False, "lazy-pages": False, "lsm-profile": True,
        "lsm-mount-context": True,
    },
    "checkpoint": {
        "image-path": True, "work-path": True, "parent-path": True, "leave-running": False,
        "tcp-established": False, "ext-unix-sk": False, "shell-job": False,
        "lazy-pages": False, "status-fd": True, "page-server": True, "file-locks": False,
        "pre-dump": False, "manage-cgroups-mode": True, "empty-ns": True,
        "auto-dedup": False, "tcp-skip-in-flight": False, "link-remap": False,
    },
    "start": {},
    "delete": {"force": False},
    "state": {},
    "kill": {"all": False},
    "list": {"format": True, "quiet": False},
    "ps": {"format": True},
    "pause": {},
    "resume": {},
    "events": {"interval": True, "stats": False},
    "exec": {
        "console-socket": True, "pidfd-socket": True, "cwd": True, "env": True,
        "tty": False, "user": True, "additional-gids": True, "process": True,
        "detach": False, "pid-file": True, "process-label": True, "apparmor": True,
        "no-new-privs": False, "cap": True, "preserve-fds": True, "cgroup": True,
        "ignore-paused": False,
    },
}
COMMAND_ALIASES = {
    "create": {"b": "bundle"},
    "run": {"b": "bundle", "d": "detach"},
    "restore": {"b": "bundle", "d": "detach"},
    "delete": {"f": "force"},
    "kill": {"a": "all"},
    "list": {"f": "format", "q": "quiet"},
    "ps": {"f": "format"},
    "exec": {"e": "env", "t": "tty", "u": "user", "g": "additional-gids", "p": "process",
             "d": "detach", "c": "cap"},
}
# Flags that may be given several times; their values accumulate.
REPEATABLE = {"empty-ns", "env", "cap", "additional-gids"}

TRUE_WORDS = ("true", "1", "t", "yes")


class ArgvError(ValueError):
    """argv could not be understood well enough to intercept it."""


class Invocation:
    """A parsed runc command line. ``flags`` keep their order and original spelling."""

    __slots__ = ("globals", "command", "flags", "args")

    def __init__(self, globals_=None, command=None, flags=None, args=None):
        self.globals = list(globals_ or [])  # [(name, value or None)]
        self.command = command
        self.flags = list(flags or [])        # [(name, value or None)]
        self.args = list(args or [])          # positionals after the command

    def __repr__(self):
        return "Invocation(%r, %r, %r, %r)" % (self.globals, self.command, self.flags, self.args)

    def global_value(self, name, default=None):
        return _last(self.globals, name, default)

    def value(self, name, default=None):
        return _last(self.flags, name, default)

    def values(self, name):
        return [v for n, v in self.flags if n == name]

    def has(self, name):
        for n, v in self.flags:
            if n == name:
                return v is None or v.lower() in TRUE_WORDS
        return False

    def has_global(self, name):
        for n, v in self.globals:
            if n == name:
                return v is None or v.lower() in TRUE_WORDS
        return False

    @property
    def container_id(self):
        return self.args[0] if self.args else None

    def render(self):
        """Back to argv (without the program name)."""
        out = _render_flags(self.globals)
        if self.command is not None:
            out.append(self.command)
        out += _render_flags(self.flags)
        if any(a.startswith("-") for a in self.args):
            out.append("--")
        out += self.args
        return out


def _last(pairs, name, default):
    found = default
    for n, v in pairs:
        if n == name:
            found = v
    return found


def _render_flags(pairs):
    out = []
    for name, value in pairs:
        out.append("--" + name)
        if value is not None:
            out.append(value)
    return out


def _split_flag(token, table, aliases):
    """'--log=x' -> ('log', 'x'); '-d' -> ('detach', None). None if not a known flag."""
    body = token[2:] if token.startswith("--") else token[1:]
    name, eq, inline = body.partition("=")
    name = aliases.get(name, name)
    if name not in table:
        return None
    return name, (inline if eq else None)


def _parse_flags(tokens, i, table, aliases, strict):
    """Consume flags from tokens[i:]; return (pairs, next index)."""
    pairs = []
    n = len(tokens)
    while i < n:
        tok = tokens[i]
        if tok == "--" or not tok.startswith("-") or tok == "-":
            break
        split = _split_flag(tok, table, aliases)
        if split is None:
            if strict:
                raise ArgvError("flag provided but not defined: %s" % tok)
            break
        name, inline = split
        if table[name]:
            if inline is None:
                if i + 1 >= n:
                    raise ArgvError("flag needs an argument: %s" % tok)
                inline = tokens[i + 1]
                i += 1
            pairs.append((name, inline))
        else:
            pairs.append((name, inline))
        i += 1
    return pairs, i


def parse(tokens):
    """Parse runc argv (without the program name).

    Global flags are read with runc's table. An unknown global flag ends the parse with
    command None (the runtime will report it). Command flags are parsed strictly only for
    commands in COMMAND_FLAGS; urfave/cli stops at the first positional, and so do we.
    """
    tokens = list(tokens)
    globals_, i = _parse_flags(tokens, 0, GLOBAL_FLAGS, GLOBAL_ALIASES, strict=False)
    if i >= len(tokens) or tokens[i].startswith("-"):
        return Invocation(globals_, None, [], tokens[i:])
    command = tokens[i]
    i += 1
    table = COMMAND_FLAGS.get(command)
    if table is None:
        return Invocation(globals_, command, [], tokens[i:])
    flags, i = _parse_flags(tokens, i, table, COMMAND_ALIASES.get(command, {}), strict=True)
    if i < len(tokens) and tokens[i] == "--":
        i += 1
    # urfave/cli v1 stops at the first positional: what follows are arguments.
    return Invocation(globals_, command, flags, tokens[i:])


# --- create -> restore -------------------------------------------------------------------

# Create flags that `restore` accepts under the same name.
_CREATE_KEEPS = ("bundle", "console-socket", "pid-file", "no-pivot")
# Create flags `restore` does not have: dropped, and each one reported to the caller.
_CREATE_DROPS = ("no-new-keyring", "preserve-fds", "pidfd-socket", "keep")


def create_to_restore(inv, image_path, work_path=None, detach=True, extra=()):
    """Rewrite a parsed ``create`` (or ``run``) into restore argv. Pure.

    Returns (argv, dropped) where dropped lists the flags restore does not take.
    Global flags are kept as they were. ``extra`` are restore flags to append
    (e.g. ("--manage-cgroups-mode", "soft")).
    """
    if inv.command not in ("create", "run"):
        raise ArgvError("not a create or run command: %r" % (inv.command,))
    if len(inv.args) != 1:
        raise ArgvError("%s needs exactly one container id, got %d" % (inv.command, len(inv.args)))
    flags = []
    dropped = []
    for name, value in inv.flags:
        if name in _CREATE_KEEPS:
            flags.append((name, value))
        elif name == "no-subreaper":
            flags.append((name, value))
        elif name == "detach":
            continue  # decided by `detach` below
        elif name in _CREATE_DROPS:
            dropped.append(name)
        else:  # pragma: no cover - the table above lists every create/run flag
            dropped.append(name)
    if inv.command == "create" or detach:
        flags.insert(0, ("detach", None))
    flags.append(("image-path", image_path))
    if work_path:
        flags.append(("work-path", work_path))
    out = _render_flags(inv.globals) + ["restore"] + _render_flags(flags) + list(extra)
    out.append(inv.args[0])
    return out, dropped


def with_global(argv_tokens, name, value):
    """Insert a global flag in front of the command unless it is already there. Pure."""
    inv = parse(argv_tokens)
    if any(n == name for n, _ in inv.globals):
        return list(argv_tokens)
    pairs = [(name, value)]
    return _render_flags(pairs) + list(argv_tokens)
