"""Table tests: runc argv parsing and the create -> restore rewrite (pure functions)."""
import pytest

from runc_grit import argv as A

CONTAINERD_GLOBALS = ["--root", "/run/containerd/runc/k8s.io", "--log", "/b/log.json",
                      "--log-format", "json"]


@pytest.mark.parametrize("tokens, command, flags, args", [
    (CONTAINERD_GLOBALS + ["create", "--bundle", "/b", "--pid-file", "/b/init.pid", "c1"],
     "create", [("bundle", "/b"), ("pid-file", "/b/init.pid")], ["c1"]),
    (CONTAINERD_GLOBALS + ["create", "--bundle", "/b", "--pid-file", "/b/init.pid",
                           "--console-socket", "/tmp/s.sock", "--no-pivot", "--no-new-keyring", "c1"],
     "create", [("bundle", "/b"), ("pid-file", "/b/init.pid"), ("console-socket", "/tmp/s.sock"),
                ("no-pivot", None), ("no-new-keyring", None)], ["c1"]),
    (["--root=/r", "-log", "/l", "create", "-b", "/b", "--pid-file=/p", "c1"],
     "create", [("bundle", "/b"), ("pid-file", "/p")], ["c1"]),
    (CONTAINERD_GLOBALS + ["restore", "--image-path", "/img", "--work-path", "/w", "--detach",
                           "--pid-file", "/b/init.pid", "--no-pivot", "-no-subreaper",
                           "--bundle", "/b", "c1"],
     "restore", [("image-path", "/img"), ("work-path", "/w"), ("detach", None),
                 ("pid-file", "/b/init.pid"), ("no-pivot", None), ("no-subreaper", None),
                 ("bundle", "/b")], ["c1"]),
    (["checkpoint", "--image-path", "/i", "--leave-running", "c1"],
     "checkpoint", [("image-path", "/i"), ("leave-running", None)], ["c1"]),
    (["--debug", "state", "c1"], "state", [], ["c1"]),
    (["kill", "c1", "KILL"], "kill", [], ["c1", "KILL"]),
    (["delete", "-f", "c1"], "delete", [("force", None)], ["c1"]),
    (["features"], "features", [], []),          # unknown to the table: passed on as is
    (["--version"], None, [], []),
    (["--bogus-global", "state", "c1"], "state", [], ["c1"]),          # kept, see below
    (["exec", "-t", "--env", "A=1", "-e", "B=2", "c1", "sh"], "exec",
     [("tty", None), ("env", "A=1"), ("env", "B=2")], ["c1", "sh"]),
    (["start", "--", "c1"], "start", [], ["c1"]),
])
def test_parse(tokens, command, flags, args):
    inv = A.parse(tokens)
    assert inv.command == command
    assert inv.flags == flags
    assert inv.args == args


def test_globals_read_from_containerd_argv():
    inv = A.parse(CONTAINERD_GLOBALS + ["state", "c1"])
    assert inv.global_value("root") == "/run/containerd/runc/k8s.io"
    assert inv.global_value("log") == "/b/log.json"
    assert inv.global_value("log-format") == "json"
    assert not inv.has_global("debug")


@pytest.mark.parametrize("tokens", [
    ["create", "--bundle"],
    ["checkpoint", "--image-path"],
])
def test_parse_errors(tokens):
    with pytest.raises(A.ArgvError):
        A.parse(tokens)


@pytest.mark.parametrize("create_tail, expected_tail, dropped", [
    # containerd's plain create
    (["create", "--bundle", "/b", "--pid-file", "/b/init.pid", "c1"],
     ["restore", "--detach", "--bundle", "/b", "--pid-file", "/b/init.pid",
      "--image-path", "/img", "--work-path", "/w", "c1"], []),
    # terminal container, no-pivot, no-new-keyring (restore has no such flag: dropped)
    (["create", "--bundle", "/b", "--pid-file", "/b/init.pid", "--console-socket", "/s",
      "--no-pivot", "--no-new-keyring", "c1"],
     ["restore", "--detach", "--bundle", "/b", "--pid-file", "/b/init.pid",
      "--console-socket", "/s", "--no-pivot", "--image-path", "/img", "--work-path", "/w", "c1"],
     ["no-new-keyring"]),
    # preserve-fds and pidfd-socket have no restore equivalent
    (["create", "--preserve-fds", "2", "--pidfd-socket", "/pfd", "-b", "/b", "c1"],
     ["restore", "--detach", "--bundle", "/b", "--image-path", "/img", "--work-path", "/w", "c1"],
     ["preserve-fds", "pidfd-socket"]),
    # run -d keeps --detach once; --keep dropped; -no-subreaper kept
    (["run", "-d", "--keep", "-no-subreaper", "-b", "/b", "c1"],
     ["restore", "--detach", "--no-subreaper", "--bundle", "/b", "--image-path", "/img",
      "--work-path", "/w", "c1"], ["keep"]),
])
def test_create_to_restore(create_tail, expected_tail, dropped):
    inv = A.parse(CONTAINERD_GLOBALS + create_tail)
    out, drop = A.create_to_restore(inv, "/img", "/w", detach=inv.command == "create" or inv.has("detach"))
    assert out == CONTAINERD_GLOBALS + expected_tail
    assert drop == dropped
    # the result is valid runc restore argv by our own table
    back = A.parse(out)
    assert back.command == "restore" and back.args == ["c1"]


def test_run_in_foreground_is_not_detached():
    inv = A.parse(["run", "-b", "/b", "c1"])
    out, _ = A.create_to_restore(inv, "/img", None, detach=False)
    assert out == ["restore", "--bundle", "/b", "--image-path", "/img", "c1"]


def test_rewrite_rejects_non_create():
    with pytest.raises(A.ArgvError):
        A.create_to_restore(A.parse(["state", "c1"]), "/img")
    with pytest.raises(A.ArgvError):
        A.create_to_restore(A.parse(["create", "a", "b"]), "/img")


def test_render_round_trip():
    tokens = CONTAINERD_GLOBALS + ["checkpoint", "--image-path", "/i", "--leave-running", "c1"]
    assert A.parse(tokens).render() == tokens


# --- every runtime's flags ----------------------------------------------------------------
# (runtime, global flags as that runtime's users write them, what runc-grit reads of them)
GLOBALS_OF = [
    ("runc 1.1-1.4", ["--root", "/r", "--log", "/l", "--log-format", "json", "--debug",
                      "--systemd-cgroup", "--rootless", "auto", "--criu", "/c"],
     {"root": "/r", "log": "/l", "log-format": "json", "rootless": "auto", "criu": "/c"}),
    ("runc, = forms", ["--root=/r", "-log=/l", "--rootless=false", "--debug=true"],
     {"root": "/r", "log": "/l", "rootless": "false"}),
    ("crun", ["--root=/r", "--log=file:/l", "--log-format=json", "--log-level=debug",
              "--cgroup-manager=systemd", "--systemd-cgroup", "--debug"],
     {"root": "/r", "log": "file:/l", "log-level": "debug", "cgroup-manager": "systemd"}),
]


@pytest.mark.parametrize("runtime, globals_, values", GLOBALS_OF, ids=[g[0] for g in GLOBALS_OF])
@pytest.mark.parametrize("tail", [["create", "--bundle", "/b", "c1"], ["state", "c1"]])
def test_global_flags_of_every_runtime(runtime, globals_, values, tail):
    inv = A.parse(globals_ + tail)
    assert inv.command == tail[0] and inv.args == ["c1"]
    assert inv.unknown_globals == []
    for name, value in values.items():
        assert inv.global_value(name) == value
    # rendered back, every runtime reads the same flags
    again = A.parse(inv.render())
    assert again.globals == inv.globals and again.command == inv.command


def _runsc_globals():
    from runc_grit.runtimes.runsc import RUNSC_GLOBALS
    return sorted(RUNSC_GLOBALS.items())


@pytest.mark.parametrize("name, valued", _runsc_globals())
@pytest.mark.parametrize("dash", ["--", "-"])
def test_every_runsc_global_flag_is_read_right(name, valued, dash):
    """runsc's 88 global flags are not in the parser's table (it is on every runc call's
    path); the rule for unknown flags reads each of them as runsc does, and keeps it."""
    flag = dash + name
    tokens = ([flag, "v", "--systemd-cgroup", "create", "c1"] if valued
              else [flag, "create", "-b", "/b", "c1"])
    inv = A.parse(tokens)
    assert inv.command == "create" and inv.args == ["c1"]
    got = dict(inv.globals)
    if name in A.GLOBAL_FLAGS:  # shared with runc (root, log, debug, ...): known
        assert got[name] == ("v" if valued else None)
    else:
        assert got[flag] == ("v" if valued else None) and inv.unknown_globals == [flag]
    assert inv.render() == tokens or A.parse(inv.render()).globals == inv.globals
    # with its value joined: one token
    inv = A.parse(["%s=%s" % (flag, "x" if valued else "true"), "state", "c1"])
    assert inv.command == "state" and inv.args == ["c1"]


def test_runsc_globals_survive_translation_for_runsc():
    from runc_grit.runtimes import runsc
    inv = A.parse(["--network=none", "--nvproxy", "--root", "/r", "--criu", "/c", "create",
                   "-b", "/b", "c1"])
    out, dropped = runsc.to_runsc(inv)
    assert out[:4] == ["--network=none", "--nvproxy", "--root", "/r"] and dropped == ["criu"]


# create flags: (runtime, create argv tail, flags read)
CREATE_OF = [
    ("runc 1.1", ["--bundle", "/b", "--console-socket", "/s", "--pid-file", "/p", "--no-pivot",
                  "--no-new-keyring", "--preserve-fds", "2"],
     [("bundle", "/b"), ("console-socket", "/s"), ("pid-file", "/p"), ("no-pivot", None),
      ("no-new-keyring", None), ("preserve-fds", "2")]),
    ("runc 1.2-1.4", ["-b", "/b", "--pidfd-socket", "/pfd", "--pid-file=/p"],
     [("bundle", "/b"), ("pidfd-socket", "/pfd"), ("pid-file", "/p")]),
    ("crun", ["--bundle=/b", "-f", "other.json", "--no-subreaper", "--preserve-fds=1"],
     [("bundle", "/b"), ("config", "other.json"), ("no-subreaper", None), ("preserve-fds", "1")]),
    ("runsc", ["-bundle", "/b", "-console-socket", "/s", "-pid-file", "/p", "-user-log", "/u"],
     [("bundle", "/b"), ("console-socket", "/s"), ("pid-file", "/p"), ("user-log", "/u")]),
]


@pytest.mark.parametrize("runtime, tail, flags", CREATE_OF, ids=[c[0] for c in CREATE_OF])
def test_create_flags_of_every_runtime(runtime, tail, flags):
    inv = A.parse(["create"] + tail + ["c1"])
    assert inv.flags == flags and inv.args == ["c1"] and inv.unknown_flags == []


@pytest.mark.parametrize("tokens, globals_, command, args", [
    # an unknown global flag before a command: no value
    (["--future", "create", "c1"], [("--future", None)], "create", ["c1"]),
    # ... with a word, then the command: the word is its value
    (["--future", "v", "--root", "/r", "state", "c1"], [("--future", "v"), ("root", "/r")],
     "state", ["c1"]),
    (["--future=v", "create", "c1"], [("--future=v", None)], "create", ["c1"]),
    (["-single-dash", "kill", "c1"], [("-single-dash", None)], "kill", ["c1"]),
    (["--weird-future-flag", "x", "newcmd"], [("--weird-future-flag", "x")], "newcmd", []),
])
def test_unknown_global_flags_are_kept_in_place(tokens, globals_, command, args):
    inv = A.parse(tokens)
    assert inv.globals == globals_ and inv.command == command and inv.args == args
    assert inv.unknown_globals == [g[0] for g in globals_ if g[0].startswith("-")]
    assert inv.render() == tokens


@pytest.mark.parametrize("tail, flags", [
    (["--future", "--bundle", "/b", "c1"], [("--future", None), ("bundle", "/b")]),
    (["--future", "x", "-b", "/b", "c1"], [("--future", "x"), ("bundle", "/b")]),
    (["--future=x", "c1"], [("--future=x", None)]),
    (["-b", "/b", "--future", "c1"], [("bundle", "/b"), ("--future", None)]),
])
def test_unknown_create_flags_are_kept(tail, flags):
    inv = A.parse(["create"] + tail)
    assert inv.flags == flags and inv.args == ["c1"]
    assert inv.unknown_flags == [f[0] for f in flags if f[0].startswith("-")]


def test_unknown_globals_survive_create_to_restore():
    inv = A.parse(["--network=none", "--future", "v", "--root", "/r", "create", "-b", "/b", "c1"])
    out, _ = A.create_to_restore(inv, "/img")
    assert out == ["--network=none", "--future", "v", "--root", "/r", "restore", "--detach",
                   "--bundle", "/b", "--image-path", "/img", "c1"]


@pytest.mark.parametrize("tail, why", [
    (["--future", "-b", "/b", "c1"], "--future is unknown"),
    (["-f", "other.json", "c1"], "--config"),
    (["--exec-fd", "3", "c1"], "exec-fd"),
])
def test_create_to_restore_refuses_what_it_cannot_carry(tail, why):
    with pytest.raises(A.ArgvError, match=why):
        A.create_to_restore(A.parse(["create"] + tail), "/img")


def test_boolean_flags_with_values_render_joined():
    """urfave/cli and Go's flag package read `--debug false` as a flag and an argument."""
    inv = A.parse(["--debug=false", "--nvproxy=true", "--rootless=false", "delete", "--force=true",
                   "c1"])
    assert inv.render() == ["--debug=false", "--nvproxy=true", "--rootless=false", "delete",
                            "--force=true", "c1"]
