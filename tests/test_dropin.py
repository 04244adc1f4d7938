"""Drop-in, as runc's users use runc: one bundle for many containers (one after another and
8 at once), argv runc-grit does not know, --log lines in runc's form. Real runc + CRIU,
through the runc-grit that install/install.sh installed (conftest.GRIT)."""
import json
import os
import subprocess
import threading

import pytest

from conftest import GRIT
from test_integration_runc import assert_continues, checkpoint

pytestmark = pytest.mark.integration


def _checkpointed_counter(genv):
    """A counter container "src", checkpointed into ck/img: (bundle, image dir, numbers seen)."""
    b = genv.bundle("src")
    p, out = genv.grit.create_with_pipes(b, "src")
    assert p.returncode == 0 and genv.grit.run(b, "start", "src").returncode == 0
    assert out.wait_for(lambda r: len(r.ints()) >= 3)
    img = os.path.join(genv.ckroot, "img")
    checkpoint(genv, b, "src", img)
    out.closed()
    return b, img, out.ints()


def _criu_config_of(b):
    with open(os.path.join(b, "config.json")) as f:
        return json.load(f)["annotations"]["org.criu.config"]


def test_one_bundle_two_containers_one_after_another(genv):
    b = genv.bundle("shared")
    seen = []
    for cid in ("first", "second"):
        p, out = genv.grit.create_with_pipes(b, cid)
        assert p.returncode == 0, genv.grit.log_error(b)
        assert genv.grit.run(b, "start", cid).returncode == 0
        assert out.wait_for(lambda r: len(r.ints()) >= 2)
        seen.append(out.ints()[:2])
        conf = _criu_config_of(b)
        assert genv.grit.run(b, "delete", "--force", cid).returncode == 0
        # nothing of the deleted container is named by the bundle: its CRIU config is shared
        # and outlives it; runc-grit's per-container state is gone
        assert os.path.isfile(conf) and not os.path.exists(os.path.join(genv.state_dir, cid))
    assert seen == [[1, 2], [1, 2]]


def test_one_bundle_eight_containers_at_once_then_checkpoint_and_restore(genv):
    b = genv.bundle("shared8")
    ids = ["c%d" % i for i in range(8)]
    results, readers = {}, {}

    def create(cid):  # (one pid file each: runc writes it through a fixed temp name)
        p, out = genv.grit.create_with_pipes(b, cid, pid_file=os.path.join(b, cid + ".pid"))
        results[cid] = p.returncode
        readers[cid] = out

    threads = [threading.Thread(target=create, args=(c,)) for c in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert results == {c: 0 for c in ids}, genv.grit.log_error(b)
    for cid in ids:
        assert genv.grit.run(b, "start", cid).returncode == 0
    for cid in ids:
        assert readers[cid].wait_for(lambda r: len(r.ints()) >= 2), cid
    # every one of them can be checkpointed: each found the CRIU config its bundle names
    img = os.path.join(genv.ckroot, "from-shared")
    checkpoint(genv, b, "c3", img)
    assert readers["c3"].closed()
    before = readers["c3"].ints()
    for cid in ids:
        if cid != "c3":
            assert genv.grit.run(b, "delete", "--force", cid).returncode == 0
    genv.grit.run(b, "delete", "--force", "c3")
    from runc_grit.node.state import list_ids
    assert list_ids(genv.state_dir) == []  # no per-container state survives delete
    # restore-on-create from another bundle, made the same way
    b2 = genv.bundle("restored", annotations={"grit.dev/restore-from": img},
                     rootfs_from=os.path.join(b, "rootfs"))
    p, out = genv.grit.create_with_pipes(b2, "back")
    assert p.returncode == 0, genv.grit.log_error(b2)
    assert genv.grit.run(b2, "start", "back").returncode == 0
    assert out.wait_for(lambda r: len(r.ints()) >= 3)
    assert_continues(before, out.ints())


def test_restore_bundle_reused_for_a_second_restore(genv):
    """kubelet recreates a restored container that exited with the same annotations; a user
    reuses the bundle: each create from it restores the same checkpoint again."""
    b, img, before = _checkpointed_counter(genv)
    b2 = genv.bundle("again", annotations={"grit.dev/restore-from": img},
                     rootfs_from=os.path.join(b, "rootfs"))
    for cid in ("r1", "r2"):
        p, out2 = genv.grit.create_with_pipes(b2, cid)
        assert p.returncode == 0, genv.grit.log_error(b2)
        assert genv.grit.run(b2, "start", cid).returncode == 0
        assert out2.wait_for(lambda r: len(r.ints()) >= 2)
        assert_continues(before, out2.ints())
        assert genv.grit.run(b2, "delete", "--force", cid).returncode == 0


def test_unknown_global_flag_with_restore_request(genv):
    """A flag runc-grit's tables lack, in front of a create that asks for a restore: never a
    fresh start. runc itself rejects the flag, and that error reaches --log."""
    b, img, _ = _checkpointed_counter(genv)
    b2 = genv.bundle("dst", annotations={"grit.dev/restore-from": img},
                     rootfs_from=os.path.join(b, "rootfs"))
    p = genv.grit.run(b2, "--no-such-runc-flag", "create", "--bundle", b2, "dst")
    assert p.returncode != 0
    assert genv.grit.state("dst") is None
    assert "no-such-runc-flag" in (genv.grit.log_error(b2) or "") + p.stderr.decode()


def test_failed_create_and_foreground_run_leave_no_state(genv):
    """runc removes a container itself when its create fails or `run` ends in the foreground:
    runc-grit keeps nothing for a plain create, so nothing of it outlives the container."""
    b = genv.bundle("bad")
    path = os.path.join(b, "config.json")
    spec = json.load(open(path))
    spec["process"]["cwd"] = "relative/cwd"  # runc refuses it
    json.dump(spec, open(path, "w"))
    p = genv.grit.run(b, "create", "--bundle", b, "bad")
    assert p.returncode != 0 and genv.grit.state("bad") is None
    b2 = genv.bundle("fg", args=["true"])
    p = genv.grit.run(b2, "run", "--bundle", b2, "fg")
    assert p.returncode == 0 and genv.grit.state("fg") is None
    from runc_grit.node.state import list_ids
    assert list_ids(genv.state_dir) == []


def test_gc_keeps_restored_containers_under_their_own_root(genv):
    """gc asks the runtime under the root each container was restored with (containerd's,
    not runc's default), and removes only state the runtime no longer knows."""
    b, img, _ = _checkpointed_counter(genv)
    b2 = genv.bundle("dst", annotations={"grit.dev/restore-from": img},
                     rootfs_from=os.path.join(b, "rootfs"))
    p, _ = genv.grit.create_with_pipes(b2, "dst")
    assert p.returncode == 0, genv.grit.log_error(b2)
    from runc_grit.node.state import list_ids
    p = subprocess.run(GRIT + ["gc"], env=genv.env, capture_output=True, timeout=60)
    assert p.returncode == 0 and list_ids(genv.state_dir) == ["dst"], p.stdout + p.stderr
    genv.runc("delete", "--force", "dst")  # behind runc-grit's back
    p = subprocess.run(GRIT + ["gc"], env=genv.env, capture_output=True, timeout=60)
    assert b"stale: dst" in p.stdout and list_ids(genv.state_dir) == []
