"""Bad input fuzzing (hypothesis): random argv and random config.json, in-process `main`.

Every case either passes through (an exec of the runtime, caught here) or ends with an exit
code and, where --log is given, runc-style JSON lines; never an unhandled exception. The
runtime is the recording fake; paths a case can name stay inside the test's directory.
"""
import json
import os
import posix

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runc_grit import entry

from conftest import FAKES

FLAGS = ["--root", "--log", "--log-format", "--debug", "--systemd-cgroup", "--criu",
         "--rootless", "-root", "--log=log.json", "--log-format=json", "--log-format=text",
         "--bundle", "-b", "--pid-file", "--console-socket", "--no-pivot", "--no-new-keyring",
         "--detach", "-d", "--image-path", "--work-path", "--leave-running", "--tcp-established",
         "--manage-cgroups-mode", "--force", "-f", "--all", "--format", "--pre-dump", "--",
         "-no-subreaper", "--empty-ns", "--lazy-pages", "--help", "-h", "--version", "-v"]
COMMANDS = ["create", "run", "start", "state", "kill", "delete", "list", "ps", "exec", "pause",
            "resume", "checkpoint", "restore", "events", "update", "spec", "features", "hook",
            "config", "gc", "cuda-checkpoint", "inspect"]
SAFE_TEXT = st.text(st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)),
                    max_size=12)
TOKEN = st.one_of(st.sampled_from(FLAGS), st.sampled_from(COMMANDS), SAFE_TEXT,
                  st.sampled_from(["c1", "b", "ck", "log.json", "json", "text", "KILL", "9"]))


class Exec(BaseException):  # like a real exec: nothing in runc-grit catches it
    pass


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    ck = tmp_path / "ck"
    ck.mkdir()
    (tmp_path / "b").mkdir()
    conf = tmp_path / "config.yaml"
    conf.write_text("runtime: fake-runtime\nstate_dir: %s\ncheckpoint_roots: [%s]\n"
                    % (tmp_path / "state", ck))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", FAKES + os.pathsep + os.environ["PATH"])
    monkeypatch.setenv("RUNC_GRIT_CONFIG", str(conf))
    monkeypatch.setenv("FAKE_RUNTIME_LOG", str(tmp_path / "calls.jsonl"))
    monkeypatch.setenv("FAKE_RUNTIME_STATE_DIR", str(tmp_path))

    def no_exec(path, argv):
        raise Exec(path)
    monkeypatch.setattr(posix, "execv", no_exec)
    monkeypatch.setattr(os, "execv", no_exec)
    return tmp_path


def call(argv):
    try:
        rc = entry.main(argv)
    except Exec:
        return "exec"
    except SystemExit as e:
        rc = e.code
    assert rc is None or isinstance(rc, int), rc
    return rc


def check_log(path):
    """Every line runc-style: JSON with level and msg, or text `time=... level=... msg=...`."""
    if os.path.exists(path):
        with open(path) as f:
            for ln in f:
                if ln.strip():
                    if ln.startswith("{"):
                        assert {"level", "msg"} <= set(json.loads(ln))
                    else:
                        assert ln.startswith("time=") and " level=" in ln and " msg=" in ln, ln


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(argv=st.lists(TOKEN, max_size=10))
def test_random_argv_never_raises(sandbox, argv, capsys):
    argv = [a for a in argv if a not in ("demo", "doctor")]
    call(argv)
    check_log(os.path.join(sandbox, "log.json"))
    capsys.readouterr()


ANN_KEYS = ["grit.dev/restore-from", "grit.dev/checkpoint", "kybernate.io/restore-from",
            "grit.dev/restore-policy", "io.kubernetes.cri.container-name",
            "io.kubernetes.cri.container-type", "org.criu.config", "x"]
VALUES = st.one_of(st.text(max_size=20), st.sampled_from(
    ["fail", "fresh", "sandbox", "container", "ck", "./ck", "../ck", "", "/proc/self/root",
     "/nonexistent", "..", "."]), st.integers(), st.none(), st.lists(st.text(max_size=3)),
    st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2))
SPEC = st.one_of(
    st.fixed_dictionaries({"ociVersion": st.just("1.0.2"),
                           "process": st.one_of(st.just({"args": ["sh"]}), VALUES),
                           "root": st.one_of(st.just({"path": "rootfs"}), VALUES),
                           "annotations": st.one_of(
                               st.dictionaries(st.sampled_from(ANN_KEYS), VALUES, max_size=5),
                               VALUES)}),
    VALUES)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(spec=SPEC, raw=st.one_of(st.none(), st.binary(max_size=40)))
def test_random_config_json_never_raises(sandbox, spec, raw, capsys):
    b = os.path.join(sandbox, "b")
    ck = os.path.join(sandbox, "ck")
    if isinstance(spec, dict) and isinstance(spec.get("annotations"), dict):
        for k, v in list(spec["annotations"].items()):  # relative values: under the sandbox
            if v in ("ck", "./ck", "../ck"):
                spec["annotations"][k] = os.path.join(sandbox, v)
    with open(os.path.join(b, "config.json"), "wb") as f:
        f.write(raw if raw is not None else json.dumps(spec).encode())
    log = os.path.join(sandbox, "create.log")
    rc = call(["--root", os.path.join(sandbox, "root"), "--log", log, "--log-format", "json",
               "create", "--bundle", b, "--pid-file", os.path.join(b, "init.pid"), "c1"])
    check_log(log)
    if rc not in (0, "exec"):
        with open(log) as f:
            assert json.loads(f.read().splitlines()[-1])["level"] == "error"
    call(["--root", os.path.join(sandbox, "root"), "delete", "--force", "c1"])
    capsys.readouterr()
    assert os.listdir(ck) == []
