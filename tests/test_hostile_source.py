"""Hostile checkpoints, the source side (security issue items 3, 4, 5, 7): a checkpoint
belongs to its tenant; in place only what this node made; nothing unlisted reaches CRIU;
authentication before any other work, every file opened once. Unit tests of each rule, then
the attacks against the installed runc-grit with real runc and CRIU: each is refused with a
reason in --log, nothing is restored, the source keeps running."""
import json
import os
import shutil
import stat
import subprocess
import threading
import time

import pytest

from conftest import Env
from runc_grit.checkpoint import imagedir, manifest, source, tenant
from runc_grit.errors import GritError
from test_integration_runc import checkpoint, start_counter
from test_units import Conf, make_images

NS_A = {"io.kubernetes.cri.container-type": "container",
        "io.kubernetes.cri.sandbox-namespace": "team-a",
        "io.kubernetes.cri.sandbox-name": "job-0", "io.kubernetes.cri.sandbox-uid": "uid-a",
        "io.kubernetes.cri.container-name": "app",
        "io.kubernetes.cri.image-name": "reg.example/app:v1"}
NS_B = dict(NS_A, **{"io.kubernetes.cri.sandbox-namespace": "team-b",
                     "io.kubernetes.cri.sandbox-uid": "uid-b"})


# --- the tenant rule (pure) -----------------------------------------------------------------

def test_the_source_section_records_namespace_pod_and_image():
    src = tenant.of(dict(NS_A, **{"io.kubernetes.cri.image-name": "reg.example/app@sha256:" + "a" * 64}))
    assert src["namespace"] == "team-a" and src["pod_uid"] == "uid-a" and src["pod_name"] == "job-0"
    assert src["image_digest"] == "sha256:" + "a" * 64
    crio = tenant.of({"io.kubernetes.pod.namespace": "n", "io.kubernetes.cri-o.ImageRef":
                      "sha256:" + "b" * 64})
    assert crio == {"namespace": "n", "image_digest": "sha256:" + "b" * 64}
    assert tenant.of({}) == {}


@pytest.mark.parametrize("src, dst, transfers, want", [
    ({"namespace": "a"}, {"namespace": "a"}, (), None),
    ({"namespace": "a"}, {"namespace": "b"}, (), "belongs to namespace a; this container is namespace b"),
    ({"namespace": "a"}, {"namespace": "b"}, ({"from": "a", "to": "b"},), None),
    ({"namespace": "a"}, {"namespace": "b"}, ({"from": "b", "to": "a"},), "belongs to namespace a"),
    ({}, {"namespace": "b"}, (), "belongs to no Kubernetes namespace"),
    ({"namespace": "a"}, {}, (), "this container is no Kubernetes namespace"),
    ({}, {}, (), None),
    ({"namespace": "a", "image_digest": "sha256:1"}, {"namespace": "a", "image_digest": "sha256:2"},
     (), "sha256:1"),
])
def test_tenant_rule(src, dst, transfers, want):
    found = tenant.problems(src, dst, transfers)
    assert (want is None and found == []) or (want and any(want in f for f in found)), found


def test_the_manifest_records_its_source_and_is_signed_with_it():
    m = manifest.build("c", NS_A, "/b", {"name": "runc", "version": "1"}, {"version": "4"},
                       [{"name": "x", "size": 1}], {})
    assert m["source"]["namespace"] == "team-a"
    manifest.validate(m, "test")
    # an older manifest (no source section): its signed annotations say the same
    del m["source"]
    assert tenant.of_manifest(m)["namespace"] == "team-a"


# --- authenticate first, open once (in-process) ----------------------------------------------

def _conf(tmp_path, **kw):
    c = Conf([str(tmp_path / "ck")], **kw)
    return c


def test_an_unlisted_file_or_dir_is_refused(tmp_path):
    d = make_images(str(tmp_path / "ck" / "x"))
    open(os.path.join(d, "apparmor.img"), "wb").close()
    with pytest.raises(GritError, match="apparmor.img not listed in the signed manifest"):
        source.validate(d, _conf(tmp_path))
    os.unlink(os.path.join(d, "apparmor.img"))
    os.mkdir(os.path.join(d, "sub"))
    with pytest.raises(GritError, match="sub not listed"):
        source.validate(d, _conf(tmp_path, staging="none"))


def test_a_fifo_or_device_in_place_of_an_image_is_refused_without_opening_it(tmp_path):
    d = make_images(str(tmp_path / "ck" / "x"))
    p = os.path.join(d, "pages-1.img")
    os.unlink(p)
    os.mkfifo(p)
    done = []
    t = threading.Thread(target=lambda: done.append(pytest.raises(GritError, source.validate, d,
                                                                  _conf(tmp_path))))
    t.start()
    t.join(20)
    assert done, "a FIFO hung the restore"
    assert "a FIFO" in str(done[0].value)
    os.unlink(p)
    os.mknod(p, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's numbers
    with pytest.raises(GritError, match="a character device"):
        source.validate(d, _conf(tmp_path))


def test_a_file_larger_than_the_manifest_says_is_refused_before_any_copy(tmp_path):
    d = make_images(str(tmp_path / "ck" / "x"))
    with open(os.path.join(d, "pages-1.img"), "ab") as f:
        f.write(b"x" * (1 << 20))
    conf = _conf(tmp_path)
    with pytest.raises(GritError, match="pages-1.img has 1052672 bytes, the manifest says 4096"):
        source.validate(d, conf)
    assert os.listdir(conf.staging_dir) == []


def test_the_signature_is_checked_before_the_schema_and_any_copy(tmp_path):
    """An unsigned, schema-invalid manifest on a node that requires signatures: the answer is
    'not signed' (no schema work), and nothing is copied."""
    d = make_images(str(tmp_path / "ck" / "x"))
    p = os.path.join(d, manifest.NAME)
    m = json.load(open(p))
    m["images"] = [{"name": "../../etc/shadow", "size": "huge"}] * 1000
    json.dump(m, open(p, "w"))
    conf = _conf(tmp_path)
    conf.require_signature = True
    conf.signing_key = None
    calls = []
    orig = manifest.validate
    manifest.validate = lambda *a: calls.append(a) or orig(*a)
    try:
        with pytest.raises(GritError, match="signing_key|not signed"):
            source.validate(d, conf)
    finally:
        manifest.validate = orig
    assert calls == [] and not os.path.exists(conf.staging_dir)


def test_a_manifest_that_is_no_json_object_is_refused(tmp_path):
    d = make_images(str(tmp_path / "ck" / "x"))
    with open(os.path.join(d, manifest.NAME), "w") as f:
        f.write("[1, 2]")
    with pytest.raises(GritError, match="not a JSON object"):
        source.validate(d, _conf(tmp_path))


def test_a_symlinked_path_component_swapped_in_is_refused(tmp_path):
    d = make_images(str(tmp_path / "ck" / "x"))
    real = os.path.realpath(d)
    imagedir.open_dir(real, "w")  # fine as it is
    os.rename(d, d + ".moved")
    os.symlink(d + ".moved", d)
    with pytest.raises(GritError, match="a symlink on its path is refused"):
        imagedir.open_dir(real, "w")


def test_copies_of_killed_restores_are_swept(tmp_path):
    d = make_images(str(tmp_path / "ck" / "x"))
    conf = _conf(tmp_path)
    os.makedirs(conf.staging_dir)
    p = subprocess.Popen(["true"])
    p.wait()
    stale = os.path.join(conf.staging_dir, "restore-%d-abc" % p.pid)  # that pid is gone
    live = os.path.join(conf.staging_dir, "restore-1-abc")           # pid 1 runs
    os.makedirs(stale)
    os.makedirs(live)
    here, _, _ = source.validate(d, conf)
    assert not os.path.exists(stale) and os.path.exists(live)
    source.release(here, conf)


def test_an_old_checkpoint_is_refused_when_the_node_limits_age(tmp_path):
    d = make_images(str(tmp_path / "ck" / "x"))
    conf = _conf(tmp_path)
    conf.max_checkpoint_age = 3600
    here, _, _ = source.validate(d, conf)
    source.release(here, conf)
    p = os.path.join(d, manifest.NAME)
    m = json.load(open(p))
    m["created"] = "2020-01-01T00:00:00.000Z"
    json.dump(m, open(p, "w"))
    with pytest.raises(GritError, match="max_checkpoint_age 3600"):
        source.validate(d, conf)


def test_another_tenants_checkpoint_is_refused_before_any_copy(tmp_path):
    d = str(tmp_path / "ck" / "x")
    make_images(d, with_manifest=False)
    m = manifest.build("c1", NS_A, "/b", {"name": "runc", "version": "1.1"}, {"version": "4.1"},
                       manifest.list_images(d, digest=True), {})
    manifest.write(d, m)
    conf = _conf(tmp_path)
    with pytest.raises(GritError, match="belongs to namespace team-a; this container is "
                                        "namespace team-b"):
        source.validate(d, conf, spec={"annotations": NS_B})
    assert not os.path.exists(conf.staging_dir)
    conf.tenant_transfers = [{"from": "team-a", "to": "team-b"}]
    here, _, _ = source.validate(d, conf, spec={"annotations": NS_B})
    source.release(here, conf)


def test_fresh_policy_never_runs_once_the_rootfs_was_changed(tmp_path):
    from runc_grit.runtimes.base import Request

    class Log:
        def __init__(self):
            self.lines = []

        def warning(self, msg):
            self.lines.append(msg)

    class St:
        removed = False

        def remove(self):
            self.removed = True

    req = Request.__new__(Request)
    req.restore = source.RestoreRequest("/x", "grit.dev/restore-from", "fresh")
    req.state, req.log, req.rootfs_touched = St(), Log(), True
    req.fresh = lambda why: pytest.fail("started fresh on a changed rootfs")
    with pytest.raises(GritError, match="boom"):
        req.give_up(GritError("boom"))
    assert req.state.removed and "not applied" in req.log.lines[0]


# --- real runc + CRIU, the installed runc-grit ----------------------------------------------

def _refused(e, name, img, why, annotations=None):
    ann = dict(annotations or {}, **{"grit.dev/restore-from": img})
    b = e.bundle(name, annotations=ann)
    p, _ = e.grit.create_with_pipes(b, name)
    err = e.grit.log_error(b)
    assert p.returncode != 0 and why in (err or ""), err
    assert e.grit.state(name) is None
    assert name not in e.runc("list", "-q").stdout.decode().split()
    return err


@pytest.fixture
def henv(workdir):
    e = Env(workdir)
    yield e
    e.cleanup()


def _source(e, annotations=None, name="src"):
    b, out = start_counter(e, name, name, annotations=annotations)
    assert out.wait_for(lambda r: len(r.ints()) >= 2)
    return b, out


@pytest.mark.integration
def test_item3_another_namespace_cannot_restore_a_checkpoint(henv):
    e = henv
    b, out = _source(e, NS_A)
    img = os.path.join(e.ckroot, "team-a")
    checkpoint(e, b, "src", img, "--leave-running")
    assert manifest.load(img)["source"]["namespace"] == "team-a"
    _refused(e, "thief", img, "belongs to namespace team-a; this container is namespace team-b",
             NS_B)
    _refused(e, "local", img, "this container is no Kubernetes namespace")
    # the same namespace restores, and the counter continues
    b2 = e.bundle("same", annotations=dict(NS_A, **{"grit.dev/restore-from": img}))
    p, out2 = e.grit.create_with_pipes(b2, "same")
    assert p.returncode == 0, e.grit.log_error(b2)
    assert e.grit.run(b2, "start", "same").returncode == 0
    assert out2.wait_for(lambda r: len(r.ints()) >= 2)
    assert out2.ints()[0] > 1
    # an operator may allow a pair
    e.write_config({"tenant_transfers": [{"from": "team-a", "to": "team-b"}]})
    b3 = e.bundle("moved", annotations=dict(NS_B, **{"grit.dev/restore-from": img}))
    p, out3 = e.grit.create_with_pipes(b3, "moved")
    assert p.returncode == 0, e.grit.log_error(b3)
    n = len(out.ints())
    assert out.wait_for(lambda r: len(r.ints()) >= n + 1)  # the source kept running


@pytest.mark.integration
def test_item4_in_place_only_for_what_this_node_made(henv):
    """A dir runc-grit created and nothing touched since is read in place; a root-owned dir
    it did not create, or one whose image was swapped by a root writer after the checkpoint
    (same owner, same mode), is copied, and the swapped file is caught on the copy."""
    e = henv
    os.chmod(e.ckroot, 0o700)
    os.chmod(e.dir, 0o755)
    b, out = _source(e)
    made = os.path.join(e.ckroot, "made")
    checkpoint(e, b, "src", made, "--leave-running")
    b1 = e.bundle("inplace", annotations={"grit.dev/restore-from": made})
    p, _ = e.grit.create_with_pipes(b1, "inplace")
    assert p.returncode == 0, e.grit.log_error(b1)
    st = json.load(open(os.path.join(e.state_dir, "inplace", "state.json")))
    assert st["staged"] is False
    e.runc("delete", "--force", "inplace")
    # a root writer (a root container on a hostPath) swaps core-1.img for another root-owned
    # file of the same size: the dir is no longer as made, so it is copied and verified
    core = os.path.join(made, "core-1.img")
    data = bytearray(open(core, "rb").read())
    data[-1] ^= 0xFF
    tmp = core + ".new"
    with open(tmp, "wb") as f:
        f.write(bytes(data))
    os.chmod(tmp, 0o600)
    os.rename(tmp, core)
    err = _refused(e, "swapped", made, "core-1.img does not match its sha256")
    assert "restore source" in err
    # a dir that exists before the checkpoint (root-owned, 0700) is not runc-grit's: copied
    pre = os.path.join(e.ckroot, "pre")
    os.makedirs(pre, mode=0o700)
    checkpoint(e, b, "src", pre, "--leave-running")
    b2 = e.bundle("copied", annotations={"grit.dev/restore-from": pre})
    p, _ = e.grit.create_with_pipes(b2, "copied")
    assert p.returncode == 0, e.grit.log_error(b2)
    st = json.load(open(os.path.join(e.state_dir, "copied", "state.json")))
    assert st["staged"] is True
    assert os.listdir(os.path.join(e.dir, "staging")) == []


@pytest.mark.integration
def test_item5_files_not_in_the_manifest_never_reach_criu(henv):
    e = henv
    b, out = _source(e)
    img = os.path.join(e.ckroot, "img")
    checkpoint(e, b, "src", img, "--leave-running")
    with open(os.path.join(img, "apparmor.img"), "wb") as f:
        f.write(b"\x00" * 16)
    _refused(e, "extra", img, "apparmor.img not listed in the signed manifest")
    os.unlink(os.path.join(img, "apparmor.img"))
    os.mkdir(os.path.join(img, "sub"))
    _refused(e, "subdir", img, "sub not listed in the signed manifest")
    os.rmdir(os.path.join(img, "sub"))
    # the direct restore path (containerd's own restore of a checkpoint archive) too
    with open(os.path.join(img, "apparmor.img"), "wb") as f:
        f.write(b"\x00" * 16)
    b2 = e.bundle("direct", annotations={"io.kubernetes.cri.container-type": "container"})
    p = e.grit.run(b2, "restore", "--detach", "--bundle", b2, "--image-path", img,
                   "--work-path", img + "-w2", "direct")
    assert p.returncode != 0
    assert "apparmor.img not listed" in e.grit.log_error(b2)
    assert e.grit.state("direct") is None


@pytest.mark.integration
def test_item7_fifo_bad_signature_and_killed_runs(henv):
    e = henv
    b, out = _source(e)
    img = os.path.join(e.ckroot, "img")
    checkpoint(e, b, "src", img, "--leave-running")
    # a FIFO in place of a listed image: refused at once, never opened
    fifo = os.path.join(e.ckroot, "fifo")
    shutil.copytree(img, fifo)
    os.unlink(os.path.join(fifo, "pages-1.img"))
    os.mkfifo(os.path.join(fifo, "pages-1.img"))
    t0 = time.monotonic()
    _refused(e, "fifo", fifo, "pages-1.img is not a regular file (a FIFO)")
    assert time.monotonic() - t0 < 60
    # a manifest edited after signing: refused before anything is copied
    edited = os.path.join(e.ckroot, "edited")
    shutil.copytree(img, edited)
    p = os.path.join(edited, manifest.NAME)
    m = json.load(open(p))
    m["container"]["id"] = "someone-else"
    json.dump(m, open(p, "w"))
    staging_dir = os.path.join(e.dir, "staging")
    shutil.rmtree(staging_dir, ignore_errors=True)
    _refused(e, "edited", edited, "signature")
    assert not os.path.exists(staging_dir) or os.listdir(staging_dir) == []
    # a copy left by a killed restore is swept by the next restore
    dead = subprocess.Popen(["true"])
    dead.wait()
    os.makedirs(os.path.join(staging_dir, "restore-%d-left" % dead.pid))
    b2 = e.bundle("after", annotations={"grit.dev/restore-from": img})
    q, out2 = e.grit.create_with_pipes(b2, "after")
    assert q.returncode == 0, e.grit.log_error(b2)
    assert os.listdir(staging_dir) == []
    assert e.grit.run(b2, "start", "after").returncode == 0
    assert out2.wait_for(lambda r: len(r.ints()) >= 2)
    n = len(out.ints())
    assert out.wait_for(lambda r: len(r.ints()) >= n + 1)  # the source never stopped
