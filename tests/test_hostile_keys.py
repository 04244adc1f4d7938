"""Each node signs with its own Ed25519 key and trusts public keys only (real runc + CRIU,
through the installed runc-grit): node B trusts node A's public key and nothing else. A
checkpoint of node C (its own key, not trusted by B) is refused by B before CRIU runs, naming
C's key; A's checkpoint restores on B; B, holding A's public key, cannot make a manifest that
A's trust accepts."""
import json
import os
import shutil
import subprocess

import pytest

from runc_grit.checkpoint import integrity
from runc_grit.checkpoint import manifest as _manifest
from runc_grit.errors import GritError

from conftest import GRIT, Env
from test_integration_runc import assert_continues, checkpoint, start_counter

pytestmark = pytest.mark.integration


def node(workdir, name):
    """A node with its own key, runc root, state dir and checkpoint root; its CRIU is a
    recording wrapper, so a test can tell CRIU never ran on a refused checkpoint."""
    d = os.path.join(workdir, name)
    os.makedirs(d)
    calls = os.path.join(d, "criu-calls")
    wrapper = os.path.join(d, "criu-rec")
    with open(wrapper, "w") as f:
        f.write('#!/bin/sh\necho "$*" >> %s\nexec %s "$@"\n' % (calls, shutil.which("criu")))
    os.chmod(wrapper, 0o755)
    e = Env(d, {"criu": wrapper})
    e.criu_calls = calls
    e.key_id = integrity.load_signer(e.signing_key).key_id
    return e


def criu_calls(e):
    try:
        with open(e.criu_calls) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def checkpoint_on(e, name):
    """A counter started on e and checkpointed there: (bundle, its output, image dir)."""
    b, out = start_counter(e, name, name)
    assert out.wait_for(lambda r: len(r.ints()) >= 3)
    img = os.path.join(e.ckroot, name)
    checkpoint(e, b, name, img)
    out.closed()
    e.grit.run(b, "delete", name)
    return b, out, img


def carry(img, dst_node, name):
    """The image dir as another node finds it (a shared volume, a copy)."""
    dst = os.path.join(dst_node.ckroot, name)
    shutil.copytree(img, dst)
    return dst


def refused_restore(e, name, img, src_bundle):
    """A restore of img on e that must be refused before CRIU runs: its --log error."""
    before = len(criu_calls(e))
    b = e.bundle(name, annotations={"grit.dev/restore-from": img},
                 rootfs_from=os.path.join(src_bundle, "rootfs"))
    p, _ = e.grit.create_with_pipes(b, name)
    err = e.grit.log_error(b)
    assert p.returncode != 0, err
    assert len(criu_calls(e)) == before, "CRIU ran on a checkpoint this node does not trust"
    assert e.grit.state(name) is None
    assert name not in e.runc("list", "-q").stdout.decode().split()
    return err


@pytest.fixture
def nodes(workdir):
    a, b, c = node(workdir, "node-a"), node(workdir, "node-b"), node(workdir, "node-c")
    b.trust(a)  # B: A's public key only
    yield a, b, c
    for e in (a, b, c):
        e.cleanup()


def test_untrusted_nodes_checkpoint_is_refused_and_the_trusted_ones_restores(nodes, workdir):
    a, b, c = nodes
    assert len({a.key_id, b.key_id, c.key_id}) == 3
    # C's checkpoint (signed, valid, by a key B does not trust): refused, naming C's key
    cb, _, cimg = checkpoint_on(c, "capp")
    err = refused_restore(b, "from-c", carry(cimg, b, "from-c"), cb)
    assert "signed by key %s, which this node does not trust (trusted: " % c.key_id in err, err
    assert a.key_id in err and b.key_id in err  # what B trusts: A's key and its own
    # ...also as an archive: import refuses it and leaves nothing
    archive = os.path.join(workdir, "c.tar")
    p = subprocess.run(GRIT + ["export", "--no-compress", cimg, "-o", archive],
                       capture_output=True, env=c.env, timeout=120)
    assert p.returncode == 0, p.stderr
    dst = os.path.join(b.ckroot, "imported-c")
    p = subprocess.run(GRIT + ["import", archive, "-o", dst], capture_output=True, env=b.env,
                       timeout=120)
    assert p.returncode != 0 and ("signed by key %s" % c.key_id).encode() in p.stderr, p.stderr
    assert not os.path.exists(dst) and not os.path.exists(dst + ".importing")
    # A's checkpoint restores on B, and the counter continues
    ab, out, aimg = checkpoint_on(a, "app")
    moved = carry(aimg, b, "from-a")
    assert _manifest.load(moved)["signature"]["key_id"] == a.key_id
    bb, out_b = start_counter(b, "app", "app", annotations={"grit.dev/restore-from": moved},
                              rootfs_from=os.path.join(ab, "rootfs"))
    assert out_b.wait_for(lambda r: len(r.ints()) >= 2)
    assert_continues(out.ints(), out_b.ints())
    assert criu_calls(b)  # B's CRIU restored it


def test_a_node_holding_a_public_key_cannot_sign_for_its_owner(nodes, workdir):
    """B holds A's public key (it trusts A). Whatever B signs with it or with its own key, A
    refuses: A trusts its own key only, and an Ed25519 public key does not sign."""
    a, b, _ = nodes
    ab, _, aimg = checkpoint_on(a, "app")
    a_pub = os.path.join(b.trusted_dir, "%s.pub" % a.key_id)
    m = _manifest.load(aimg)
    m["container"]["annotations"]["grit.dev/forged-by"] = "node-b"
    # 1. A's public key as B's signing key: no signature comes out of it
    os.chmod(a_pub, 0o600)
    conf_b = type("Conf", (), {"signing_key": a_pub})()
    with pytest.raises(GritError, match="not a PKCS8 private key"):
        integrity.sign_manifest(json.loads(json.dumps(m)), conf_b)
    os.chmod(a_pub, 0o644)
    # 2. signed with B's own key (the manifest names B's key): A does not trust it
    forged = carry(aimg, a, "forged-own")
    _manifest.write(forged, integrity.load_signer(b.signing_key).sign(json.loads(json.dumps(m))))
    err = refused_restore(a, "forged-own", forged, ab)
    assert "signed by key %s, which this node does not trust" % b.key_id in err, err
    # 3. signed with B's key but claiming A's key id: the signature does not verify
    forged = carry(aimg, a, "forged-claim")
    fm = integrity.load_signer(b.signing_key).sign(json.loads(json.dumps(m)))
    fm["signature"]["key_id"] = a.key_id
    _manifest.write(forged, fm)
    err = refused_restore(a, "forged-claim", forged, ab)
    assert "does not match its signature" in err, err
    # 4. A's own signature kept on the edited manifest: refused as well
    forged = carry(aimg, a, "forged-kept")
    fm = json.loads(json.dumps(m))
    fm["signature"] = _manifest.load(aimg)["signature"]
    _manifest.write(forged, fm)
    err = refused_restore(a, "forged-kept", forged, ab)
    assert "does not match its signature" in err, err
