"""runc-grit in front of other runtimes: crun for real (what the distro's crun can do),
nvidia-container-runtime as a recording fake. (runsc: test_runsc.py)"""
import json
import os
import shutil
import subprocess

import pytest

from conftest import FAKES, GRIT, GRIT_ENV, Env
from test_integration_runc import checkpoint, start_counter


def _crun_has_criu():
    out = subprocess.run(["crun", "--version"], capture_output=True).stdout
    return b"+CRIU" in out


def _crun_envs(workdir):
    """A runc node and a crun node that trust each other's checkpoints (one signing key)."""
    if not shutil.which("crun"):
        pytest.skip("crun not installed")
    for d in ("runc-node", "crun-node"):
        os.makedirs(os.path.join(workdir, d))
    ref = Env(os.path.join(workdir, "runc-node"))
    return ref, Env(os.path.join(workdir, "crun-node"),
                    {"runtime": "crun", "signing_key": os.path.join(ref.dir, "node.key")})


def _crun_cannot_run(e, workdir):
    """Why crun itself cannot run a container on this host (hybrid cgroups), or None."""
    probe = e.bundle("probe", args=["true"])
    root = os.path.join(workdir, "crun-probe")
    with open(os.path.join(workdir, "crun-probe.err"), "w+b") as err:  # not a pipe: the
        r = subprocess.run(["crun", "--root", root, "run", "--bundle", probe, "probe"],  # child
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,  # keeps it
                           stderr=err, timeout=60)
        err.seek(0)
        why = err.read().decode(errors="replace").strip()[-200:]
    subprocess.run(["crun", "--root", root, "delete", "--force", "probe"], capture_output=True)
    return None if r.returncode == 0 else "crun itself cannot run a container on this host: " + why


@pytest.mark.integration
def test_restore_on_create_with_crun(workdir):
    """A runc checkpoint restored with crun: done when crun has CRIU, else refused clearly
    before crun runs (and no container is left)."""
    ref, e = _crun_envs(workdir)
    if _crun_has_criu():
        why = _crun_cannot_run(e, workdir)
        if why:
            pytest.skip(why)
    rb, rout = start_counter(ref, "r", "r")
    assert rout.wait_for(lambda r: len(r.ints()) >= 3)
    img = os.path.join(e.ckroot, "from-runc")
    checkpoint(ref, rb, "r", img)
    b = e.bundle("d", annotations={"grit.dev/restore-from": img},
                 rootfs_from=os.path.join(rb, "rootfs"))
    p, _ = e.grit.create_with_pipes(b, "d")
    if _crun_has_criu():
        assert p.returncode == 0, e.grit.log_error(b)
    else:
        assert p.returncode != 0
        assert "built without CRIU" in e.grit.log_error(b), e.grit.log_error(b)
        assert e.grit.state("d") is None and not os.path.exists(os.path.join(e.state_dir, "d"))
    e.cleanup()
    ref.cleanup()


@pytest.mark.integration
def test_crun_lifecycle_and_checkpoint(workdir):
    """create/start/state/kill/delete through runc-grit with crun; checkpoint as far as the
    distro's crun can (refused clearly without +CRIU, the container untouched)."""
    ref, e = _crun_envs(workdir)
    why = _crun_cannot_run(e, workdir)
    if why:
        pytest.skip(why)
    b = e.bundle("c")
    p, out = e.grit.create_with_pipes(b, "c")
    assert p.returncode == 0, e.grit.log_error(b)
    assert e.grit.run(b, "start", "c").returncode == 0
    assert out.wait_for(lambda r: len(r.ints()) >= 3)
    assert e.grit.state("c")["status"] == "running"
    img = os.path.join(e.ckroot, "img")
    p = e.grit.run(b, "checkpoint", "--image-path", img, "c")
    if _crun_has_criu():
        assert p.returncode == 0, e.grit.log_error(b)
    else:
        assert p.returncode != 0 and "built without CRIU" in e.grit.log_error(b)
        n = len(out.ints())
        assert out.wait_for(lambda r: len(r.ints()) >= n + 2)
        assert e.grit.run(b, "kill", "c", "KILL").returncode == 0
    e.grit.run(b, "delete", "--force", "c")  # crun's state: runc's `list` cannot read it
    e.cleanup()


@pytest.fixture
def nvenv(tmp_path):
    """nvidia-container-runtime = the recording fake, under that name on PATH."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    os.symlink(os.path.join(FAKES, "fake-runtime"), bindir / "nvidia-container-runtime")
    ck = tmp_path / "ck"
    ck.mkdir()
    conf = tmp_path / "config.yaml"
    conf.write_text("runtime: nvidia-container-runtime\nstate_dir: %s\ncheckpoint_roots: [%s]\n"
                    % (tmp_path / "state", ck))
    env = dict(os.environ, PATH="%s:%s" % (bindir, os.environ["PATH"]),
               RUNC_GRIT_CONFIG=str(conf), FAKE_RUNTIME_LOG=str(tmp_path / "calls.jsonl"),
               FAKE_RUNTIME_STATE_DIR=str(tmp_path), **GRIT_ENV)
    return tmp_path, env


def test_nvidia_container_runtime_gets_our_spec_and_plain_pass_through(nvenv):
    tmp, env = nvenv
    b = tmp / "b"
    b.mkdir()
    (b / "config.json").write_text(json.dumps({"ociVersion": "1.0.2", "process": {"args": ["sh"]},
                                               "root": {"path": "rootfs"},
                                               "annotations": {"mine": "kept"}}))

    def run(*args):
        return subprocess.run(GRIT + list(args), env=env,
                              capture_output=True, timeout=60)
    create = ["--root", "/r", "--log", str(b / "log.json"), "--log-format", "json", "create",
              "--bundle", str(b), "--pid-file", str(b / "init.pid"), "c1"]
    assert run(*create).returncode == 0
    spec = json.loads((b / "config.json").read_text())
    # runc-grit's spec change is in place when the NVIDIA runtime (which injects the GPUs and
    # then runs runc) reads config.json: the CRIU config with the action script
    assert spec["annotations"]["mine"] == "kept"
    conf = spec["annotations"]["org.criu.config"]
    assert "action-script" in open(conf).read()
    others = [["--root", "/r", "state", "c1"], ["--root", "/r", "kill", "c1", "KILL"],
              ["--root", "/r", "exec", "c1", "nvidia-smi"], ["--root", "/r", "delete", "c1"]]
    for a in others:
        run(*a)
    calls = [json.loads(ln)["argv"] for ln in (tmp / "calls.jsonl").read_text().splitlines()]
    assert calls[0] == create                        # create itself unchanged
    assert calls[1:] == others                       # everything else byte for byte


# --- crun: the shared empty dir's external mount key (containers/crun#2239) ----------------

def test_crun_run_dir_follows_root_flag_then_xdg_then_default():
    from runc_grit.runtimes.crun import run_dir
    assert run_dir(["--root", "/run/containerd/runc/k8s.io"]) == "/run/containerd/runc/k8s.io"
    assert run_dir(["--log", "/x", "--root=/r"]) == "/r"
    assert run_dir([], {"XDG_RUNTIME_DIR": "/run/user/1000"}) == "/run/user/1000/crun"
    assert run_dir([], {}) == "/run/crun"


def test_crun_empty_dir_keys_are_mapped_onto_this_root_and_nothing_else():
    from runc_grit.runtimes.crun import empty_dir_mappings
    here = "/run/containerd/runc/k8s.io/.empty-directory"
    keys = ["/run/crun/.empty-directory",       # crun <= 1.28's checkpoint key
            "/run/containerd/runc/default/.empty-directory",  # another namespace's root
            here,                                # crun maps its own
            "/proc/keys",                        # a masked file: crun maps it itself
            "/dev/nvidia0",                      # someone else's external mount
            "/a b/.empty-directory",             # would split the CRIU config line
            "/x\nmanage-cgroups=full/.empty-directory",  # would add a line
            "/x/../etc/.empty-directory",
            "relative/.empty-directory"]
    assert empty_dir_mappings(keys, here) == [
        "ext-mount-map /run/crun/.empty-directory:" + here,
        "ext-mount-map /run/containerd/runc/default/.empty-directory:" + here]


def test_runc_restores_need_no_extra_criu_lines():
    from runc_grit.runtimes.runc import Runc
    assert Runc(None).restore_criu_options(None, "/nonexistent") == []
