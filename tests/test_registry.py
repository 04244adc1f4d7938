"""Issue 26: checkpoints move between nodes through an OCI registry, with no shared path.

Real components: Debian's docker-registry (CNCF distribution) on loopback with htpasswd auth
(tests/distribution.py), real runc + CRIU, the installed runc-grit. Two "nodes" on this
machine (own state dirs, checkpoint roots, keys, registry credentials): A checkpoints and
pushes, B restores by `grit.dev/restore-from: oci://...`, and the counter continues. Each
failure (a tampered blob, a wrong digest, a missing blob, bad credentials, a registry that
stops mid-pull, an untrusted signer, a checkpoint of another tenant, plain HTTP to a TLS
registry) fails the create with its reason in the --log file and leaves nothing: no
container, nothing in B's pull cache.
"""
import json
import os
import shutil
import subprocess

import pytest

from runc_grit.cli.harness import PipeReader
from runc_grit.registry import layout, reference

from conftest import GRIT, Env
from test_integration_runc import assert_continues, checkpoint, start_counter

TAG = "v1"


# --- in-process: references and the layout ---------------------------------------------------

@pytest.mark.parametrize("text,want", [
    ("oci://127.0.0.1:5000/ck/app:v1", ("127.0.0.1:5000", "ck/app", "v1", None)),
    ("registry.example.com/a/b/c", ("registry.example.com", "a/b/c", None, None)),
    ("localhost/x@sha256:" + "a" * 64, ("localhost", "x", None, "sha256:" + "a" * 64)),
    ("r.io:443/x:t@sha256:" + "b" * 64, ("r.io:443", "x", "t", "sha256:" + "b" * 64)),
])
def test_reference_parse(text, want):
    r = reference.parse(text)
    assert (r.host, r.repo, r.tag, r.digest) == want
    assert reference.parse(str(r)) == r


@pytest.mark.parametrize("bad", ["app:v1", "oci://", "oci://host/UPPER", "/abs/path",
                                 "h.io/x@sha256:short", "h.io/../x", "h.io/x:-t"])
def test_reference_refuses(bad):
    with pytest.raises(Exception, match="image reference"):
        reference.parse(bad)


def test_layout_splits_large_files_into_bounded_parts(tmp_path):
    mb = 1 << 20
    fd = os.open(str(tmp_path), os.O_RDONLY)
    files = [("pages-1.img", fd, 150 * mb), ("core.img", fd, 10), ("pages-2.img", fd, 64 * mb),
             ("mm.img", fd, 70 * mb)]
    layers = layout.plan(files, fd, 100, [("config.dump", fd, 5)], 64 * mb)
    os.close(fd)
    assert [l.role for l in layers[:2]] == ["manifest", "meta"]
    names = [[e.arcname for e in l.entries] for l in layers[2:]]
    assert names[:3] == [["checkpoint/pages-1.img.grit-part-00000"],
                         ["checkpoint/pages-1.img.grit-part-00001"],
                         ["checkpoint/pages-1.img.grit-part-00002"]]
    assert [e.length for l in layers[2:5] for e in l.entries] == [64 * mb, 64 * mb, 22 * mb]
    assert all(sum(e.length for e in l.entries) <= 64 * mb for l in layers[2:])
    # every part maps back to its file and offset, and nothing else does
    sizes = {n: s for n, _, s in files}
    assert layout.target_of("checkpoint/pages-1.img.grit-part-00002", sizes, 64 * mb) == \
        ("pages-1.img", 128 * mb, 22 * mb)
    for bad in ("checkpoint/pages-1.img", "checkpoint/pages-1.img.grit-part-00003",
                "checkpoint/other.img", "config.dump", "checkpoint/../x",
                "checkpoint/core.img.grit-part-00000"):
        with pytest.raises(Exception):
            layout.target_of(bad, sizes, 64 * mb)


def test_layer_bytes_are_deterministic_tars(tmp_path):
    import io
    import tarfile
    p = tmp_path / "f"
    p.write_bytes(b"x" * 1000)
    fd = os.open(str(p), os.O_RDONLY)
    l1 = layout.plan([("f", fd, 1000)], fd, 1000, [], 64 << 20)[1]
    data = b"".join(layout.chunks(l1))
    assert len(data) == l1.size and data == b"".join(layout.chunks(l1))
    os.close(fd)
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        [m] = t.getmembers()
        assert (m.name, m.size, m.mtime, m.uid, m.mode) == ("checkpoint/f", 1000, 0, 0, 0o600)
        assert t.extractfile(m).read() == b"x" * 1000


def test_cache_pages_verified_mark_lives_and_dies_with_its_entry(tmp_path):
    """An entry is trusted without a page check only beside its mark; trimming or evicting
    the entry takes the mark; a mark whose entry is gone is swept; a locked entry is not
    evicted (the other restore checks its pages too) but loses its mark."""
    from runc_grit.registry import cache
    root = str(tmp_path)
    a, b = cache.entry(root, "sha256:" + "a" * 64), cache.entry(root, "sha256:" + "b" * 64)
    for e in (a, b):
        os.mkdir(e)
        with open(os.path.join(e, "pages-1.img"), "wb") as f:
            f.write(b"x" * 8192)
    assert not cache.pages_verified(a)
    cache.mark_pages_verified(a)
    assert cache.pages_verified(a) and not cache.pages_verified(b)
    os.symlink(a + ".pages-verified", b + ".pages-verified")  # planted: not a mark
    assert not cache.pages_verified(b)
    os.unlink(b + ".pages-verified")
    held = cache.lock(a)  # another restore reads it: it stays, but its mark goes
    assert cache.evict(a) is False and os.path.isdir(a) and not cache.pages_verified(a)
    cache.unlock(held)
    assert cache.evict(a) is True
    assert not os.path.exists(a) and not cache.pages_verified(a)
    cache.mark_pages_verified(b)
    shutil.rmtree(b)  # gone some other way: its mark is swept by the next trim
    cache.trim(root, 1 << 30)
    assert os.listdir(root) == []
    os.mkdir(a)
    with open(os.path.join(a, "pages-1.img"), "wb") as f:
        f.write(b"x" * 8192)
    cache.mark_pages_verified(a)
    assert cache.trim(root, 0) == [a] and os.listdir(root) == []


def test_a_pull_that_loses_the_commit_race_trusts_nothing_of_the_winner(tmp_path, monkeypatch):
    """Two pulls of one digest: the one that renames first keeps the name. A pull that checked
    every page itself but lost (its dir discarded) must not mark the winner's entry, whose
    pages may only have had their blob digests checked (a deferred pull): the restore checks
    the winner's pages as any unmarked entry's."""
    import types
    from runc_grit.registry import cache, pull
    digest = "sha256:" + "c" * 64
    m = {"images": [{"name": "pages-1.img", "size": 4, "sha256": "0" * 64},
                    {"name": "core-1.img", "size": 4, "sha256": "1" * 64}]}
    conf = types.SimpleNamespace(registry={"cache_dir": str(tmp_path)},
                                 staging_dir=str(tmp_path / "staging"))
    monkeypatch.setattr(pull, "Client", lambda *a, **k: types.SimpleNamespace(close=lambda: None))
    monkeypatch.setattr(pull, "resolve", lambda client, ref, where: ({}, digest))

    def fetch(ref, conf, spec, where, final, doc, dg, root, admit=True, defer_pages=False):
        os.mkdir(final)  # the other pull renamed first
        return final, m, True, {"unverified": [], "won": False, "lock": None}
    monkeypatch.setattr(pull, "fetch", fetch)
    path, _, _, stats = pull.to_cache("oci://r.io/x@" + digest, conf)
    try:
        assert [i["name"] for i in stats["unverified"]] == ["pages-1.img"]
        assert not cache.pages_verified(path)
    finally:
        pull.release(path, pages_ok=False)
    assert not os.path.exists(path)  # its pages failed: evicted


def test_cache_dir_may_not_be_the_staging_dir(tmp_path):
    import types
    from runc_grit.registry import cache
    conf = types.SimpleNamespace(registry={"cache_dir": str(tmp_path) + "/"},
                                 staging_dir=str(tmp_path))
    with pytest.raises(Exception, match="is the staging dir"):
        cache.cache_dir(conf)
    conf.registry = {}
    assert cache.cache_dir(conf) == os.path.join(str(tmp_path), "oci-cache")


def test_page_check_that_never_ran_says_nothing(tmp_path):
    """A page check whose start failed (here: its verdict path is a dir) has no outcome, so
    nothing is marked verified from it; one that ran says whether the pages matched."""
    import hashlib
    from runc_grit.checkpoint.pagecheck import PageCheck

    class State:
        def path(self, name):
            return str(tmp_path / name)
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "pages-1.img").write_bytes(b"abcd")
    good = [{"name": "pages-1.img", "size": 4, "sha256": hashlib.sha256(b"abcd").hexdigest()}]
    bad = [dict(good[0], sha256="0" * 64)]
    for items, want in ((good, True), (bad, False)):
        pc = PageCheck(str(tmp_path / "img"), items, "test", State())
        pc.start()
        pc.wait()
        assert pc.outcome() is want
    os.unlink(tmp_path / "pages-verdict")
    (tmp_path / "pages-verdict").mkdir()
    pc = PageCheck(str(tmp_path / "img"), good, "test", State())
    with pytest.raises(OSError):
        pc.start()
    assert pc.wait() is None and pc.outcome() is None


# --- real registry, runc, CRIU ---------------------------------------------------------------

def _have_registry():
    return shutil.which("docker-registry") and shutil.which("htpasswd")


@pytest.fixture
def dist(workdir):
    if not _have_registry():
        pytest.skip("docker-registry / htpasswd not installed (install/deps.sh installs them)")
    from distribution import Distribution
    d = Distribution(os.path.join(workdir, "registry"))
    yield d
    d.stop()


def node(workdir, name, dist, **registry):
    """A node with its own state, checkpoint root, key and registry credentials."""
    d = os.path.join(workdir, name)
    os.makedirs(d)
    e = Env(d)
    auth = dist.write_auth_file(os.path.join(d, "auth.json"), **registry.pop("creds", {}))
    conf = {"auth_file": auth, "insecure": [dist.host], "timeout": 60}
    conf.update(registry)
    e.write_config({"registry": conf})
    e.cache = os.path.join(d, "staging", "oci-cache")
    return e


def grit(e, *args, timeout=180):
    return subprocess.run(GRIT + list(args), capture_output=True, text=True, env=e.env,
                          timeout=timeout)


def _source(workdir, dist, annotations=None):
    """Node A: a counter, checkpointed (it stops), pushed. Returns (a, bundle, output, ref,
    push result)."""
    a = node(workdir, "node-a", dist)
    ba, out = start_counter(a, "app", "app", annotations=annotations)
    assert out.wait_for(lambda r: len(r.ints()) >= 3)
    img = os.path.join(a.ckroot, "app")
    checkpoint(a, ba, "app", img)
    out.closed()
    a.grit.run(ba, "delete", "app")
    p = grit(a, "push", "--json", "--blob-size", str(64 << 20), img, dist.ref("ck/app", TAG))
    assert p.returncode == 0, p.stderr
    return a, ba, out, img, json.loads(p.stdout)


def _cache_names(e):
    """The cache's entries and in-progress pulls (the pages-verified marks left out)."""
    names = os.listdir(e.cache) if os.path.isdir(e.cache) else []
    return sorted(n for n in names if not n.endswith(".pages-verified"))


def _verified(e, digest):
    return os.path.isfile(os.path.join(e.cache, "sha256-%s.pages-verified" % digest.split(":")[1]))


def _timings(e, cid):
    return json.load(open(os.path.join(e.state_dir, cid, "state.json")))["timings"]


def _refused(b, bundle_name, ref, rootfs_from, expect, annotations=None):
    """A create on node b restoring from ref fails with expect in its --log, and leaves no
    container and nothing in the pull cache."""
    ann = {"grit.dev/restore-from": ref}
    ann.update(annotations or {})
    bb = b.bundle(bundle_name, annotations=ann, rootfs_from=rootfs_from)
    p, _ = b.grit.create_with_pipes(bb, bundle_name)
    err = b.grit.log_error(bb) or ""
    assert p.returncode != 0, err
    assert expect in err, err
    assert b.grit.state(bundle_name) is None
    assert [n for n in _cache_names(b) if not n.startswith("sha256-")] == [], _cache_names(b)
    return err


@pytest.mark.integration
def test_two_nodes_checkpoint_push_then_restore_by_oci_reference(workdir, dist):
    a, ba, out, img, pushed = _source(workdir, dist)
    assert pushed["sent"] > 0 and pushed["skipped"] == 0, pushed
    # pushing the same checkpoint again sends nothing: the registry holds every blob
    again = json.loads(grit(a, "push", "--json", "--blob-size", str(64 << 20), img,
                            dist.ref("ck/app", "v2")).stdout)
    assert again["sent"] == 0 and again["skipped"] >= 3, again
    assert again["digest"] == pushed["digest"]

    # the image: checkpointctl's annotations, the signed manifest alone in layer 0
    man = json.loads(dist.manifest("ck/app", TAG))
    assert man["annotations"]["org.criu.checkpoint.container.name"] == "app"
    assert man["layers"][0]["annotations"][layout.ROLE] == "manifest"

    b = node(workdir, "node-b", dist)
    b.trust(a)
    ref = "oci://" + dist.ref("ck/app", TAG)
    bb, out_b = start_counter(b, "app", "app", annotations={"grit.dev/restore-from": ref},
                              rootfs_from=os.path.join(ba, "rootfs"))
    assert out_b.wait_for(lambda r: len(r.ints()) >= 2)
    assert_continues(out.ints(), out_b.ints())
    # the memory pages were checked against the signed digests beside CRIU (the pull hashed
    # them once, for the blob digests), and that check marked the cache entry verified
    assert _timings(b, "app")["pages_verify_s"] >= 0
    assert _verified(b, pushed["digest"])
    # B's cache holds the pulled checkpoint under its digest, root-only
    assert _cache_names(b) == ["sha256-" + pushed["digest"].split(":")[1]], _cache_names(b)
    entry = os.path.join(b.cache, _cache_names(b)[0])
    assert os.stat(entry).st_mode & 0o777 == 0o700
    with open(os.path.join(img, "grit-manifest.json"), "rb") as f1, \
            open(os.path.join(entry, "grit-manifest.json"), "rb") as f2:
        assert f1.read() == f2.read()
    b.grit.run(bb, "delete", "--force", "app")

    # `runc-grit pull REF DIR`: the same files, verified
    pulled = os.path.join(b.ckroot, "pulled")
    p = grit(b, "pull", "--json", dist.ref("ck/app", TAG), pulled)
    assert p.returncode == 0, p.stderr
    for name in os.listdir(img):
        if name.endswith(".img") or name == "grit-manifest.json":
            assert open(os.path.join(img, name), "rb").read() == \
                open(os.path.join(pulled, name), "rb").read(), name
    assert grit(b, "pull", dist.ref("ck/app", TAG), pulled).returncode != 0  # exists

    # by digest, from the cache: the registry is not needed any more
    dist.stop()
    ref_d = "oci://%s/ck/app@%s" % (dist.host, pushed["digest"])
    bb2, out_c = start_counter(b, "app2", "app2", annotations={"grit.dev/restore-from": ref_d},
                               rootfs_from=os.path.join(ba, "rootfs"))
    assert out_c.wait_for(lambda r: len(r.ints()) >= 2)
    assert_continues(out.ints(), out_c.ints())
    assert "pages_verify_s" not in _timings(b, "app2")  # a verified entry is not hashed again
    b.grit.run(bb2, "delete", "--force", "app2")
    # gc trims the cache to its bound
    b.write_config({"registry": {"auth_file": os.path.join(b.dir, "auth.json"),
                                 "insecure": [dist.host], "cache_bytes": 0}})
    p = grit(b, "gc")
    assert p.returncode == 0 and "beyond the cache bound" in p.stdout, (p.stdout, p.stderr)
    assert os.listdir(b.cache) == []  # the entry and its pages-verified mark
    a.cleanup()
    b.cleanup()


@pytest.mark.integration
def test_registry_failures_are_refused_and_leave_nothing(workdir, dist):
    a, ba, out, img, pushed = _source(workdir, dist)
    rootfs = os.path.join(ba, "rootfs")
    man = json.loads(dist.manifest("ck/app", TAG))
    files = [d for d in man["layers"] if d["annotations"][layout.ROLE] == "files"]
    big = max(files, key=lambda d: d["size"])
    ref = "oci://" + dist.ref("ck/app", TAG)

    b = node(workdir, "node-b", dist)
    b.trust(a)
    # a wrong digest: no such manifest
    _refused(b, "wrong", "oci://%s/ck/app@sha256:%s" % (dist.host, "0" * 64), rootfs,
             "not found")
    # bad credentials
    bad = node(workdir, "node-bad", dist, creds={"password": "wrong"})
    bad.trust(a)
    _refused(bad, "creds", ref, rootfs, "unauthorized")
    # plain HTTP is only for the registries the config lists: TLS otherwise
    tls = node(workdir, "node-tls", dist, insecure=[])
    tls.trust(a)
    _refused(tls, "tls", ref, rootfs, "TLS")
    # an untrusted signer: refused on the manifest layer, before any files blob is fetched
    c = node(workdir, "node-c", dist)
    before = dist.blob_gets()
    _refused(c, "untrusted", ref, rootfs, "does not trust")
    assert not any(d["digest"] in dist.blob_gets()[len(before):] for d in files)
    # another tenant's checkpoint: refused before any files blob as well
    before = dist.blob_gets()
    _refused(b, "tenant", ref, rootfs, "tenant",
             annotations={"io.kubernetes.cri.container-type": "container",
                          "io.kubernetes.cri.sandbox-namespace": "other-team",
                          "io.kubernetes.cri.container-name": "app"})
    assert not any(d["digest"] in dist.blob_gets()[len(before):] for d in files)
    # a registry that stops mid-pull
    from distribution import CuttingProxy
    proxy = CuttingProxy(dist.host, cut_after=big["size"] // 2)
    try:
        cut = node(workdir, "node-cut", dist, insecure=[proxy.host])
        cut.write_config({"registry": {
            "auth_file": dist.write_auth_file(os.path.join(cut.dir, "auth2.json"),
                                              host=proxy.host),
            "insecure": [proxy.host], "timeout": 60, "jobs": 1}})
        cut.trust(a)
        _refused(cut, "cut", "oci://%s/ck/app:%s" % (proxy.host, TAG), rootfs,
                 "stopped sending")
    finally:
        proxy.stop()
    # a missing blob
    path = dist.blob_path(big["digest"])
    saved = path + ".saved"
    os.rename(path, saved)
    _refused(b, "missing", ref, rootfs, "not found")
    # a tampered blob: one byte flipped in the registry's storage
    os.rename(saved, path)
    with open(path, "r+b") as f:
        f.seek(big["size"] // 2)
        x = f.read(1)
        f.seek(big["size"] // 2)
        f.write(bytes([x[0] ^ 0xFF]))
    err = _refused(b, "tampered", ref, rootfs, "refused")
    assert "does not match" in err, err
    assert _cache_names(b) == []
    a.cleanup()
    b.cleanup()


def _evil_image(dist, repo, tag, new_tag):
    """The pushed image with one byte of its memory pages flipped, its blob and manifest
    digests made to match (a registry that serves what it likes, or a repushed tag): the
    signed manifest layer is the original. Returns the evil image's manifest digest."""
    import hashlib
    import io
    import tarfile
    man = json.loads(dist.manifest(repo, tag))
    for d in man["layers"]:
        if d["annotations"][layout.ROLE] != "files":
            continue
        data = bytearray(open(dist.blob_path(d["digest"]), "rb").read())
        with tarfile.open(fileobj=io.BytesIO(bytes(data))) as t:
            pages = [m for m in t.getmembers() if m.name.startswith("checkpoint/pages-")
                     and m.size]
        if pages:
            at = pages[0].offset_data + pages[0].size // 2
            data[at] ^= 0xFF
            d["digest"] = dist.put_blob(repo, bytes(data))
            break
    else:
        raise AssertionError("no pages image in %r" % man)
    raw = json.dumps(man).encode()
    dist.put_manifest(repo, new_tag, raw)
    return "sha256:" + hashlib.sha256(raw).hexdigest()


@pytest.mark.integration
def test_registry_pages_that_do_not_match_never_resume(workdir, dist):
    """A registry serving a checkpoint whose memory pages differ from the signed digests
    (blob and manifest digests consistent, signed manifest untouched): the pull streams them
    (only their blob digests are checked as they come), CRIU restores, and the tasks never
    resume: the page check beside CRIU fails, the create is refused with the reason in --log,
    no value is printed, no container stays, and the entry leaves the cache. With
    page_digests: before, the pull itself refuses it and CRIU never runs."""
    a, ba, out, img, pushed = _source(workdir, dist)
    evil = _evil_image(dist, "ck/app", TAG, "evil")
    assert evil != pushed["digest"]
    b = node(workdir, "node-b", dist)
    b.trust(a)
    ref = "oci://" + dist.ref("ck/app", "evil")
    bb = b.bundle("evil", annotations={"grit.dev/restore-from": ref},
                  rootfs_from=os.path.join(ba, "rootfs"))
    p, out_b = b.grit.create_with_pipes(bb, "evil")
    err = b.grit.log_error(bb) or ""
    assert p.returncode != 0, err
    assert "image pages-" in err and "does not match its sha256 in the manifest" in err, err
    assert out_b.closed(10) and out_b.ints() == [], out_b.lines  # nothing resumed
    assert b.grit.state("evil") is None
    assert _cache_names(b) == [] and not _verified(b, evil), os.listdir(b.cache)

    import yaml
    conf = yaml.safe_load(open(b.config_path))
    b.write_config(dict(conf, page_digests="before"))
    err = _refused(b, "evil2", ref, os.path.join(ba, "rootfs"),
                   "does not match the signed manifest")
    assert _cache_names(b) == []
    # the untampered tag still restores on that node, its pages checked in the pull
    bb3, out_c = start_counter(b, "good", "good",
                               annotations={"grit.dev/restore-from":
                                            "oci://" + dist.ref("ck/app", TAG)},
                               rootfs_from=os.path.join(ba, "rootfs"))
    assert out_c.wait_for(lambda r: len(r.ints()) >= 2)
    assert_continues(out.ints(), out_c.ints())
    assert "pages_verify_s" not in _timings(b, "good") and _verified(b, pushed["digest"])
    b.grit.run(bb3, "delete", "--force", "good")
    a.cleanup()
    b.cleanup()


def _split(img, name, n):
    """img/name as containerd unpacks a file pushed in n parts: NAME.grit-part-0000K."""
    data = open(os.path.join(img, name), "rb").read()
    step = -(-len(data) // n)
    for k in range(n):
        with open(os.path.join(img, "%s%s%05d" % (name, layout.PART, k)), "wb") as f:
            f.write(data[k * step:(k + 1) * step])
    os.unlink(os.path.join(img, name))
    return data


@pytest.mark.integration
def test_direct_restore_joins_parts_and_refuses_planted_ones(workdir):
    """containerd's CRI restore hands runc-grit an unpacked checkpoint image: a file pushed in
    parts is there in parts. They are joined through the dir's descriptor; a part that is a
    symlink (to a node file), a FIFO or of the wrong length is refused, the target is
    untouched, no half-joined file stays, no container is made."""
    e = Env(os.path.join(workdir, "node"))
    b, out = start_counter(e, "joinsrc", "joinsrc")
    try:
        _direct_restore_parts(e, b, out, workdir)
    finally:
        for cid in ("joinsrc", "good"):
            e.grit.run(None, "delete", "--force", cid)
        e.cleanup()


def _direct_restore_parts(e, b, out, workdir):
    assert out.wait_for(lambda r: len(r.ints()) >= 3)
    img = os.path.join(e.ckroot, "img")
    checkpoint(e, b, "joinsrc", img)   # the counter stops at a value
    out.closed()
    e.grit.run(b, "delete", "joinsrc")
    pages = sorted(n for n in os.listdir(img) if n.startswith("pages-"))[0]
    part = lambda d, k: os.path.join(d, "%s%s%05d" % (pages, layout.PART, k))  # noqa: E731

    def direct(d, cid, stdout=subprocess.PIPE):
        bd = e.bundle(cid, annotations={"io.kubernetes.cri.container-type": "container"},
                      rootfs_from=os.path.join(b, "rootfs"))
        p = e.grit.run(bd, "restore", "--detach", "--bundle", bd, "--image-path", d,
                       "--work-path", d + "-w", cid, stdout=stdout)
        return p, bd

    def refused(d, cid, expect):
        p, bd = direct(d, cid)
        err = e.grit.log_error(bd) or ""
        assert p.returncode != 0 and expect in err, err
        assert e.grit.state(cid) is None
        assert not os.path.exists(os.path.join(d, pages)), "a half-joined file stayed"

    # a symlink part to a node file of the right size: never followed, the file untouched
    target = os.path.join(workdir, "node-secret")
    link = os.path.join(e.ckroot, "link")
    shutil.copytree(img, link)
    data = _split(link, pages, 2)
    with open(target, "wb") as f:
        f.write(open(part(link, 1), "rb").read())
    before = os.stat(target)
    os.unlink(part(link, 1))
    os.symlink(target, part(link, 1))
    refused(link, "link", "is not a regular file (a symlink)")
    after = os.stat(target)
    assert (after.st_mtime_ns, after.st_size, after.st_nlink) == \
        (before.st_mtime_ns, before.st_size, before.st_nlink)
    assert os.path.islink(part(link, 1))
    # a FIFO part (refused at once, never opened for reading), a short part (the parts do
    # not make the listed size), a part that is a dir
    def fifo(path):
        os.unlink(path)
        os.mkfifo(path)

    def short(path):
        with open(path, "r+b") as f:
            f.truncate(1)

    def subdir(path):
        os.unlink(path)
        os.mkdir(path)

    for name, n, k, plant, why in [("fifo", 2, 0, fifo, "is not a regular file (a FIFO)"),
                                   ("short", 3, 1, short, "do not make its"),
                                   ("sub", 2, 1, subdir, "not a regular file")]:
        d = os.path.join(e.ckroot, name)
        shutil.copytree(img, d)
        _split(d, pages, n)
        plant(part(d, k))
        refused(d, name, why)

    # the real parts: joined (the parts go), verified against the signed digests, restored
    good = os.path.join(e.ckroot, "good")
    shutil.copytree(img, good)
    assert _split(good, pages, 3) == open(os.path.join(img, pages), "rb").read()
    r, w = os.pipe()   # the restored counter writes to the restore's stdout
    p, bd = direct(good, "good", stdout=w)
    os.close(w)
    assert p.returncode == 0, e.grit.log_error(bd)
    out_b = PipeReader(r)
    assert out_b.wait_for(lambda rd: len(rd.ints()) >= 2)
    assert_continues(out.ints(), out_b.ints())
    assert open(os.path.join(good, pages), "rb").read() == data
    assert not [n for n in os.listdir(good) if layout.PART in n]
    assert e.grit.state("good")["status"] == "running"
