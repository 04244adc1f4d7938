"""Checkpoints you can trust: signed manifests, digests, compatibility checks and `inspect`,
with real runc + CRIU. CRIU is a recording wrapper here, so a test can tell it never ran."""
import json
import os
import shutil
import subprocess

import pytest

from runc_grit.checkpoint import compat, integrity
from runc_grit.checkpoint import manifest as _manifest

from conftest import GRIT, Env
from test_integration_runc import assert_continues, checkpoint, start_counter

pytestmark = pytest.mark.integration


def write_key(path, text):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)
    return path


@pytest.fixture
def senv(workdir):
    key = write_key(os.path.join(workdir, "key"), "a-test-signing-key-0123456789")
    criu_calls = os.path.join(workdir, "criu-calls")
    wrapper = os.path.join(workdir, "criu-rec")
    with open(wrapper, "w") as f:
        # by its path: runc >= 1.2 runs the `criu` first on PATH, which runc-grit makes this
        f.write('#!/bin/sh\necho "$*" >> %s\nexec %s "$@"\n' % (criu_calls, shutil.which("criu")))
    os.chmod(wrapper, 0o755)
    e = Env(workdir, {"signing_key": key, "require_signature": True, "criu": wrapper})
    e.key, e.criu_calls = key, criu_calls
    b, out = start_counter(e, "src", "src")
    assert out.wait_for(lambda r: len(r.ints()) >= 3)
    e.img = os.path.join(e.ckroot, "img")
    checkpoint(e, b, "src", e.img)
    out.closed()
    e.grit.run(b, "delete", "src")
    e.src_bundle, e.src_out = b, out
    yield e
    e.cleanup()


def restore(e, name, annotations=None):
    ann = {"grit.dev/restore-from": e.img}
    ann.update(annotations or {})
    b = e.bundle(name, annotations=ann, rootfs_from=os.path.join(e.src_bundle, "rootfs"))
    calls_before = os.path.getsize(e.criu_calls) if os.path.exists(e.criu_calls) else 0
    p, out = e.grit.create_with_pipes(b, name)
    calls_after = os.path.getsize(e.criu_calls) if os.path.exists(e.criu_calls) else 0
    return p, out, b, calls_after > calls_before


def test_signed_checkpoint_restores(senv):
    m = json.load(open(os.path.join(senv.img, _manifest.NAME)))
    assert m["signature"]["alg"] == "hmac-sha256"
    assert all(len(i.get("sha256", "")) == 64 for i in m["images"])
    p, out, b, criu_ran = restore(senv, "ok")
    assert p.returncode == 0, senv.grit.log_error(b)
    assert criu_ran and senv.grit.run(b, "start", "ok").returncode == 0
    assert out.wait_for(lambda r: len(r.ints()) >= 2)
    assert_continues(senv.src_out.ints(), out.ints())


def _flip_pages(e):
    pages = sorted(f for f in os.listdir(e.img) if f.startswith("pages-"))[0]
    with open(os.path.join(e.img, pages), "r+b") as f:
        f.seek(100)
        c = f.read(1)
        f.seek(100)
        f.write(bytes([c[0] ^ 0xFF]))
    return "does not match its sha256"


def _remove_file(e):
    os.unlink(os.path.join(e.img, "files.img"))
    return "files.img listed in the manifest is missing"


def _edit_manifest(e):
    path = os.path.join(e.img, _manifest.NAME)
    m = json.load(open(path))
    m["container"]["annotations"]["grit.dev/extra"] = "x"
    _manifest.write(e.img, m)
    return "does not match its signature"


def _wrong_key(e):
    write_key(e.key, "another-key-of-this-node-987654321")
    return "signed with another key"


def _unsigned(e):
    path = os.path.join(e.img, _manifest.NAME)
    m = json.load(open(path))
    del m["signature"]
    _manifest.write(e.img, m)
    return "not signed"


@pytest.mark.parametrize("tamper", [_flip_pages, _remove_file, _edit_manifest, _wrong_key,
                                    _unsigned], ids=lambda f: f.__name__.strip("_"))
def test_tampered_checkpoint_is_refused_before_criu(senv, tamper):
    want = tamper(senv)
    p, _, b, criu_ran = restore(senv, "bad")
    assert p.returncode != 0
    assert want in senv.grit.log_error(b), senv.grit.log_error(b)
    assert not criu_ran, "CRIU ran on a tampered checkpoint"
    assert senv.grit.state("bad") is None


def _resign(e, edit):
    path = os.path.join(e.img, _manifest.NAME)
    m = json.load(open(path))
    edit(m)
    integrity.sign(m, integrity.load_key(e.key))
    _manifest.write(e.img, m)


@pytest.mark.parametrize("field,edit,spec_ann,want", [
    ("criu", lambda m: m["criu"].update(version="99.1"), None,
     "checkpoint made with CRIU 99.1; this node has CRIU 4."),
    ("kernel", lambda m: m["node"].update(kernel="99.0.0-future"), None,
     "checkpoint made on kernel 99.0.0-future; this node runs "),
    ("runtime", lambda m: m["runtime"].update(name="runsc"), None,
     "checkpoint made by runtime runsc (gVisor images); this node restores with "),
    ("arch", lambda m: m["node"].update(arch="aarch64"), None, "checkpoint made on aarch64; this node is "),
    ("image", lambda m: m["container"]["annotations"].update(
        {"io.kubernetes.cri.image-name": "registry.example/app:1"}),
     {"io.kubernetes.cri.image-name": "registry.example/app:2"},
     "checkpoint of image registry.example/app:1; this container runs image registry.example/app:2"),
])
def test_incompatible_checkpoint_is_refused_naming_both_sides(senv, field, edit, spec_ann, want):
    _resign(senv, edit)
    p, _, b, criu_ran = restore(senv, "inc-" + field, spec_ann)
    assert p.returncode != 0
    assert want in senv.grit.log_error(b), senv.grit.log_error(b)
    assert not criu_ran


def test_inspect_reports_a_real_checkpoint(senv):
    def run(*args):
        return subprocess.run(GRIT + ["inspect"] + list(args),
                              capture_output=True, env=senv.env, timeout=60)
    p = run("--json", senv.img)
    assert p.returncode == 0, p.stdout + p.stderr
    rep = json.loads(p.stdout)
    assert rep["manifest"] == "valid" and rep["container"] == "src"
    assert rep["signature"] == {"present": True, "key_id": integrity.key_id(
        integrity.load_key(senv.key)), "valid": True}
    assert rep["images"]["match_manifest"] and rep["images"]["digests"]
    assert rep["images"]["bytes"] == sum(os.path.getsize(os.path.join(senv.img, f))
                                         for f in os.listdir(senv.img) if f != _manifest.NAME)
    assert rep["compatible"] == [] and rep["problems"] == []
    if shutil.which("crit"):  # install/deps.sh provides it: the process tree from pstree.img
        assert rep["tree"] and any(ln.split()[-1:] == ["sh"] for ln in rep["tree"]), rep["tree"]
    text = run(senv.img).stdout.decode()
    assert "signature   valid" in text and "this node   can restore it" in text
    _flip_pages(senv)
    p = run(senv.img)
    assert p.returncode == 1 and "DO NOT match the manifest" in p.stdout.decode()


def test_compat_problems_pure():
    m = {"criu": {"version": "4.2"}, "runtime": {"name": "runc"},
         "node": {"kernel": "6.12.1", "arch": "x86_64"}, "container": {"annotations": {}}}
    here = {"criu": "4.1.1", "runtime": "crun", "kernel": "6.1.0-28-amd64", "arch": "x86_64"}
    got = compat.problems(m, here, {})
    assert got == ["checkpoint made with CRIU 4.2; this node has CRIU 4.1.1, which is older",
                   "checkpoint made on kernel 6.12.1; this node runs 6.1.0-28-amd64, which is older"]
    here.update(criu="4.2.0", kernel="6.12.9")
    assert compat.problems(m, here, {}) == []


def test_signing_key_readable_by_others_is_refused(tmp_path):
    k = tmp_path / "k"
    k.write_text("0123456789abcdef0123")
    k.chmod(0o644)
    with pytest.raises(Exception, match="lets others read it"):
        integrity.load_key(str(k))
