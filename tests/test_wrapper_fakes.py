"""runc-grit as a subprocess, with a recording fake runtime on PATH (no root needed)."""
import json
import os
import subprocess
import sys

import pytest

from conftest import FAKES, GRIT, GRIT_ENV, REPO
from test_units import make_images


@pytest.fixture
def fenv(tmp_path):
    state = tmp_path / "state"
    ck = tmp_path / "ck"
    ck.mkdir()
    conf = tmp_path / "config.yaml"
    # the fake runtime restores fake images: no signature, no credentials to compare (an
    # explicit choice, as a node's config would have to make it)
    conf.write_text("runtime: fake-runtime\nstate_dir: %s\ncheckpoint_roots: [%s]\n"
                    "require_signature: false\nprivilege_check: 'off'\nstaging_dir: %s\n"
                    % (state, ck, tmp_path / "staging"))
    env = dict(os.environ)
    env.update(PATH=FAKES + os.pathsep + env["PATH"], RUNC_GRIT_CONFIG=str(conf),
               FAKE_RUNTIME_LOG=str(tmp_path / "calls.jsonl"),
               FAKE_RUNTIME_STATE_DIR=str(tmp_path), **GRIT_ENV)

    class F:
        pass
    f = F()
    f.tmp, f.env, f.state, f.ck, f.conf = tmp_path, env, state, ck, conf

    def run(*args):
        return subprocess.run(GRIT + list(args), env=env,
                              capture_output=True, timeout=60)

    def calls():
        p = tmp_path / "calls.jsonl"
        return [json.loads(ln) for ln in p.read_text().splitlines()] if p.exists() else []

    def bundle(name, annotations=None):
        b = tmp_path / name
        b.mkdir()
        spec = {"ociVersion": "1.0.2", "process": {"args": ["sh"]}, "root": {"path": "rootfs"},
                "x-unknown": {"keep": "me"}}
        if annotations:
            spec["annotations"] = annotations
        (b / "config.json").write_text(json.dumps(spec))
        return b

    f.run, f.calls, f.bundle = run, calls, bundle
    return f


@pytest.mark.parametrize("args", [
    ["state", "c1"],
    ["--root", "/r", "--log", "/l.json", "--log-format", "json", "kill", "c1", "SIGTERM"],
    ["--debug", "--systemd-cgroup", "ps", "--format", "json", "c1"],
    ["exec", "-t", "--env", "A=1 2", "c1", "sh", "-c", "echo 'x y'"],
    ["--rootless=false", "list", "-q"],
    ["features"],
    ["--version"],
    ["pause", "c1"], ["resume", "c1"], ["events", "--stats", "c1"],
    ["update", "--memory", "1G", "c1"],
    ["start", "c-unknown"],
    ["delete", "c-unknown"],
    ["--weird-future-flag", "x", "newcmd"],
])
def test_passthrough_is_byte_for_byte(fenv, args):
    (fenv.tmp / "c1").write_text("")  # the fake runtime knows c1
    p = fenv.run(*args)
    assert p.returncode == 0, p.stderr
    calls = fenv.calls()
    assert [c["argv"] for c in calls] == [args]
    assert p.stderr == b""


@pytest.mark.parametrize("style", ["[--network=none, --debug-log=/x/]",  # fast reader
                                   "\n  - --network=none\n  - --debug-log=/x/"])  # full loader
def test_runtime_flags_go_in_front_of_every_command(fenv, style):
    """runtime_flags (e.g. runsc's) come first on pass-through and on intercepted commands;
    the caller's argv follows unchanged."""
    fenv.conf.write_text(fenv.conf.read_text() + "runtime_flags: %s\n" % style)
    (fenv.tmp / "c1").write_text("")
    flags = ["--network=none", "--debug-log=/x/"]
    kill = ["--root", "/r", "kill", "c1", "SIGTERM"]
    assert fenv.run(*kill).returncode == 0
    b = fenv.bundle("b")
    create = ["--root", "/r", "create", "--bundle", str(b), "c2"]
    assert fenv.run(*create).returncode == 0
    assert [c["argv"] for c in fenv.calls()] == [flags + kill, flags + create]


def test_passthrough_keeps_exit_code_and_stdio(fenv):
    fenv.env["FAKE_RUNTIME_FAIL"] = "kill"
    p = fenv.run("kill", "c1")
    assert p.returncode == 1


@pytest.mark.parametrize("config_text", [
    None,
    # what install.sh writes (indented block lists), and what yaml.safe_dump writes (flush-left)
    "checkpoint_roots:\n  - /var/lib/ck\nstate_dir: /run/g\non_restore_failure: fail\n",
    "checkpoint_roots:\n- /var/lib/ck\n- /srv/ck\nstate_dir: /run/g\ntrusted_keys:\n- /etc/k\n",
])
def test_passthrough_imports_nothing_heavy(tmp_path, config_text):
    """Run like the launcher (python -S): the pass-through loads neither click/yaml/jsonschema
    nor even os; it execs through posix."""
    conf = "/nonexistent/config.yaml"
    if config_text is not None:
        conf = str(tmp_path / "config.yaml")
        with open(conf, "w") as f:
            f.write(config_text)
    code = (
        "import posix, sys\n"
        "posix.execv = lambda path, argv: (print(sorted({m.split('.')[0] for m in sys.modules}"
        " & {'os','click','yaml','jsonschema','json','subprocess','runc_grit.config'})),"
        " print(sorted(m for m in sys.modules if m.startswith('runc_grit'))), print(argv),"
        " sys.exit(0))\n"
        "sys.path.insert(0, %r)\n"
        "from runc_grit.entry import main\n"
        "main(['--root', '/r', 'state', 'c1'])\n" % REPO)
    p = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, env=dict(
        os.environ, RUNC_GRIT_CONFIG=conf, RUNC_GRIT_RUNTIME="/bin/true"),
        timeout=30)
    out = p.stdout.decode().splitlines()
    assert out[0] == "[]", p.stdout + p.stderr
    assert out[1] == "['runc_grit', 'runc_grit.argv', 'runc_grit.entry', 'runc_grit.fastconf']"
    assert out[2] == "['/bin/true', '--root', '/r', 'state', 'c1']"


def test_create_injects_criu_config_then_execs_runtime(fenv):
    b = fenv.bundle("b1", {"keep": "this"})
    args = ["--root", "/r", "--log", str(b / "log.json"), "--log-format", "json",
            "create", "--bundle", str(b), "--pid-file", str(b / "init.pid"), "c1"]
    p = fenv.run(*args)
    assert p.returncode == 0, (p.stderr, (b / "log.json").read_text() if (b / "log.json").exists() else "")
    assert [c["argv"] for c in fenv.calls()][-1] == args  # create itself unchanged
    spec = json.loads((b / "config.json").read_text())
    conf_path = spec["annotations"]["org.criu.config"]
    assert spec["annotations"]["keep"] == "this" and spec["x-unknown"] == {"keep": "me"}
    assert os.path.dirname(conf_path) == str(fenv.state / "criu")
    text = open(conf_path).read()
    assert "action-script " in text and "external mnt[]" in text
    hook = [ln.split(None, 1)[1] for ln in text.splitlines() if ln.startswith("action-script")][0]
    assert os.access(hook, os.X_OK)


def test_bundle_reused_is_written_once_and_stays_valid(fenv):
    """runc never writes the bundle; runc-grit's one change is the same for every container
    and outlives them: a second create, after the first container is deleted, finds
    config.json as it left it and does not write it again."""
    b = fenv.bundle("b1")
    assert _create(fenv, b, "c1").returncode == 0
    after_first = (b / "config.json").read_bytes()
    st = os.stat(b / "config.json")
    conf_path = json.loads(after_first)["annotations"]["org.criu.config"]
    assert fenv.run("--root", "/r", "delete", "c1").returncode == 0
    assert not (fenv.state / "c1").exists() and os.path.exists(conf_path)
    p = _create(fenv, b, "c2")
    assert p.returncode == 0, p.stderr
    assert (b / "config.json").read_bytes() == after_first
    assert os.stat(b / "config.json").st_mtime_ns == st.st_mtime_ns
    assert [c["argv"][6] for c in fenv.calls() if "create" in c["argv"]] == ["create", "create"]


def test_bundle_own_criu_config_is_kept_across_creates(fenv, tmp_path):
    mine = tmp_path / "mine.conf"
    mine.write_text("link-remap\n")
    b = fenv.bundle("b1", {"org.criu.config": str(mine)})
    for cid in ("c1", "c2"):
        assert _create(fenv, b, cid).returncode == 0
        ann = json.loads((b / "config.json").read_text())["annotations"]
        assert ann["grit.dev/criu-config"] == str(mine)
        text = open(ann["org.criu.config"]).read()
        assert "link-remap" in text and "action-script" in text


def test_unknown_global_flag_never_turns_a_restore_into_a_fresh_start(fenv):
    """GRIT's failure: a create asking for a restore that started fresh. An unknown global
    flag (runsc's --network=none here, or any flag a newer runtime adds) is passed on, and
    the create still becomes a restore."""
    img = make_images(str(fenv.ck / "img"))
    b = fenv.bundle("b2", {"grit.dev/restore-from": img})
    p = fenv.run("--future-global", "--root", "/r", "--log", str(b / "log.json"), "--log-format",
                 "json", "create", "--bundle", str(b), "c2")
    assert p.returncode == 0, (b / "log.json").read_text()
    argv = [c["argv"] for c in fenv.calls()]
    assert not any("create" in a for a in argv)
    restore = [a for a in argv if "restore" in a][0]
    assert restore[:3] == ["--future-global", "--root", "/r"]


@pytest.mark.parametrize("tail", [
    ["create", "--future-flag", "--bundle", "{b}", "c3"],  # a create flag runc-grit lacks
    ["create", "--bundle", "{b}", "c3", "extra"],          # not one id
])
def test_argv_not_understood_with_restore_is_refused(fenv, tail):
    img = make_images(str(fenv.ck / "img3"))
    b = fenv.bundle("b3", {"grit.dev/restore-from": img})
    args = ["--log", str(b / "log.json"), "--log-format", "json"] + [t.format(b=b) for t in tail]
    p = fenv.run(*args)
    assert p.returncode == 1 and fenv.calls() == []
    msg = _log_lines(b)[-1]["msg"]
    assert "refused" in msg and img in msg
    assert not (fenv.state / "c3").exists()


def test_unknown_create_flag_without_restore_passes_through(fenv):
    b = fenv.bundle("b4")
    args = ["create", "--future-flag", "--bundle", str(b), "c4"]
    assert fenv.run(*args).returncode == 0
    assert fenv.calls()[-1]["argv"] == args


def test_log_lines_are_runcs_compact_json(fenv):
    b = fenv.bundle("b5", {"grit.dev/restore-from": "/nonexistent-root/img"})
    _create(fenv, b, "c5")
    raw = (b / "log.json").read_text().splitlines()[-1]
    assert raw.startswith('{"level":"error","msg":"runc-grit: ') and ', "' not in raw
    import re
    assert re.search(r'"time":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)"}$', raw)


def test_help_is_the_runtimes_then_ours(fenv):
    p = fenv.run("--help")
    assert p.returncode == 0
    assert fenv.calls()[-1]["argv"] == ["--help"]
    out = p.stdout.decode()
    assert "runc-grit's own commands" in out and "doctor" in out and "inspect" in out


def _create(fenv, b, cid):
    return fenv.run("--root", "/r", "--log", str(b / "log.json"), "--log-format", "json",
                    "create", "--bundle", str(b), "--pid-file", str(b / "init.pid"), cid)


def _log_lines(b):
    return [json.loads(ln) for ln in (b / "log.json").read_text().splitlines()]


def test_restore_on_create_rewrites_to_restore_and_start_skips_runtime(fenv):
    fenv.conf.write_text(fenv.conf.read_text() + "staging: copy\n")
    img = make_images(str(fenv.ck / "img"))
    b = fenv.bundle("b2", {"grit.dev/restore-from": img})
    p = _create(fenv, b, "c2")
    assert p.returncode == 0, (b / "log.json").read_text() if (b / "log.json").exists() else p.stderr
    argv = [c["argv"] for c in fenv.calls()]
    restore = [a for a in argv if "restore" in a]
    assert restore and restore[0][:6] == ["--root", "/r", "--log", str(b / "log.json"),
                                          "--log-format", "json"]
    r = restore[0]
    assert r[6] == "restore" and "--detach" in r and r[-1] == "c2"
    # restored from the verified, root-only copy of img (staging: copy), gone afterwards
    staged = r[r.index("--image-path") + 1]
    assert os.path.dirname(staged) == str(fenv.tmp / "staging") and not os.path.exists(staged)
    assert r[r.index("--bundle") + 1] == str(b)
    assert not any("create" in a for a in argv)
    # the action script finds this container's state through the runtime's environment
    assert [c for c in fenv.calls() if "restore" in c["argv"]][0]["grit_state"] == str(fenv.state / "c2")
    n = len(fenv.calls())
    p = fenv.run("--root", "/r", "start", "c2")
    assert p.returncode == 0
    assert [c["argv"] for c in fenv.calls()[n:]] == [["--root", "/r", "state", "c2"]]
    # a second start is the runtime's business again
    fenv.run("--root", "/r", "start", "c2")
    assert fenv.calls()[-1]["argv"] == ["--root", "/r", "start", "c2"]
    # delete goes to the runtime and removes runc-grit's state
    p = fenv.run("--root", "/r", "delete", "c2")
    assert p.returncode == 0 and fenv.calls()[-1]["argv"] == ["--root", "/r", "delete", "c2"]
    assert not (fenv.state / "c2").exists()


@pytest.mark.parametrize("annotation, why", [
    ("/nonexistent-root/img", "outside the checkpoint roots"),
    ("relative/img", "not an absolute path"),
])
def test_refused_source_never_reaches_runtime(fenv, annotation, why):
    b = fenv.bundle("b3", {"grit.dev/restore-from": annotation})
    p = _create(fenv, b, "c3")
    assert p.returncode == 1
    assert fenv.calls() == []
    last = _log_lines(b)[-1]
    assert last["level"] == "error" and why in last["msg"]
    assert not (fenv.state / "c3").exists()
    assert p.stdout == b""


def test_malformed_config_json(fenv):
    b = fenv.tmp / "b4"
    b.mkdir()
    (b / "config.json").write_text('{"process": ')
    p = _create(fenv, b, "c4")
    assert p.returncode == 1 and fenv.calls() == []
    assert "malformed config.json" in _log_lines(b)[-1]["msg"]


def test_bad_yaml_config_is_reported_in_log(fenv):
    fenv.conf.write_text("runtime: fake-runtime\ncheckpoint_roots: [\n")
    b = fenv.bundle("b5", {"grit.dev/restore-from": "/x"})
    p = _create(fenv, b, "c5")
    assert p.returncode == 1 and fenv.calls() == []
    assert "bad YAML" in _log_lines(b)[-1]["msg"]


def test_fresh_policy_creates_normally_with_a_warning(fenv):
    b = fenv.bundle("b6", {"grit.dev/restore-from": str(fenv.ck / "missing"),
                           "grit.dev/restore-policy": "fresh"})
    p = _create(fenv, b, "c6")
    assert p.returncode == 0
    assert fenv.calls()[-1]["argv"][6] == "create"
    assert not any("restore" in c["argv"] for c in fenv.calls())
    lines = _log_lines(b)
    assert lines[-1]["level"] == "warning" and "policy 'fresh'" in lines[-1]["msg"]


def test_failed_restore_cleans_up(fenv):
    img = make_images(str(fenv.ck / "img2"))
    b = fenv.bundle("b7", {"grit.dev/restore-from": img})
    fenv.env["FAKE_RUNTIME_FAIL"] = "restore"
    p = _create(fenv, b, "c7")
    assert p.returncode == 1
    argv = [c["argv"] for c in fenv.calls()]
    assert any("restore" in a for a in argv)
    assert any("delete" in a and "--force" in a for a in argv)   # nothing left behind
    msg = _log_lines(b)[-1]["msg"]
    assert "restore from %s failed" % img in msg and "fake runtime: restore failed" in msg
    assert not (fenv.state / "c7").exists()


def test_operator_commands_do_not_reach_runtime(fenv):
    p = fenv.run("config", "show")
    assert p.returncode == 0 and b"runtime: fake-runtime" in p.stdout
    assert fenv.calls() == []


def test_checkpoint_status_fd_reaches_the_runtime(fenv):
    """runc writes to --status-fd N when a lazy dump is ready: fd N must reach it."""
    (fenv.tmp / "c1").write_text("")
    r, w = os.pipe()
    try:
        p = subprocess.run(GRIT + ["checkpoint", "--image-path", str(fenv.ck / "img"),
                                   "--status-fd", str(w), "c1"],
                           env=fenv.env, capture_output=True, timeout=60, pass_fds=(w,))
    finally:
        os.close(r)
        os.close(w)
    assert p.returncode == 0, p.stderr
    ck = [c for c in fenv.calls() if "checkpoint" in c["argv"]][-1]
    assert w in ck["fds"]


@pytest.fixture
def crunenv(fenv):
    """The fake runtime as `crun` (runc-grit picks its crun strategy by the name), doing what
    crun does differently from runc."""
    bindir = fenv.tmp / "crun-bin"
    bindir.mkdir()
    os.symlink(os.path.join(FAKES, "fake-runtime"), bindir / "crun")
    fenv.conf.write_text(fenv.conf.read_text().replace("runtime: fake-runtime", "runtime: crun"))
    fenv.env.update(PATH="%s:%s" % (bindir, fenv.env["PATH"]), FAKE_RUNTIME_LIKE="crun")
    return fenv


def test_crun_checkpointed_container_deletes_cleanly(crunenv):
    """crun removes a container it checkpointed, and its own `delete` then fails in words
    containerd's shim does not read as "already gone" (runc's "does not exist"): the CRI
    task would never finish exiting. runc-grit's delete succeeds."""
    f = crunenv
    (f.tmp / "c1").write_text("")
    p = f.run("checkpoint", "--image-path", str(f.ck / "img"), "c1")
    assert p.returncode == 0, p.stderr
    assert not (f.tmp / "c1").exists()  # the fake crun removed it
    direct = subprocess.run(["crun", "delete", "c1"], env=f.env, capture_output=True)
    assert direct.returncode == 1 and b"error opening file" in direct.stderr
    p = f.run("--root", "/r", "--log", str(f.tmp / "log.json"), "delete", "c1")
    assert p.returncode == 0, p.stderr
    assert not (f.state / "c1").exists()
    # the next delete is crun's own again
    assert f.run("delete", "c1").returncode == 1


def test_crun_leave_running_checkpoint_keeps_delete_as_crun_has_it(crunenv):
    f = crunenv
    (f.tmp / "c1").write_text("")
    p = f.run("checkpoint", "--leave-running", "--image-path", str(f.ck / "img"), "c1")
    assert p.returncode == 0, p.stderr
    assert (f.tmp / "c1").exists()
    assert f.run("delete", "c1").returncode == 0
    assert f.run("delete", "c1").returncode == 1  # gone: crun's error, passed on


def test_crun_restore_gets_no_runc_only_flags(crunenv):
    """containerd's shim restores with runc's flags (--no-subreaper always): crun's argp
    would exit 64 before writing --log. runc-grit drops the ones crun lacks."""
    f = crunenv
    b = f.bundle("b")
    img = f.ck / "img"
    img.mkdir()
    args = ["--root", "/r", "--log", str(f.tmp / "log.json"), "--log-format", "json", "restore",
            "--detach", "--no-subreaper", "--no-pivot", "--pid-file", str(b / "pid"),
            "--bundle", str(b), "--image-path", str(img), "--work-path", str(f.tmp / "w"),
            "--tcp-established", "c2"]
    p = f.run(*args)
    assert p.returncode == 0, (p.stderr, (f.tmp / "log.json").read_text()
                               if (f.tmp / "log.json").exists() else "")
    got = [c["argv"] for c in f.calls() if "restore" in c["argv"]][-1]
    assert "--no-subreaper" not in got and "--no-pivot" not in got
    assert got[got.index("restore"):] == ["restore", "--detach", "--pid-file", str(b / "pid"),
                                          "--bundle", str(b), "--image-path", str(img),
                                          "--work-path", str(f.tmp / "w"), "--tcp-established",
                                          "c2"]


@pytest.mark.parametrize("args", [
    ["restore", "--lazy-pages", "--image-path", "IMG", "--bundle", "B", "c2"],
    ["checkpoint", "--page-server", "10.0.0.1:27", "--image-path", "IMG", "c1"],
])
def test_crun_refuses_what_crun_cannot_do(crunenv, args):
    f = crunenv
    (f.tmp / "c1").write_text("")
    img = f.ck / "img"
    img.mkdir()
    b = f.bundle("b")
    args = [{"IMG": str(img), "B": str(b)}.get(a, a) for a in args]
    log = f.tmp / "log.json"
    p = f.run("--log", str(log), "--log-format", "json", *args)
    assert p.returncode != 0
    msg = json.loads(log.read_text().splitlines()[-1])["msg"]
    assert "crun %s has no --%s" % (args[0], args[1][2:]) in msg, msg
    assert not [c for c in f.calls() if args[0] in c["argv"]]  # crun never ran it
