import json
import os
import shutil
import subprocess
import sys
import uuid

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
FAKES = os.path.join(HERE, "fakes")
sys.path.insert(0, REPO)

from runc_grit.harness import Grit  # noqa: E402


def _have(cmd):
    return shutil.which(cmd) is not None


def _real_stack_missing():
    if os.geteuid() != 0:
        return "needs root"
    for c in ("runc", "criu", "iptables-restore"):
        if not _have(c):
            return "%s not installed" % c
    return None


def pytest_collection_modifyitems(config, items):
    missing = _real_stack_missing()
    for item in items:
        if "integration" in item.keywords and missing:
            if os.environ.get("CI") == "true":
                # CI installs the real stack; a skip there would hide a broken install step.
                raise pytest.UsageError("CI lacks the real stack: " + missing)
            item.add_marker(pytest.mark.skip(reason=missing))


@pytest.fixture
def workdir(tmp_path_factory):
    # short paths: unix socket paths are limited to 108 bytes
    d = "/tmp/rg-" + uuid.uuid4().hex[:8]
    os.makedirs(d)
    yield d
    shutil.rmtree(d, ignore_errors=True)


class Env:
    """A private runc-grit setup: config, checkpoint root, state dir, runc root."""

    def __init__(self, d, extra_config=None):
        self.dir = d
        self.ckroot = os.path.join(d, "ck")
        self.state_dir = os.path.join(d, "state")
        self.root = os.path.join(d, "runc")
        os.makedirs(self.ckroot)
        self.config_path = os.path.join(d, "config.yaml")
        self.write_config(extra_config or {})
        self.env = dict(os.environ, RUNC_GRIT_CONFIG=self.config_path)
        self.env["PYTHONPATH"] = REPO + os.pathsep + self.env.get("PYTHONPATH", "")
        self.grit = Grit(self.root, self.env)
        self.created = []

    def write_config(self, extra):
        import yaml
        conf = {"checkpoint_roots": [self.ckroot], "state_dir": self.state_dir}
        conf.update(extra)
        with open(self.config_path, "w") as f:
            yaml.safe_dump(conf, f)

    def bundle(self, name, args=None, annotations=None, terminal=False, rootfs_from=None, env=()):
        from runc_grit import bundle as b
        path = os.path.join(self.dir, name)
        b.make_bundle(path, args or b.counter_args("0.1"), annotations, terminal, rootfs_from)
        if env:
            with open(os.path.join(path, "config.json")) as f:
                spec = json.load(f)
            spec["process"]["env"] += list(env)
            with open(os.path.join(path, "config.json"), "w") as f:
                json.dump(spec, f)
        return path

    def runc(self, *args, **kw):
        return subprocess.run(["runc", "--root", self.root] + list(args), capture_output=True,
                              timeout=60, **kw)

    def cgroups_missing(self, cid):
        """The cgroups runc made for container cid (its state.json) that do not hold its init."""
        with open(os.path.join(self.root, cid, "state.json")) as f:
            st = json.load(f)
        pid = st["init_process_pid"]
        missing = []
        for ctrl, path in sorted(st["cgroup_paths"].items()):
            try:
                with open(os.path.join(path, "cgroup.procs")) as f:
                    procs = {int(x) for x in f.read().split()}
            except OSError as e:
                missing.append("%s %s: %s" % (ctrl or "unified", path, e.strerror))
                continue
            if pid not in procs:
                missing.append("%s %s" % (ctrl or "unified", path))
        return missing

    def cleanup(self):
        p = self.runc("list", "-q")
        for cid in p.stdout.decode().split():
            self.runc("delete", "--force", cid)


@pytest.fixture
def genv(workdir):
    e = Env(workdir)
    yield e
    e.cleanup()
