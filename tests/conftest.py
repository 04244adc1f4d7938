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

from runc_grit.cli.harness import Grit  # noqa: E402

# The runc-grit under test is the one install/install.sh puts on the machine, not this source
# tree: an editable install once hid that every create of the installed one failed.
GRIT_BIN = os.environ.get("RUNC_GRIT_BIN", "/usr/local/bin/runc-grit")
GRIT = [GRIT_BIN]   # argv0 of every test that runs runc-grit as a program
GRIT_ENV = {}       # what that needs in its environment
INSTALL_PROBLEM = None
# the runtime runc-grit delegates to in the tests (bench/matrix.sh's crun cell: crun)
RUNTIME = os.environ.get("RUNC_GRIT_TEST_RUNTIME", "runc")


def installed_package(launcher):
    """The runc_grit package dir a launcher (install/make_launcher.py) imports, or None."""
    import ast
    try:
        with open(os.path.realpath(launcher)) as f:
            text = f.read()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("sys.path[0:0] = "):
            for d in ast.literal_eval(line.split("=", 1)[1].strip()):
                if os.path.isfile(os.path.join(d, "runc_grit", "entry.py")):
                    return os.path.join(d, "runc_grit")
    return None


def stale_files(pkg):
    """Files of this source tree's package that the installed one lacks or has otherwise."""
    src = os.path.join(REPO, "runc_grit")
    out = []
    for dirpath, dirs, files in os.walk(src):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if name.endswith((".pyc", ".pyo")):
                continue
            rel = os.path.relpath(os.path.join(dirpath, name), src)
            try:
                with open(os.path.join(src, rel), "rb") as a, open(os.path.join(pkg, rel), "rb") as b:
                    if a.read() == b.read():
                        continue
            except OSError:
                pass
            out.append(rel)
    return out


def _check_installed():
    """None when GRIT_BIN runs this tree's code; else why not. Outside CI a stale install is
    refreshed with install/install.sh (what a user runs)."""
    pkg = installed_package(GRIT_BIN)
    stale = stale_files(pkg) if pkg else ["(not installed)"]
    if stale and os.environ.get("CI") != "true" and os.geteuid() == 0:
        # one install at a time: test runs started side by side share /opt/runc-grit/venv
        subprocess.run(["flock", "/run/lock/runc-grit-install.lock", "bash",
                        os.path.join(REPO, "install", "install.sh"), "--no-doctor"],
                       stdout=subprocess.DEVNULL, check=False, timeout=600)
        pkg = installed_package(GRIT_BIN)
        stale = stale_files(pkg) if pkg else ["(not installed)"]
    if stale:
        return "%s is not this tree's runc-grit (run install/install.sh): %s" % (
            GRIT_BIN, ", ".join(stale[:5]))
    return None


def _have(cmd):
    return shutil.which(cmd) is not None


def _real_stack_missing():
    if os.geteuid() != 0:
        return "needs root"
    for c in ("runc", RUNTIME, "criu", "iptables-restore"):
        if not _have(c):
            return "%s not installed" % c
    return None


def pytest_configure(config):
    """Decide once which runc-grit the tests run: the installed one (refreshed outside CI),
    else, where none can be installed (no root), this tree's, and integration tests skip."""
    global INSTALL_PROBLEM
    INSTALL_PROBLEM = _check_installed()
    if INSTALL_PROBLEM and os.environ.get("CI") != "true":
        GRIT[:] = [sys.executable, "-m", "runc_grit"]
        GRIT_ENV["PYTHONPATH"] = REPO


def pytest_collection_modifyitems(config, items):
    missing = _real_stack_missing() or INSTALL_PROBLEM
    if INSTALL_PROBLEM and os.environ.get("CI") == "true":
        raise pytest.UsageError(INSTALL_PROBLEM)
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
        self.env = dict(os.environ, RUNC_GRIT_CONFIG=self.config_path, **GRIT_ENV)
        self.grit = Grit(self.root, self.env, GRIT)
        self.created = []

    def write_config(self, extra):
        """The node's config as install/install.sh writes it: signatures required, with this
        node's own Ed25519 key; trusting the public keys in its trusted.d (none at first: only
        its own); a staging dir of its own."""
        import yaml
        key = os.path.join(self.dir, "node.key")
        if not os.path.exists(key):
            from cryptography.hazmat.primitives import serialization
            from cryptography.hazmat.primitives.asymmetric import ed25519
            pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption())
            with open(os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
                f.write(pem)
        self.trusted_dir = os.path.join(self.dir, "trusted.d")
        os.makedirs(self.trusted_dir, exist_ok=True)
        os.chmod(self.trusted_dir, 0o755)
        conf = {"checkpoint_roots": [self.ckroot], "state_dir": self.state_dir,
                "signing_key": key, "trusted_keys": [self.trusted_dir], "require_signature": True,
                "staging_dir": os.path.join(self.dir, "staging")}
        if RUNTIME != "runc":
            conf["runtime"] = RUNTIME
        conf.update(extra)
        self.signing_key = conf.get("signing_key")
        with open(self.config_path, "w") as f:
            yaml.safe_dump(conf, f)

    def trust(self, other):
        """This node trusts the checkpoints other signs: other's public key (from its
        signing_key) in this node's trusted.d. Returns the .pub file's path."""
        from cryptography.hazmat.primitives import serialization
        from runc_grit.checkpoint import integrity
        signer = integrity.load_signer(other.signing_key)
        path = os.path.join(self.trusted_dir, "%s.pub" % signer.key_id)
        with open(path, "wb") as f:
            f.write(signer.public.public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo))
        os.chmod(path, 0o644)
        return path

    def bundle(self, name, args=None, annotations=None, terminal=False, rootfs_from=None, env=()):
        from runc_grit.oci import bundle as b
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
        return subprocess.run([RUNTIME, "--root", self.root] + list(args), capture_output=True,
                              timeout=60, **kw)

    def cgroups_missing(self, cid):
        """The cgroups the runtime made for container cid (runc's state.json, crun's status)
        that do not hold its init."""
        if RUNTIME == "crun":  # cgroup v2 only: "cgroup-path" under the unified hierarchy
            with open(os.path.join(self.root, cid, "status")) as f:
                st = json.load(f)
            pid, paths = st["pid"], {"": "/sys/fs/cgroup" + st["cgroup-path"]}
        else:
            with open(os.path.join(self.root, cid, "state.json")) as f:
                st = json.load(f)
            pid, paths = st["init_process_pid"], st["cgroup_paths"]
        missing = []
        for ctrl, path in sorted(paths.items()):
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
