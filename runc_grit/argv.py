"""runc's command line as data: explicit tables of global and per-command flags.

This module is on the pass-through path, so it imports nothing. It parses argv the way
runc's urfave/cli (and crun's argp, runsc's Go flag package) do: ``--flag value``,
``--flag=value``, ``-flag`` with a single dash, short aliases, ``--`` ends flags; and renders a
parsed invocation back to argv. The create -> restore rewrite is a pure function of argv.

The tables hold what runc 1.1-1.4 and crun accept, and runsc's (gVisor's) command flags, so
an argv meant for any of them parses. A flag the tables do not know is never an error here: it is
kept, verbatim and in place, and recorded in ``Invocation.unknown_globals`` /
``unknown_flags``. Its arity is taken from the tokens around it (a global flag followed by a
command name takes no value; one followed by a word and then a command or a flag takes that
word). A pass-through sends argv on unchanged whatever it holds; a restore-on-create refuses an
argv with unknown command flags (``create_to_restore``) rather than guess what they mean.
"""

# Global flags of runc 1.1-1.4 (`runc --help`) and crun 1.8-1.28 (`crun --help`).
# Arity: True takes a value, False takes none, None: either, decided by the next tokens
# (runc's --rootless takes true|false|auto, runsc's --rootless is a boolean).
# runsc's own global flags (runtimes.runsc.RUNSC_GLOBALS) are not listed: the rule for
# unknown flags reads each of them right (a test checks every one), and this module, on the
# path of every runc command, stays small.
GLOBAL_FLAGS = {
    "debug": False, "log": True, "log-format": True, "root": True, "criu": True,
    "systemd-cgroup": False, "rootless": None, "help": False, "version": False,
    "log-level": True, "cgroup-manager": True, "usage": False,  # crun
}
GLOBAL_ALIASES = {"h": "help", "v": "version", "V": "version", "?": "help"}

# Per-command flags. create/run/restore/checkpoint: runc 1.1-1.4, plus crun's and runsc's.
CREATE_FLAGS = {
    "bundle": True, "console-socket": True, "pidfd-socket": True, "pid-file": True,
    "no-pivot": False, "no-new-keyring": False, "preserve-fds": True,
    "config": True,          # crun: -f/--config, the spec file in the bundle
    "no-subreaper": False,   # crun
    "user-log": True,        # runsc
}
COMMAND_FLAGS = {
    "create": CREATE_FLAGS,
    "run": dict(CREATE_FLAGS, **{
        "detach": False, "keep": False, "no-subreaper": False,
        "exec-fd": True, "pass-fd": True,  # runsc
    }),
    "restore": {
        "console-socket": True, "pidfd-socket": True, "image-path": True, "work-path": True,
        "tcp-established": False, "ext-unix-sk": False, "shell-job": False,
        "file-locks": False, "manage-cgroups-mode": True, "bundle": True, "detach": False,
        "pid-file": True, "no-subreaper": False, "no-pivot": False, "empty-ns": True,
        "auto-dedup": False, "lazy-pages": False, "lsm-profile": True,
        "lsm-mount-context": True, "tcp-close": False,
        "direct": False, "background": False,  # runsc
    },
    "checkpoint": {
        "image-path": True, "work-path": True, "parent-path": True, "leave-running": False,
        "tcp-established": False, "ext-unix-sk": False, "shell-job": False,
        "lazy-pages": False, "status-fd": True, "page-server": True, "file-locks": False,
        "pre-dump": False, "manage-cgroups-mode": True, "empty-ns": True,
        "auto-dedup": False, "tcp-skip-in-flight": False, "link-remap": False,
        "compression": True, "direct": False, "exclude-committed": False,  # runsc
    },
    "start": {},
    "delete": {"force": False},
    "state": {},
    "kill": {"all": False, "pid": True},
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
    "create": {"b": "bundle", "f": "config"},
    "run": {"b": "bundle", "d": "detach", "f": "config"},
    "restore": {"b": "bundle", "d": "detach"},
    "delete": {"f": "force"},
    "kill": {"a": "all"},
    "list": {"f": "format", "q": "quiet"},
    "ps": {"f": "format"},
    "exec": {"e": "env", "t": "tty", "u": "user", "g": "additional-gids", "p": "process",
             "d": "detach", "c": "cap"},
}
# Every command name runc, crun or runsc knows: a word after an unknown global flag that is
# one of these is the command, not the flag's value.
COMMANDS = frozenset(COMMAND_FLAGS) | frozenset((
    "features", "spec", "update", "help", "h", "do", "flags", "debug", "wait", "port-forward",
    "read-control", "write-control", "symbolize", "usage", "install", "uninstall", "mitigate",
    "nvproxy", "trace", "boot", "gofer", "umount", "export-metrics", "metric-metadata",
    "metric-server", "checkpoint", "mounts", "init",
))
# create/run/restore/checkpoint take exactly one argument, the container id.
ONE_ID = frozenset(("create", "run", "restore", "checkpoint"))
# Flags that may be given several times; their values accumulate.
REPEATABLE = {"empty-ns", "env", "cap", "additional-gids"}

TRUE_WORDS = ("true", "1", "t", "yes")


class ArgvError(ValueError):
    """argv could not be understood well enough to intercept it."""


class Invocation:
    """A parsed runc command line. ``flags`` keep their order and original spelling; an
    unknown flag is kept as (its raw token, its value or None)."""

    __slots__ = ("globals", "command", "flags", "args", "unknown_globals", "unknown_flags")

    def __init__(self, globals_=None, command=None, flags=None, args=None):
        self.globals = list(globals_ or [])  # [(name, value or None)]
        self.command = command
        self.flags = list(flags or [])        # [(name, value or None)]
        self.args = list(args or [])          # positionals after the command
        self.unknown_globals = [n for n, _ in self.globals if n.startswith("-")]
        self.unknown_flags = [n for n, _ in self.flags if n.startswith("-")]

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


_VALUED = []


def _valued():
    """Flags that take a value wherever they appear (rendered as `--name value`); worked
    out once, when something is rendered (never on the pass-through path)."""
    if not _VALUED:
        tables = [GLOBAL_FLAGS] + list(COMMAND_FLAGS.values())
        valued = {n for t in tables for n, a in t.items() if a is True}
        _VALUED.append(valued - {n for t in tables for n, a in t.items() if a is not True})
    return _VALUED[0]


def _last(pairs, name, default):
    found = default
    for n, v in pairs:
        if n == name:
            found = v
    return found


def _render_flags(pairs):
    """Flags as argv. A value flag's value is a token of its own (unless it looks like a
    flag); a boolean's value is joined with '=': neither urfave/cli nor Go's flag package
    reads `--debug false` as one flag. An unknown flag is its raw token."""
    out = []
    for name, value in pairs:
        if name.startswith("-"):
            out.append(name)
            if value is not None:
                out.append(value)
        elif value is None:
            out.append("--" + name)
        elif name in _valued() and not value.startswith("-"):
            out += ["--" + name, value]
        else:
            out.append("--%s=%s" % (name, value))
    return out


def _split_flag(token, table, aliases):
    """'--log=x' -> ('log', 'x', True); '-d' -> ('detach', None, True); an unknown flag ->
    (token, None, False): the raw token, its inline value left in it."""
    body = token[2:] if token.startswith("--") else token[1:]
    name, eq, inline = body.partition("=")
    name = aliases.get(name, name)
    if name not in table:
        return token, None, False
    return name, (inline if eq else None), True


def _is_flag(tok):
    return tok.startswith("-") and tok not in ("-", "--")


def _global_takes_value(tokens, i):
    """Does the global flag at tokens[i] (no inline value, arity unknown) take tokens[i+1]?
    Not when that is a flag or a command name; otherwise it is its value."""
    nxt = tokens[i + 1] if i + 1 < len(tokens) else None
    return nxt is not None and not nxt.startswith("-") and nxt not in COMMANDS


def _flag_takes_value(tokens, i, one_id):
    """Does the command flag at tokens[i] (unknown) take tokens[i+1]? For commands with one
    positional (the id): yes when another token follows that word."""
    nxt = tokens[i + 1] if i + 1 < len(tokens) else None
    if nxt is None or nxt.startswith("-"):
        return False
    return one_id and i + 2 < len(tokens)


def _parse_globals(tokens):
    pairs, i, n = [], 0, len(tokens)
    while i < n:
        tok = tokens[i]
        if not _is_flag(tok):
            break
        name, inline, known = _split_flag(tok, GLOBAL_FLAGS, GLOBAL_ALIASES)
        arity = GLOBAL_FLAGS.get(name) if known else None
        if known and inline is not None:
            pairs.append((name, inline))
        elif arity is False or (not known and "=" in tok):
            pairs.append((name, inline))
        elif arity is True or _global_takes_value(tokens, i):
            if i + 1 >= n:
                raise ArgvError("flag needs an argument: %s" % tok)
            pairs.append((name, tokens[i + 1]))
            i += 1
        else:
            pairs.append((name, None))
        i += 1
    return pairs, i


def _parse_flags(tokens, i, table, aliases, one_id):
    """Consume command flags from tokens[i:]; return (pairs, next index)."""
    pairs, n = [], len(tokens)
    while i < n:
        tok = tokens[i]
        if not _is_flag(tok):
            break
        name, inline, known = _split_flag(tok, table, aliases)
        if known and table[name] and inline is None:
            if i + 1 >= n:
                raise ArgvError("flag needs an argument: %s" % tok)
            inline = tokens[i + 1]
            i += 1
        elif not known and "=" not in tok and _flag_takes_value(tokens, i, one_id):
            inline = tokens[i + 1]
            i += 1
        pairs.append((name, inline))
        i += 1
    return pairs, i


def parse(tokens):
    """Parse runc argv (without the program name).

    Global and command flags are read with the tables above; unknown ones are kept. The
    command is the first word after the global flags. urfave/cli stops at the first
    positional, and so do we. ArgvError only when a flag that needs a value ends argv.
    """
    tokens = list(tokens)
    globals_, i = _parse_globals(tokens)
    if i >= len(tokens) or tokens[i].startswith("-"):
        if i < len(tokens) and tokens[i] == "--":
            i += 1
        return Invocation(globals_, None, [], tokens[i:])
    command = tokens[i]
    i += 1
    table = COMMAND_FLAGS.get(command)
    if table is None:
        return Invocation(globals_, command, [], tokens[i:])
    flags, i = _parse_flags(tokens, i, table, COMMAND_ALIASES.get(command, {}),
                            command in ONE_ID)
    if i < len(tokens) and tokens[i] == "--":
        i += 1
    return Invocation(globals_, command, flags, tokens[i:])


# --- create -> restore -------------------------------------------------------------------

# Create flags that `restore` accepts under the same name.
_CREATE_KEEPS = ("bundle", "console-socket", "pid-file", "no-pivot", "no-subreaper")
# Create flags `restore` does not have: dropped, and each one reported to the caller.
_CREATE_DROPS = ("no-new-keyring", "preserve-fds", "pidfd-socket", "keep", "user-log")
# Create flags whose meaning a restore cannot honour: the restore is refused.
_CREATE_REFUSES = {
    "config": "restore reads config.json of the bundle; a create with another spec file "
              "(--config) cannot be restored",
    "exec-fd": "runsc run --exec-fd has no restore equivalent",
    "pass-fd": "runsc run --pass-fd has no restore equivalent",
}


def create_to_restore(inv, image_path, work_path=None, detach=True, extra=()):
    """Rewrite a parsed ``create`` (or ``run``) into restore argv. Pure.

    Returns (argv, dropped) where dropped lists the flags restore does not take.
    Global flags are kept as they were, unknown ones too. A create flag this table does not
    know is refused (ArgvError): its meaning for a restore is unknown. ``extra`` are restore
    flags to append (e.g. ("--manage-cgroups-mode", "soft")).
    """
    if inv.command not in ("create", "run"):
        raise ArgvError("not a create or run command: %r" % (inv.command,))
    if len(inv.args) != 1:
        raise ArgvError("%s needs exactly one container id, got %d" % (inv.command, len(inv.args)))
    if inv.unknown_flags:
        raise ArgvError("%s flag %s is unknown to runc-grit, so it cannot be carried over to "
                        "a restore" % (inv.command, ", ".join(inv.unknown_flags)))
    flags = []
    dropped = []
    for name, value in inv.flags:
        if name in _CREATE_REFUSES:
            raise ArgvError(_CREATE_REFUSES[name])
        if name in _CREATE_KEEPS:
            flags.append((name, value))
        elif name == "detach":
            continue  # decided by `detach` below
        elif name in _CREATE_DROPS:
            dropped.append(name)
        else:  # pragma: no cover - the tables above place every create/run flag
            raise ArgvError("%s flag --%s has no place in a restore" % (inv.command, name))
    if inv.command == "create" or detach:
        flags.insert(0, ("detach", None))
    flags.append(("image-path", image_path))
    if work_path:
        flags.append(("work-path", work_path))
    out = _render_flags(inv.globals) + ["restore"] + _render_flags(flags) + list(extra)
    out.append(inv.args[0])
    return out, dropped
