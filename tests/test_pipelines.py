"""The restore and checkpoint pipelines in-process, with a fake Delegate (the runtime binary)
and the runtime's run recorded instead of executed: each branch of each pipeline."""
import json
import os

import pytest

from runc_grit import argv
from runc_grit.checkpoint import source
from runc_grit.errors import RestoreError, RuntimeFailure, SourceError
from runc_grit.node import config, procs
from runc_grit.node.state import ContainerState
from runc_grit.runtimes import criuconf, restoring, runc
from runc_grit.runtimes.base import Request


class FakeDelegate:
    """Stands behind runtimes.delegate.Delegate's interface; records every call."""

    def __init__(self, states=()):
        self.path, self.name, self.globals, self.flags = "/fake/runc", "runc", [], []
        self.calls = []
        self.states = list(states)  # what state() answers, in turn (the last one repeats)

    def command(self, args):
        return [self.path] + list(args)

    def state(self, cid):
        self.calls.append(("state", cid))
        return self.states.pop(0) if len(self.states) > 1 else (self.states or [None])[0]

    def describe(self, cache_dir=None):
        return {"name": "runc", "path": self.path, "version": "1.2.3"}

    def quiet_globals(self):
        return []

    def guard_job(self, kind, st, **extra):
        self.calls.append(("guard_job", kind))
        return None  # no guard process in-process

    def root(self):
        return "/run/runc"

    def __getattr__(self, name):  # pause, resume, force_delete, release_restore_mounts
        if name.startswith("_"):
            raise AttributeError(name)

        def call(*args):
            self.calls.append((name,) + args)
            return 0
        return call


class Log:
    def __init__(self):
        self.lines = []

    def __getattr__(self, level):
        return lambda msg: self.lines.append((level, msg))


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A conf under tmp_path, a bundle, and procs.run recorded (rc from env.rc)."""
    from runc_grit import fastconf
    monkeypatch.setattr(fastconf, "DEFAULT_PATH", str(tmp_path / "absent.yaml"))
    conf = config.load(str(tmp_path / "absent.yaml"))
    conf._data["state_dir"] = str(tmp_path / "state")
    bundle = tmp_path / "bundle"
    (bundle / "rootfs").mkdir(parents=True)
    (bundle / "config.json").write_text(json.dumps({"ociVersion": "1.0.2", "root": {"path": "rootfs"}}))

    class Env:
        rc = 0
        runs = []
    e = Env()
    e.conf, e.bundle, e.tmp = conf, str(bundle), tmp_path

    def run(cmd, **kw):
        e.runs.append(cmd)
        return e.rc, None
    monkeypatch.setattr(procs, "run", run)
    monkeypatch.setattr(procs, "become_subreaper", lambda: None)
    monkeypatch.setattr(procs, "kill_adopted", lambda: None)
    monkeypatch.setattr(criuconf, "recreate", lambda *a: None)
    return e


def _request(env, cmd, delegate, policy="fail", runtime_state=None):
    inv = argv.parse(cmd)
    rt = runc.Runc(delegate)
    req = Request(inv, cmd, env.conf, Log(), runtime=rt,
                  state=ContainerState(env.conf.state_dir, inv.container_id),
                  runtime_state=runtime_state)
    if inv.command in ("create", "restore"):
        req.spec = json.load(open(os.path.join(env.bundle, "config.json")))
    if inv.command == "create":
        req.restore = source.RestoreRequest(str(env.tmp / "src"), "grit.dev/restore-from", policy)
    os.makedirs(req.state.dir, exist_ok=True)
    return req


@pytest.fixture
def staged(env, monkeypatch):
    """source.validate stands in for a checked source; check_restore passes."""
    img = env.tmp / "img"
    img.mkdir()
    monkeypatch.setattr(source, "validate", lambda *a, **k: (str(img), None, "/src"))
    monkeypatch.setattr(source, "release", lambda *a: None)
    monkeypatch.setattr(runc.Runc, "check_restore", lambda self, job: None)
    monkeypatch.setattr(runc.Runc, "restore_begins", lambda self, job: None)
    return str(img)


def _create(env, d, policy="fail"):
    return _request(env, ["create", "--bundle", env.bundle, "c1"], d, policy)


def test_restore_success(env, staged):
    d = FakeDelegate([{"id": "c1", "status": "created", "pid": None}])
    req = _create(env, d)
    assert restoring.run(req, on_create=True) == 0
    assert env.runs[0][:2] == ["/fake/runc", "restore"] and staged in env.runs[0]
    assert ("guard_job", "restore") in d.calls
    assert req.state.read()["phase"] == "restored"


def test_restore_refused_before_the_runtime_runs(env, staged, monkeypatch):
    def refuse(self, job):
        raise SourceError("no")
    monkeypatch.setattr(runc.Runc, "check_restore", refuse)
    req = _create(env, FakeDelegate())
    with pytest.raises(SourceError):
        restoring.run(req, on_create=True)
    assert env.runs == [] and not req.state.exists()


def test_restore_policy_fresh_creates_from_scratch(env, staged, monkeypatch):
    def refuse(self, job):
        raise SourceError("no")
    monkeypatch.setattr(runc.Runc, "check_restore", refuse)
    req = _create(env, FakeDelegate([{"status": "created"}]), policy="fresh")
    assert restoring.run(req, on_create=True) == 0
    assert env.runs[0][1] == "create"
    assert "no" in req.state.read()["fresh_because"]


def test_restore_runtime_failure_is_cleaned_up(env, staged):
    env.rc = 1
    d = FakeDelegate([None])
    req = _create(env, d)
    with pytest.raises(RestoreError, match="restore from /src failed"):
        restoring.run(req, on_create=True)
    assert ("force_delete", "c1") in d.calls and ("release_restore_mounts", "c1") in d.calls
    assert not req.state.exists()


def test_restore_post_check_failure(env, staged, monkeypatch):
    monkeypatch.setattr(runc.Runc, "restored_problem", lambda self, job, info: "CUDA state not resumed: x")
    d = FakeDelegate([{"status": "created", "pid": 1}])
    req = _create(env, d)
    with pytest.raises(RestoreError, match="CUDA state not resumed"):
        restoring.run(req, on_create=True)
    assert ("force_delete", "c1") in d.calls and not req.state.exists()


def test_direct_restore_passes_the_runtime_exit_code(env, monkeypatch):
    monkeypatch.setattr(runc.Runc, "restore_begins", lambda self, job: None)
    monkeypatch.setattr(source, "verify_given", lambda *a: None)
    env.rc = 3
    req = _request(env, ["restore", "--bundle", env.bundle, "--image-path", str(env.tmp), "c1"],
                   FakeDelegate([None]))
    assert restoring.run(req, on_create=False) == 3
    assert not req.state.exists()


# --- checkpoint -----------------------------------------------------------------------------

def _checkpoint(env, d, *flags):
    img = str(env.tmp / "ckpt")
    info = {"id": "c1", "status": "running", "pid": 1, "bundle": env.bundle, "annotations": {}}
    return _request(env, ["checkpoint", "--image-path", img] + list(flags) + ["c1"], d,
                    runtime_state=info), img


@pytest.fixture
def rollback(monkeypatch):
    from runc_grit.gpu import rollback as rb
    calls = []
    monkeypatch.setattr(rb, "epilogue", lambda st, conf, log: calls.append(st.id) or [])
    return calls


def test_checkpoint_success_commits_the_manifest(env, rollback):
    req, img = _checkpoint(env, FakeDelegate([None]))
    assert req.runtime.checkpoint(req) == 0
    assert os.path.exists(os.path.join(img, "grit-manifest.json"))
    assert env.runs[0][1] == "checkpoint" and rollback == []


def test_checkpoint_leave_running_rolls_cuda_back(env, rollback):
    req, img = _checkpoint(env, FakeDelegate([{"status": "running"}]), "--leave-running")
    assert req.runtime.checkpoint(req) == 0
    assert rollback == ["c1"] and os.path.exists(os.path.join(img, "grit-manifest.json"))


def test_failed_dump_rolls_back_and_passes_the_exit_code(env, rollback):
    env.rc = 2
    d = FakeDelegate([{"status": "paused"}, {"status": "running"}])
    req, img = _checkpoint(env, d)
    with pytest.raises(RuntimeFailure) as e:
        req.runtime.checkpoint(req)
    assert e.value.exit_code == 2 and "keeps running" in e.value.message
    assert ("resume", "c1") in d.calls  # CRIU died with the container frozen
    assert rollback == ["c1"] and not os.path.exists(os.path.join(img, "grit-manifest.json"))
