"""Checkpoints you can trust: signed manifests (Ed25519, each node its own key, trusting
public keys; the legacy symmetric HMAC key for one node), digests, compatibility checks and
`inspect`. The integration tests use real runc + CRIU; CRIU is a recording wrapper there, so a
test can tell it never ran."""
import base64
import hashlib
import json
import os
import shutil
import subprocess
import types

import pytest

from runc_grit.checkpoint import compat, integrity
from runc_grit.checkpoint import manifest as _manifest
from runc_grit.errors import GritError

from conftest import GRIT, GRIT_ENV, Env
from test_integration_runc import assert_continues, checkpoint, start_counter


def write_key(path, text):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)
    return path


@pytest.fixture
def senv(workdir):
    criu_calls = os.path.join(workdir, "criu-calls")
    wrapper = os.path.join(workdir, "criu-rec")
    with open(wrapper, "w") as f:
        # by its path: runc >= 1.2 runs the `criu` first on PATH, which runc-grit makes this
        f.write('#!/bin/sh\necho "$*" >> %s\nexec %s "$@"\n' % (criu_calls, shutil.which("criu")))
    os.chmod(wrapper, 0o755)
    e = Env(workdir, {"criu": wrapper})  # its own Ed25519 key, signatures required
    e.key, e.criu_calls = e.signing_key, criu_calls
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


@pytest.mark.integration
def test_signed_checkpoint_restores(senv):
    m = json.load(open(os.path.join(senv.img, _manifest.NAME)))
    assert m["signature"]["alg"] == "ed25519"
    assert m["signature"]["key_id"] == integrity.load_signer(senv.key).key_id
    assert all(len(i.get("sha256", "")) == 64 for i in m["images"])
    p, out, b, criu_ran = restore(senv, "ok")
    assert p.returncode == 0, senv.grit.log_error(b)
    assert criu_ran and senv.grit.run(b, "start", "ok").returncode == 0
    assert out.wait_for(lambda r: len(r.ints()) >= 2)
    assert_continues(senv.src_out.ints(), out.ints())
    # the page images were hashed while CRIU restored, and CRIU's post-restore waited for it
    st = json.load(open(os.path.join(senv.state_dir, "ok", "state.json")))
    assert st["timings"]["pages_verify_s"] >= 0, st
    hooks = [json.loads(ln) for ln in open(os.path.join(senv.state_dir, "ok", "hooks.jsonl"))]
    assert any(h.get("pages_gate") == "passed" for h in hooks), hooks


BIG_COUNTER = ('s = "ab"; while (length(s) < 100000000) s = s s; '
               'for (i = 1; ; i++) { print i; fflush(); system("sleep 0.1") }')


@pytest.mark.integration
def test_pages_hashed_during_the_dump_verify_at_the_restore(workdir):
    """A process with 128 MiB of heap: its pages image spans whole 64 MiB chunks, which
    runc-grit hashes while CRIU writes them (tailhash); the signed manifest's digests are
    those, and a restore checks them all (beside CRIU) before the counter goes on."""
    e = Env(workdir)
    try:
        b, out = start_counter(e, "big", "big",
                               args=["busybox", "awk", "BEGIN { %s }" % BIG_COUNTER])
        assert out.wait_for(lambda r: len(r.ints()) >= 3, timeout=60)
        img = os.path.join(e.ckroot, "big")
        checkpoint(e, b, "big", img)
        out.closed()
        e.grit.run(b, "delete", "big")
        m = json.load(open(os.path.join(img, _manifest.NAME)))
        pages = [i for i in m["images"] if _manifest.is_page_data(i["name"])]
        assert any(len(i.get("sha256_chunks", {}).get("digests", [])) >= 2 for i in pages), pages
        assert m["timings"]["pages_hashed_during_dump"] >= 0
        print("chunks hashed during the dump:", m["timings"]["pages_hashed_during_dump"])
        b2 = e.bundle("big2", annotations={"grit.dev/restore-from": img},
                      rootfs_from=os.path.join(b, "rootfs"))
        p, out2 = e.grit.create_with_pipes(b2, "big2")
        assert p.returncode == 0, e.grit.log_error(b2)
        assert e.grit.run(b2, "start", "big2").returncode == 0
        assert out2.wait_for(lambda r: len(r.ints()) >= 2, timeout=60)
        assert_continues(out.ints(), out2.ints())
        e.grit.run(b2, "delete", "--force", "big2")
    finally:
        e.cleanup()


HOOK = os.path.join(os.path.dirname(integrity.__file__), os.pardir, "hooks", "grit-hook")


@pytest.mark.parametrize("verdict,pid,rc", [
    ("ok TOKEN", "self", 0),
    ("bad TOKEN", "self", 1),
    ("ok ANOTHER-RESTORE", "self", 1),
    ("ok TOKEN trailing", "self", 1),
    (None, "dead", 1),        # runc-grit gone before its verdict
    (None, "self", 1),        # no verdict within the wait
])
def test_post_restore_gate(tmp_path, verdict, pid, rc):
    """CRIU's action script at post-restore lets the tasks resume only on this restore's
    "ok" (checkpoint.pagecheck)."""
    path = str(tmp_path / "pages-verdict")
    if verdict is not None:
        with open(path, "w") as f:
            f.write(verdict + "\n")
    if pid == "dead":
        dead = subprocess.Popen(["true"])
        dead.wait()
        pid = dead.pid
    else:
        pid = os.getpid()
    env = dict(os.environ, CRTOOLS_SCRIPT_ACTION="post-restore", CRTOOLS_INIT_PID="1",
               RUNC_GRIT_STATE=str(tmp_path), RUNC_GRIT_PAGES_VERDICT=path,
               RUNC_GRIT_PAGES_TOKEN="TOKEN", RUNC_GRIT_PAGES_PID=str(pid),
               RUNC_GRIT_PAGES_WAIT="0")
    p = subprocess.run(["sh", HOOK], env=env, capture_output=True, text=True, timeout=30)
    assert p.returncode == rc, p.stderr
    journal = tmp_path / "hooks.jsonl"
    assert ("pages_gate" in journal.read_text() if journal.exists() else False) == (rc == 0)


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
    """The node's key replaced: the checkpoint's signer is no longer trusted here."""
    old = integrity.load_signer(e.key).key_id
    os.unlink(e.key)
    integrity.write_key_pair(os.path.dirname(e.key), "replaced")
    os.rename(os.path.join(os.path.dirname(e.key), "replaced.key"), e.key)
    return "signed by key %s, which this node does not trust (trusted: " % old


def _unsigned(e):
    path = os.path.join(e.img, _manifest.NAME)
    m = json.load(open(path))
    del m["signature"]
    _manifest.write(e.img, m)
    return "not signed"


@pytest.mark.integration
@pytest.mark.parametrize("tamper", [_remove_file, _edit_manifest, _wrong_key, _unsigned],
                         ids=lambda f: f.__name__.strip("_"))
def test_tampered_checkpoint_is_refused_before_criu(senv, tamper):
    want = tamper(senv)
    p, _, b, criu_ran = restore(senv, "bad")
    assert p.returncode != 0
    assert want in senv.grit.log_error(b), senv.grit.log_error(b)
    assert not criu_ran, "CRIU ran on a tampered checkpoint"
    assert senv.grit.state("bad") is None


@pytest.mark.integration
def test_flipped_page_byte_never_resumes(senv):
    """The page images are hashed while CRIU restores (page_digests: overlap, the default):
    CRIU runs, but the tasks it restored never resume: the action script holds them at
    post-restore until the verdict, which is a mismatch. No value is printed, no container
    stays. With page_digests: before, CRIU does not run at all."""
    want = _flip_pages(senv)
    p, out, b, criu_ran = restore(senv, "bad")
    assert p.returncode != 0
    assert want in senv.grit.log_error(b), senv.grit.log_error(b)
    assert criu_ran
    assert out.closed(10) and out.ints() == [], out.lines  # nothing resumed, stdio closed
    assert senv.grit.state("bad") is None
    assert not os.path.exists(os.path.join(senv.state_dir, "bad"))
    import yaml
    senv.write_config(dict(yaml.safe_load(open(senv.config_path)), page_digests="before"))
    p, _, b, criu_ran = restore(senv, "bad2")
    assert p.returncode != 0
    assert want in senv.grit.log_error(b), senv.grit.log_error(b)
    assert not criu_ran, "CRIU ran on a tampered checkpoint"


def _resign(e, edit):
    path = os.path.join(e.img, _manifest.NAME)
    m = json.load(open(path))
    edit(m)
    integrity.load_signer(e.key).sign(m)
    _manifest.write(e.img, m)


@pytest.mark.integration
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


@pytest.mark.integration
def test_inspect_reports_a_real_checkpoint(senv):
    def run(*args):
        return subprocess.run(GRIT + ["inspect"] + list(args),
                              capture_output=True, env=senv.env, timeout=60)
    p = run("--json", senv.img)
    assert p.returncode == 0, p.stdout + p.stderr
    rep = json.loads(p.stdout)
    assert rep["manifest"] == "valid" and rep["container"] == "src"
    assert rep["signature"] == {"present": True, "key_id": integrity.load_signer(senv.key).key_id,
                                "valid": True}
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
    key, _, _ = integrity.write_key_pair(str(tmp_path))
    os.chmod(key, 0o644)
    with pytest.raises(GritError, match="lets others read it"):
        integrity.load_signer(key)
    k = tmp_path / "legacy"
    k.write_text("0123456789abcdef0123")
    k.chmod(0o640)
    with pytest.raises(GritError, match="lets others read it"):
        integrity.load_signer(str(k))


# --- Ed25519: each node signs with its own key, verifies with the keys it trusts -------------

def _node(d, name, trusts=(), signs=True):
    """A node's signature settings: its own key pair under d/name (if signs), a trusted.d
    holding the public keys of trusts (other nodes)."""
    home = os.path.join(str(d), name)
    os.makedirs(os.path.join(home, "trusted.d"))
    conf = types.SimpleNamespace(signing_key=None, require_signature=True,
                                 trusted_keys=[os.path.join(home, "trusted.d")])
    key, pub, kid = integrity.write_key_pair(home)
    if signs:
        conf.signing_key = key
    else:
        os.unlink(key)  # only the public half stays: a verifier
    conf.pub, conf.key_id, conf.name = pub, kid, name
    for other in trusts:
        shutil.copy(other.pub, os.path.join(home, "trusted.d", other.name + ".pub"))
    return conf


def _manifest_for_test():
    return _manifest.build("c1", {"a": "b"}, "/b", {"name": "runc", "version": "1.1"},
                           {"version": "4.1"}, [{"name": "pages-1.img", "size": 4096,
                                                 "sha256": "0" * 64}], {"checkpoint_s": 0.1})


def test_ed25519_signature_verifies_and_matches_the_schema(tmp_path):
    a = _node(tmp_path, "a")
    m = integrity.sign_manifest(_manifest_for_test(), a)
    sig = m["signature"]
    raw = integrity.load_signer(a.signing_key).public.public_bytes(*_raw_args())
    assert sig["alg"] == "ed25519" and sig["key_id"] == hashlib.sha256(raw).hexdigest()[:16]
    assert sig["key_id"] == a.key_id == integrity.key_id_of_file(a.pub)
    assert len(base64.b64decode(sig["value"])) == 64
    # over the canonical JSON of the manifest without its signature
    body = {k: v for k, v in m.items() if k != "signature"}
    integrity.load_signer(a.signing_key).public.verify(
        base64.b64decode(sig["value"]),
        json.dumps(body, sort_keys=True, separators=(",", ":")).encode())
    _manifest.validate(json.loads(json.dumps(m)), "test")
    assert integrity.check_signature(m, a, "checkpoint") is True
    bad = dict(m, signature=dict(sig, value="not base64"))
    with pytest.raises(GritError, match="invalid manifest at signature"):
        _manifest.validate(bad, "test")


def _raw_args():
    from cryptography.hazmat.primitives import serialization
    return (serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def test_a_trusted_nodes_checkpoint_verifies_by_file_or_dir(tmp_path):
    a = _node(tmp_path, "a")
    b = _node(tmp_path, "b", trusts=[a])
    m = integrity.sign_manifest(_manifest_for_test(), a)
    assert integrity.check_signature(m, b, "checkpoint") is True
    c = _node(tmp_path, "c")
    c.trusted_keys = [a.pub]  # a file instead of a dir
    assert integrity.check_signature(m, c, "checkpoint") is True


def test_tampered_ed25519_manifest_is_refused(tmp_path):
    a = _node(tmp_path, "a")
    b = _node(tmp_path, "b", trusts=[a])
    m = integrity.sign_manifest(_manifest_for_test(), a)
    m["container"]["annotations"]["grit.dev/extra"] = "x"
    for node in (a, b):
        with pytest.raises(GritError, match="does not match its signature") as e:
            integrity.check_signature(m, node, "checkpoint")
        assert e.value.kind == "source"
    # B signs the edited manifest and claims A's key id: still refused
    forged = integrity.sign_manifest(json.loads(json.dumps(m)), b)
    forged["signature"]["key_id"] = a.key_id
    with pytest.raises(GritError, match="does not match its signature"):
        integrity.check_signature(forged, b, "checkpoint")


def test_a_checkpoint_of_an_untrusted_key_is_refused_with_its_id(tmp_path):
    a = _node(tmp_path, "a")
    c = _node(tmp_path, "c")
    b = _node(tmp_path, "b", trusts=[a])
    m = integrity.sign_manifest(_manifest_for_test(), c)
    with pytest.raises(GritError) as e:
        integrity.check_signature(m, b, "restore source /x")
    assert e.value.kind == "source"
    assert ("restore source /x: signed by key %s, which this node does not trust (trusted: "
            % c.key_id) in e.value.message
    assert a.key_id in e.value.message and b.key_id in e.value.message  # what it does trust


def test_a_node_with_only_public_keys_cannot_sign(tmp_path):
    a = _node(tmp_path, "a")
    v = _node(tmp_path, "v", trusts=[a], signs=False)  # verifies A; holds no private key
    assert integrity.check_signature(integrity.sign_manifest(_manifest_for_test(), a), v,
                                     "checkpoint") is True
    img = str(tmp_path / "img")
    os.makedirs(img)
    _manifest.commit(img, _manifest_for_test(), v)
    m = _manifest.load(img)
    assert "signature" not in m  # its checkpoints are unsigned...
    for node in (a, v):  # ...and nodes that require signatures refuse them
        with pytest.raises(GritError, match="not signed, and require_signature is set"):
            integrity.check_signature(m, node, "checkpoint")
    # a public key is no signing key
    v.signing_key = os.path.join(str(tmp_path), "v", "trusted.d", "a.pub")
    os.chmod(v.signing_key, 0o600)
    with pytest.raises(GritError, match="not a PKCS8 private key"):
        integrity.sign_manifest(_manifest_for_test(), v)


def test_trusted_keys_others_can_write_are_refused(tmp_path):
    a = _node(tmp_path, "a")
    b = _node(tmp_path, "b", trusts=[a])
    m = integrity.sign_manifest(_manifest_for_test(), a)
    os.chmod(b.trusted_keys[0], 0o777)
    with pytest.raises(GritError, match="others can change it"):
        integrity.check_signature(m, b, "checkpoint")
    os.chmod(b.trusted_keys[0], 0o755)
    os.chmod(os.path.join(b.trusted_keys[0], "a.pub"), 0o666)
    with pytest.raises(GritError, match="others can change it"):
        integrity.check_signature(m, b, "checkpoint")


def test_a_private_key_in_trusted_keys_is_refused(tmp_path):
    a = _node(tmp_path, "a")
    b = _node(tmp_path, "b")
    shutil.copy(a.signing_key, os.path.join(b.trusted_keys[0], "a.pub"))
    os.chmod(os.path.join(b.trusted_keys[0], "a.pub"), 0o644)
    with pytest.raises(GritError, match="a private key: trust its public key instead"):
        integrity.check_signature(integrity.sign_manifest(_manifest_for_test(), a), b, "x")


def test_no_keys_at_all_and_required_is_a_config_error(tmp_path):
    conf = types.SimpleNamespace(signing_key=None, require_signature=True,
                                 trusted_keys=[str(tmp_path / "absent")])
    with pytest.raises(GritError, match="neither a signing_key nor any trusted_keys") as e:
        integrity.check_signature(_manifest_for_test(), conf, "checkpoint")
    assert e.value.kind == "config"
    conf.require_signature = False
    assert integrity.check_signature(_manifest_for_test(), conf, "checkpoint") is False


# --- the legacy symmetric key: one node only -------------------------------------------------

def test_legacy_hmac_key_still_signs_and_verifies_on_its_node(tmp_path):
    k = write_key(str(tmp_path / "hmac.key"), "a-test-signing-key-0123456789\n")
    node = types.SimpleNamespace(signing_key=k, require_signature=True, trusted_keys=[])
    m = integrity.sign_manifest(_manifest_for_test(), node)
    assert m["signature"]["alg"] == "hmac-sha256" and len(m["signature"]["value"]) == 64
    assert m["signature"]["key_id"] == hashlib.sha256(
        b"runc-grit key id\0a-test-signing-key-0123456789").hexdigest()[:16]
    _manifest.validate(json.loads(json.dumps(m)), "test")
    assert integrity.check_signature(m, node, "checkpoint") is True
    m["created"] = "edited"
    with pytest.raises(GritError, match="does not match its signature"):
        integrity.check_signature(m, node, "checkpoint")
    other = types.SimpleNamespace(signing_key=write_key(str(tmp_path / "o.key"),
                                                        "another-key-of-a-node-987654321"),
                                  require_signature=True, trusted_keys=[])
    with pytest.raises(GritError, match="signed with another key"):
        integrity.check_signature(integrity.sign_manifest(_manifest_for_test(), node), other, "x")
    ed = _node(tmp_path, "ed")  # an Ed25519 node cannot check (nor make) an HMAC signature
    with pytest.raises(GritError, match="symmetric .hmac-sha256. key .*which this node does "
                                        "not hold .its signing_key .* is an Ed25519 key"):
        integrity.check_signature(integrity.sign_manifest(_manifest_for_test(), node), ed, "x")


def test_doctor_warns_about_a_symmetric_key(tmp_path):
    from runc_grit.node import doctor
    k = write_key(str(tmp_path / "hmac.key"), "a-test-signing-key-0123456789\n")
    conf = types.SimpleNamespace(signing_key=k, require_signature=True, trusted_keys=[],
                                 privilege_check="enforce", staging="auto",
                                 staging_dir="/var/lib/runc-grit/staging", pycriu_path=None)
    sig = next(c for c in doctor._trust_checks(conf) if c.name == "signatures")
    assert not sig.ok and not sig.blocker
    assert "symmetric key: any node that verifies can also sign; use an Ed25519 key for a " \
           "cluster" in sig.detail
    a = _node(tmp_path, "a")
    a.privilege_check, a.staging, a.staging_dir, a.pycriu_path = "enforce", "auto", "/s", None
    sig = next(c for c in doctor._trust_checks(a) if c.name == "signatures")
    assert sig.ok and a.key_id in sig.detail


# --- the operator commands -------------------------------------------------------------------

def test_keygen_writes_a_key_pair_and_never_overwrites(tmp_path):
    env = dict(os.environ, **GRIT_ENV)
    out = str(tmp_path / "keys")
    p = subprocess.run(GRIT + ["keygen", "--out", out], capture_output=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    key, pub = os.path.join(out, "signing.key"), os.path.join(out, "signing.pub")
    assert os.stat(key).st_mode & 0o777 == 0o600 and os.stat(pub).st_mode & 0o777 == 0o644
    assert open(key).read().startswith("-----BEGIN PRIVATE KEY-----")
    assert open(pub).read().startswith("-----BEGIN PUBLIC KEY-----")
    kid = integrity.load_signer(key).key_id
    assert kid in p.stdout.decode() and sorted(os.listdir(out)) == ["signing.key", "signing.pub"]
    before = open(key).read()
    p = subprocess.run(GRIT + ["keygen", "--out", out], capture_output=True, env=env, timeout=60)
    assert p.returncode != 0 and b"exists; not overwritten" in p.stderr
    assert open(key).read() == before and sorted(os.listdir(out)) == ["signing.key", "signing.pub"]
    for f in (key, pub):
        p = subprocess.run(GRIT + ["key-id", f], capture_output=True, env=env, timeout=60)
        assert p.returncode == 0 and p.stdout.decode().strip() == kid, p.stderr
