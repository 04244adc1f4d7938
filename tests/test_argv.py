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
    (["--bogus-global", "state", "c1"], None, [], ["--bogus-global", "state", "c1"]),
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
    ["create", "--bogus", "c1"],
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


def test_with_global_does_not_duplicate():
    assert A.with_global(["restore", "c1"], "criu", "/c") == ["--criu", "/c", "restore", "c1"]
    assert A.with_global(["--criu", "/x", "restore", "c1"], "criu", "/c") == ["--criu", "/x", "restore", "c1"]
