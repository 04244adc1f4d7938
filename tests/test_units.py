"""In-process unit tests: spec changes, config, fast config reader, restore sources, manifest."""
import json
import os
import stat
import struct
import subprocess
import sys

import pytest

from runc_grit import fastconf
from runc_grit.checkpoint import images, manifest, source
from runc_grit.errors import GritError, exit_code
from runc_grit.node import config
from runc_grit.oci import modifiers, runclog, spec
from runc_grit.runtimes import criuconf

# --- spec changes: one test each ----------------------------------------------------------

def test_set_annotation_creates_map_and_keeps_unknown_fields():
    s = {"ociVersion": "1.0.2", "x-vendor": {"keep": [1, 2]}}
    modifiers.apply(s, [modifiers.set_annotation("a", "b")])
    assert s == {"ociVersion": "1.0.2", "x-vendor": {"keep": [1, 2]}, "annotations": {"a": "b"}}


def test_set_criu_config():
    s = {"annotations": {"other": "1"}}
    modifiers.set_criu_config("/run/runc-grit/c1/criu.conf")(s)
    assert s["annotations"] == {"other": "1", "org.criu.config": "/run/runc-grit/c1/criu.conf"}


def test_drop_annotation():
    s = {"annotations": {"a": "1", "b": "2"}}
    modifiers.drop_annotation("a")(s)
    assert s["annotations"] == {"b": "2"}
    modifiers.drop_annotation("zzz")({})  # no annotations at all: nothing to do


def test_load_save_round_trip_keeps_unknown(tmp_path):
    doc = {"ociVersion": "1.2.0", "process": {"args": ["x"]}, "future": {"field": True}}
    (tmp_path / "config.json").write_text(json.dumps(doc))
    s = spec.load(str(tmp_path))
    modifiers.apply(s, [modifiers.set_criu_config("/c")])
    spec.save(str(tmp_path), s)
    back = json.loads((tmp_path / "config.json").read_text())
    assert back["future"] == {"field": True}
    assert back["annotations"]["org.criu.config"] == "/c"
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


@pytest.mark.parametrize("text, why", [
    ("{not json", "malformed config.json"),
    ("[1, 2]", "top level is not an object"),
    ('{"annotations": {"a": 1}}', "annotations must map strings"),
])
def test_malformed_spec(tmp_path, text, why):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(GritError, match=why):
        spec.load(str(tmp_path))


def test_missing_spec(tmp_path):
    with pytest.raises(GritError, match="cannot read config.json"):
        spec.load(str(tmp_path))


# --- config -------------------------------------------------------------------------------

def test_config_defaults_when_default_path_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(fastconf, "DEFAULT_PATH", str(tmp_path / "absent.yaml"))
    c = config.load(str(tmp_path / "absent.yaml"))
    assert c.runtime == "runc" and c.state_dir == "/run/runc-grit"
    assert c.on_restore_failure == "fail" and c.cuda["helper"] == "builtin"


@pytest.mark.parametrize("text, key", [
    ("runtime: [1]\n", "runtime"),
    ("on_restore_failure: maybe\n", "on_restore_failure"),
    ("checkpoint_roots: [relative/path]\n", "checkpoint_roots.0"),
    ("cuda: {lock_timeout_ms: -1}\n", "cuda.lock_timeout_ms"),
    ("cuda: {bogus: 1}\n", "cuda.bogus"),
    ("typo_key: 1\n", "typo_key"),
])
def test_config_error_names_the_key(tmp_path, text, key):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(GritError) as ei:
        config.load(str(p))
    assert "invalid key %s" % key in ei.value.message


def test_bad_yaml_says_where(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("runtime: runc\n  bad: [\n")
    with pytest.raises(GritError, match="bad YAML at line"):
        config.load(str(p))


def test_config_given_but_missing(tmp_path):
    with pytest.raises(GritError, match="no such file"):
        config.load(str(tmp_path / "nope.yaml"))


@pytest.mark.parametrize("text, expected", [
    ("runtime: crun\nstate_dir: /run/x\n", {"runtime": "crun", "state_dir": "/run/x"}),
    ("# c\nruntime: '/usr/bin/runc'  # comment\n", {"runtime": "/usr/bin/runc", "state_dir": "/run/runc-grit"}),
    ('runtime: "runsc"\ncuda:\n  helper: builtin\n', {"runtime": "runsc", "state_dir": "/run/runc-grit"}),
    ("checkpoint_roots:\n  - /a\n", {"runtime": "runc", "state_dir": "/run/runc-grit"}),
    ("runtime: runsc\nruntime_flags: [--network=none, --nvproxy]  # gVisor\n",
     {"runtime": "runsc", "state_dir": "/run/runc-grit",
      "runtime_flags": ["--network=none", "--nvproxy"]}),
    ("runtime_flags: []\n", {"runtime": "runc", "state_dir": "/run/runc-grit"}),
    ("runtime_flags:\n  - --network=none\n", None),  # block list: the full loader reads it
    ("checkpoint_roots:\n- /a\n- /b\nruntime: crun\n", {"runtime": "crun", "state_dir": "/run/runc-grit"}),
    ("runtime_flags:\n- --network=none\n", None),
    ("state_dir:\n- /x\n", None),
    ("runtime_flags: ['--a b']\n", None),
    ("runtime: &a runc\n", None),            # anchors: not sure, full loader decides
    ('runtime: "a\\"b"\n', None),
    ("runtime: [runc]\n", None),
    ("just text\n", None),
])
def test_fastconf(tmp_path, text, expected):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    if expected is not None:
        expected = dict({"runtime_flags": []}, **expected)
    assert fastconf.read(str(p)) == expected


def test_fastconf_agrees_with_full_loader(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("runtime: crun   # the delegate\nstate_dir: /run/g\ncriu_options: [tcp-close]\n")
    full = config.load(str(p))
    fast = fastconf.read(str(p))
    assert (fast["runtime"], fast["state_dir"]) == (full.runtime, full.state_dir)
    p.write_text("runtime: runsc\nruntime_flags: [--network=none, --platform=systrap]\n")
    assert fastconf.read(str(p))["runtime_flags"] == config.load(str(p)).runtime_flags


def test_validated_config_is_cached_until_the_file_changes(tmp_path):
    """A second load of an unchanged config skips YAML and jsonschema; an edit (even a bad
    one) is seen at once."""
    import subprocess
    import sys
    state = tmp_path / "state"
    p = tmp_path / "c.yaml"
    p.write_text("runtime: crun\nstate_dir: %s\ncuda: {lock_timeout_ms: 5}\n" % state)
    first = config.load(str(p))
    assert (state / config.CACHE).exists() and first.cuda["lock_timeout_ms"] == 5
    code = ("import sys; from runc_grit.node import config; c = config.load(%r); "
            "print(c.runtime, c.cuda['lock_timeout_ms'], 'yaml' in sys.modules, "
            "'jsonschema' in sys.modules)" % str(p))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(
                             os.path.abspath(__file__)))))
    assert out.stdout.split() == ["crun", "5", "False", "False"], out
    p.write_text("runtime: crun\nstate_dir: %s\ncuda: {lock_timeout_ms: -1}\n" % state)
    with pytest.raises(GritError, match="lock_timeout_ms"):
        config.load(str(p))
    p.write_text("runtime: runc\nstate_dir: %s\n" % state)
    assert config.load(str(p)).runtime == "runc"


# --- CRIU config --------------------------------------------------------------------------

def test_criu_config_defaults_and_inherited(tmp_path):
    orig = tmp_path / "orig.conf"
    orig.write_text("action-script /their/script\nlink-remap\n")
    data = criuconf.content("/hooks/grit-hook", ["skip-in-flight"], str(orig), "ignore")
    lines = data.decode().splitlines()
    assert "action-script /their/script" in lines and "link-remap" in lines
    assert lines.index("link-remap") < lines.index("action-script /hooks/grit-hook")
    for opt in ("external mnt[]", "tcp-established", "ext-unix-sk", "file-locks", "skip-in-flight",
                "manage-cgroups=ignore"):
        assert opt in lines


@pytest.mark.parametrize("mode,want", [("ignore", "manage-cgroups=ignore"),
                                       ("soft", "manage-cgroups=soft"), ("runtime", None)])
def test_criu_config_cgroup_mode(mode, want):
    lines = criuconf.content("/h", [], "", mode).decode().splitlines()
    assert [ln for ln in lines if ln.startswith("manage-cgroups")] == ([want] if want else [])


def test_criu_config_is_shared_and_content_addressed(tmp_path):
    """The same content is one file, written once; other content another file; a file is
    never rewritten, so a container keeps the config it was created with."""
    state = str(tmp_path / "state")
    a = criuconf.ensure(state, criuconf.content("/h", [], "", "ignore"))
    mtime = os.stat(a).st_mtime_ns
    assert criuconf.ensure(state, criuconf.content("/h", [], "", "ignore")) == a
    assert os.stat(a).st_mtime_ns == mtime
    b = criuconf.ensure(state, criuconf.content("/h", ["link-remap"], "", "ignore"))
    assert b != a and os.path.dirname(a) == os.path.dirname(b) == criuconf.conf_dir(state)
    assert "link-remap" not in open(a).read() and "link-remap" in open(b).read()


def test_criu_config_user_config_is_remembered(tmp_path):
    state = str(tmp_path / "state")
    ours = criuconf.ensure(state, criuconf.content("/h", [], "", "ignore"))
    assert criuconf.user_config({}, state) is None
    assert criuconf.user_config({"org.criu.config": "/mine.conf"}, state) == "/mine.conf"
    assert criuconf.user_config({"org.criu.config": ""}, state) == ""   # runc: no config at all
    # once ours is named, the bundle's own config is the one remembered beside it
    assert criuconf.user_config({"org.criu.config": ours}, state) is None
    assert criuconf.user_config({"org.criu.config": ours, "grit.dev/criu-config": "/mine.conf"},
                                state) == "/mine.conf"
    # a config of ours written under another state_dir is recognised by its header
    other = criuconf.ensure(str(tmp_path / "other"), criuconf.content("/h", [], "", "ignore"))
    assert criuconf.user_config({"org.criu.config": other}, state) is None


def test_criu_config_recreated_when_gone(tmp_path):
    state = str(tmp_path / "state")
    data = criuconf.content("/h", [], "", "ignore")
    path = criuconf.ensure(state, data)
    os.unlink(path)
    assert criuconf.recreate(path, state, data) and open(path, "rb").read() == data
    assert not criuconf.recreate(path, state, data)                      # there already
    assert not criuconf.recreate("/etc/someone-elses.conf", state, data)  # not ours


# --- restore sources ----------------------------------------------------------------------

class Conf:
    def __init__(self, roots, raw=False, verify="size", staging="copy"):
        self.checkpoint_roots = roots
        self.accept_raw_criu = raw
        self.verify = verify
        self.staging = staging
        self.staging_dir = os.path.join(os.path.dirname(roots[0]), "staging")
        self.state_dir = os.path.join(os.path.dirname(roots[0]), "state")
        self.signing_key, self.require_signature = None, False


def make_images(d, with_manifest=True):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "inventory.img"), "wb") as f:
        f.write(struct.pack("<I", images.INVENTORY_MAGIC) + b"\x00" * 60)
    with open(os.path.join(d, "pages-1.img"), "wb") as f:
        f.write(b"p" * 4096)
    if with_manifest:
        m = manifest.build("c1", {"a": "b"}, "/b", {"name": "runc", "version": "1.1"},
                           {"version": "4.1"}, manifest.list_images(d, digest=True),
                           {"checkpoint_s": 0.1})
        manifest.write(d, m)
    return d


def test_source_ok(tmp_path):
    root = tmp_path / "ck"
    d = make_images(str(root / "x"))
    conf = Conf([str(root)])
    here, m, real = source.validate(d, conf)
    assert real == os.path.realpath(d) and m["container"]["id"] == "c1"
    # what was verified, and is restored from, is a root-only copy
    assert os.path.dirname(here) == conf.staging_dir and os.stat(here).st_mode & 0o777 == 0o700
    assert sorted(os.listdir(here)) == sorted(os.listdir(d))
    source.release(here, conf)
    assert not os.path.exists(here) and os.path.exists(d)


def test_source_missing_dir(tmp_path):
    (tmp_path / "ck").mkdir()
    with pytest.raises(GritError, match="no such directory"):
        source.validate(str(tmp_path / "ck" / "nope"), Conf([str(tmp_path / "ck")]))


def test_source_outside_roots(tmp_path):
    (tmp_path / "ck").mkdir()
    d = make_images(str(tmp_path / "elsewhere"))
    with pytest.raises(GritError, match="outside the checkpoint roots"):
        source.validate(d, Conf([str(tmp_path / "ck")]))


def test_source_dotdot_escape(tmp_path):
    (tmp_path / "ck").mkdir()
    make_images(str(tmp_path / "elsewhere"))
    with pytest.raises(GritError, match="outside the checkpoint roots"):
        source.validate(str(tmp_path / "ck" / ".." / "elsewhere"), Conf([str(tmp_path / "ck")]))


def test_source_symlink_escaping_roots(tmp_path):
    (tmp_path / "ck").mkdir()
    target = make_images(str(tmp_path / "elsewhere"))
    os.symlink(target, str(tmp_path / "ck" / "link"))
    with pytest.raises(GritError, match="resolves to .*outside the checkpoint roots"):
        source.validate(str(tmp_path / "ck" / "link"), Conf([str(tmp_path / "ck")]))


def test_source_symlinked_image_file_refused(tmp_path):
    d = make_images(str(tmp_path / "ck" / "x"), with_manifest=False)
    os.symlink("/etc/shadow", os.path.join(d, "pages-2.img"))
    with pytest.raises(GritError, match="symlink"):
        source.validate(d, Conf([str(tmp_path / "ck")], raw=True))


def test_source_not_criu(tmp_path):
    d = tmp_path / "ck" / "x"
    d.mkdir(parents=True)
    (d / "hello.txt").write_text("hi")
    with pytest.raises(GritError, match="no grit-manifest.json"):  # authentication first
        source.validate(str(d), Conf([str(tmp_path / "ck")]))
    with pytest.raises(GritError, match="not a CRIU image dir"):
        source.validate(str(d), Conf([str(tmp_path / "ck")], raw=True))


def test_source_corrupt_inventory(tmp_path):
    d = make_images(str(tmp_path / "ck" / "x"))
    with open(os.path.join(d, "inventory.img"), "r+b") as f:
        f.write(b"\xde\xad\xbe\xef")
    with pytest.raises(GritError, match="corrupt inventory.img"):
        source.validate(d, Conf([str(tmp_path / "ck")]))


def test_source_without_manifest(tmp_path):
    d = make_images(str(tmp_path / "ck" / "x"), with_manifest=False)
    with pytest.raises(GritError, match="no grit-manifest.json"):
        source.validate(d, Conf([str(tmp_path / "ck")]))
    here, m, real = source.validate(d, Conf([str(tmp_path / "ck")], raw=True))
    assert m is None and sorted(os.listdir(here)) == sorted(os.listdir(d))


def test_source_manifest_size_mismatch(tmp_path):
    d = make_images(str(tmp_path / "ck" / "x"))
    with open(os.path.join(d, "pages-1.img"), "ab") as f:
        f.write(b"more")
    with pytest.raises(GritError, match="pages-1.img has 4100 bytes, the manifest says 4096"):
        source.validate(d, Conf([str(tmp_path / "ck")]))


def test_source_manifest_digest_mismatch(tmp_path):
    d = make_images(str(tmp_path / "ck" / "x"))
    with open(os.path.join(d, "pages-1.img"), "r+b") as f:
        f.write(b"X")
    source.validate(d, Conf([str(tmp_path / "ck")]))  # sizes still match
    with pytest.raises(GritError, match="sha256"):
        source.validate(d, Conf([str(tmp_path / "ck")], verify="digest"))


def test_source_file_changed_after_staging_is_never_read(tmp_path):
    """The staged copy is what is verified and restored: a swap in the source afterwards
    (or a write into it) does not reach it."""
    d = make_images(str(tmp_path / "ck" / "x"))
    conf = Conf([str(tmp_path / "ck")], verify="digest")
    here, m, _ = source.validate(d, conf)
    os.rename(os.path.join(d, "pages-1.img"), os.path.join(d, "old"))
    with open(os.path.join(d, "pages-1.img"), "wb") as f:
        f.write(b"X" * 4096)
    with open(os.path.join(here, "pages-1.img"), "rb") as f:
        assert f.read() == b"p" * 4096


def test_source_staging_fails_cleanly(tmp_path):
    d = make_images(str(tmp_path / "ck" / "x"))
    conf = Conf([str(tmp_path / "ck")])
    os.unlink(os.path.join(d, "pages-1.img"))  # listed in the manifest, gone
    with pytest.raises(GritError, match="pages-1.img"):
        source.validate(d, conf)
    assert os.listdir(conf.staging_dir) == []  # nothing half-copied left


def test_source_auto_staging_reads_in_place_only_what_this_node_made(tmp_path):
    """auto: in place only for a dir runc-grit recorded at its checkpoint, unchanged since,
    under a root-only local root; root-owned files alone are not enough (a root container
    writes those on a hostPath)."""
    from runc_grit.checkpoint import provenance
    root = tmp_path / "ck"
    d = make_images(str(root / "x"))
    os.chmod(root, 0o755)
    conf = Conf([str(root)], staging="auto")
    here, _, _ = source.validate(d, conf)
    assert os.path.dirname(here) == conf.staging_dir  # root-only, but not made here: a copy
    source.release(here, conf)
    provenance.remember(d, conf.state_dir)
    here, _, _ = source.validate(d, conf)
    assert here == os.path.realpath(d)          # made here, unchanged: read in place
    source.release(here, conf)
    assert os.path.exists(d)                    # (a source is never removed)
    os.chmod(d, 0o775)
    here, _, _ = source.validate(d, conf)
    assert os.path.dirname(here) == conf.staging_dir  # group-writable: a copy
    source.release(here, conf)
    os.chmod(d, 0o700)
    provenance.remember(d, conf.state_dir)
    p = os.path.join(d, "pages-1.img")
    os.rename(p, p + ".old")                    # the same bytes, another inode
    with open(p, "wb") as f:
        f.write(b"p" * 4096)
    os.unlink(p + ".old")
    here, _, _ = source.validate(d, conf)
    assert os.path.dirname(here) == conf.staging_dir  # swapped since the checkpoint: a copy
    source.release(here, conf)


def test_shared_filesystems_are_never_trusted_in_place(monkeypatch, tmp_path):
    from runc_grit.checkpoint import staging
    monkeypatch.setattr(staging, "fs_type", lambda p: "nfs4")
    assert "nfs4 filesystem" in staging.in_place_problem(str(tmp_path), str(tmp_path))
    monkeypatch.setattr(staging, "fs_type", lambda p: "fuse.sshfs")
    assert staging.in_place_problem(str(tmp_path), str(tmp_path))


@pytest.mark.parametrize("where", ["dir", "parent", "file"])
def test_source_in_place_needs_a_root_only_chain(tmp_path, where):
    """staging: none restores in place, only where no one but root could swap a file."""
    root = tmp_path / "ck"
    d = make_images(str(root / "sub" / "x"))
    os.chmod(root, 0o755)
    conf = Conf([str(root)], staging="none")
    here, _, _ = source.validate(d, conf)
    assert here == os.path.realpath(d)
    target = {"dir": d, "parent": str(root / "sub"), "file": os.path.join(d, "pages-1.img")}[where]
    os.chmod(target, 0o777 if where != "file" else 0o666)
    with pytest.raises(GritError, match="could"):
        source.validate(d, conf)


def test_source_invalid_manifest(tmp_path):
    d = make_images(str(tmp_path / "ck" / "x"))
    p = os.path.join(d, manifest.NAME)
    m = json.load(open(p))
    m["images"][0]["name"] = "../../etc/passwd"
    json.dump(m, open(p, "w"))
    with pytest.raises(GritError, match="invalid manifest at images/0/name"):
        source.validate(d, Conf([str(tmp_path / "ck")]))


@pytest.mark.parametrize("ann, expected", [
    ({}, None),
    ({"grit.dev/restore-from": "/ck/a"}, ("/ck/a", "grit.dev/restore-from", "fail")),
    ({"kybernate.io/restore-from": "/ck/b"}, ("/ck/b", "kybernate.io/restore-from", "fail")),
    ({"grit.dev/checkpoint": "/ck/pod", "io.kubernetes.cri.container-name": "trainer"},
     ("/ck/pod/trainer/checkpoint", "grit.dev/checkpoint", "fail")),
    ({"grit.dev/restore-from": "/ck/a", "grit.dev/restore-policy": "fresh"},
     ("/ck/a", "grit.dev/restore-from", "fresh")),
    # a pod sandbox (pause container) is never restored, whatever it is annotated with
    ({"grit.dev/checkpoint": "/ck/pod", "io.kubernetes.cri.container-type": "sandbox",
      "io.kubernetes.cri.container-name": "POD"}, None),
])
def test_requested(ann, expected):
    r = source.requested(ann)
    assert (None if r is None else (r.path, r.annotation, r.policy)) == expected


@pytest.mark.parametrize("ann, why", [
    ({"grit.dev/checkpoint": "/ck/pod"}, "needs the container name"),
    ({"grit.dev/checkpoint": "/ck", "io.kubernetes.cri.container-name": ".."}, "cannot name"),
    ({"grit.dev/restore-from": "/a", "grit.dev/restore-policy": "sometimes"}, "neither"),
])
def test_requested_errors(ann, why):
    with pytest.raises(GritError, match=why):
        source.requested(ann)


# --- logs and exit codes ------------------------------------------------------------------

def test_runc_log_json_and_last_error(tmp_path):
    p = str(tmp_path / "log.json")
    log = runclog.Logger(p, "json")
    log.warning("careful")
    log.error("restore from /x failed: boom\nsecond line")
    lines = [json.loads(ln) for ln in open(p)]
    assert [ln["level"] for ln in lines] == ["warning", "error"]
    assert lines[1]["msg"] == "runc-grit: restore from /x failed: boom second line"
    assert "time" in lines[1]
    assert runclog.last_error(p) == "runc-grit: restore from /x failed: boom second line"


def test_runc_log_after_a_line_without_newline(tmp_path):
    """runsc ends its JSON log lines without a newline: ours starts on a line of its own,
    and last_error reads objects that share a line too."""
    p = tmp_path / "log.json"
    p.write_text('{"msg":"checkpoint failed: ENOSPC","level":"error","time":"t"}')
    assert runclog.last_error(str(p)) == "checkpoint failed: ENOSPC"
    runclog.Logger(str(p), "json").error("checkpoint of c failed")
    lines = p.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["msg"] == "runc-grit: checkpoint of c failed"
    p.write_text('{"msg":"a","level":"error"}{"msg":"b","level":"error"} {"msg":"c","level":"info"}')
    assert runclog.last_error(str(p)) == "b"


def test_runc_log_text_format(tmp_path):
    p = str(tmp_path / "log")
    runclog.Logger(p, "text").error("bad")
    line = open(p).read()
    assert 'level=error msg="runc-grit: bad"' in line
    assert runclog.last_error(p) == "runc-grit: bad"


def test_exit_codes():
    assert exit_code(GritError("x", kind="source")) == 1
    assert exit_code(GritError("x", kind="runtime", exit_code=7)) == 7
    assert exit_code(GritError("x", kind="not-found")) == 127
    assert exit_code(ValueError()) == 1


# --- version cache --------------------------------------------------------------------------

def test_version_cache_runs_the_binary_once_per_build(tmp_path):
    from runc_grit.node import procs
    calls = tmp_path / "calls"
    tool = tmp_path / "tool"
    tool.write_text("#!/bin/sh\necho x >> %s\necho 'tool version 1.2.3'\n" % calls)
    tool.chmod(0o755)
    cache = tmp_path / "cache"
    assert procs.version_of(str(tool), cache_dir=str(cache)) == "1.2.3"
    assert procs.version_of(str(tool), cache_dir=str(cache)) == "1.2.3"
    assert calls.read_text().count("x") == 1
    # a new build of the binary (size and mtime change) is asked again
    tool.write_text("#!/bin/sh\necho x >> %s\necho 'tool version 1.2.40'\n" % calls)
    assert procs.version_of(str(tool), cache_dir=str(cache)) == "1.2.40"
    assert calls.read_text().count("x") == 2


# --- GPU device nodes after a remap ---------------------------------------------------------

def test_gpu_nodes_plan_makes_dev_match_the_spec():
    from runc_grit.gpu.devnodes import plan, wanted
    spec_devices = [
        {"path": "/dev/nvidia1", "type": "c", "major": 195, "minor": 1, "fileMode": 0o666,
         "uid": 0, "gid": 0},
        {"path": "/dev/nvidiactl", "type": "c", "major": 195, "minor": 255},
        {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229},
    ]
    want = wanted({"linux": {"devices": spec_devices}})
    create, remove = plan(want, {"nvidia0", "nvidiactl", "nvidia-uvm", "null"})
    assert [d["path"] for d in create] == ["/dev/nvidia1"] and remove == ["nvidia0"]
    assert plan(want, {"nvidia1", "nvidiactl"}) == ([], [])
    assert plan({}, {"nvidia0", "nvidia3", "nvidiactl"}) == ([], ["nvidia0", "nvidia3"])
    # a GPU granted by CDI or NVIDIA_VISIBLE_DEVICES (+ the hook): the node's GPU of that
    # index or UUID, by its minor; the legacy hook's bind-mounted nodes stay
    inv = lambda: {"devices": [{"index": 0, "minor": 0, "uuid": "GPU-a"},  # noqa: E731
                               {"index": 1, "minor": 3, "uuid": "GPU-b"}]}
    cdi = {"annotations": {"cdi.k8s.io/gpu": "nvidia.com/gpu=GPU-b"}}
    assert plan(wanted(cdi, False, inv), {"nvidia3", "nvidia0"}) == ([], ["nvidia0"])
    hook = {"process": {"env": ["NVIDIA_VISIBLE_DEVICES=0"]},
            "hooks": {"prestart": [{"path": "/usr/bin/nvidia-container-runtime-hook"}]}}
    create, remove = plan(wanted(hook, False, inv), {"nvidia3"})
    assert [(d["major"], d["minor"]) for d in create] == [(195, 0)] and remove == ["nvidia3"]


def test_gpu_nodes_sync_works_through_the_inits_root(tmp_path):
    """sync() edits /proc/<pid>/root/dev with *at calls (here: this process's own root is
    /, so a scratch pid namespace is not needed: a chrooted child stands in)."""
    import subprocess
    import sys
    from runc_grit.gpu import devnodes
    root = tmp_path / "root"
    (root / "dev").mkdir(parents=True)
    os.mknod(str(root / "dev" / "nvidia0"), 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    child = subprocess.Popen([sys.executable, "-c", "import os, time; os.chroot(%r); "
                              "time.sleep(30)" % str(root)])
    try:
        import time
        for _ in range(100):
            if os.readlink("/proc/%d/root" % child.pid) == str(root):
                break
            time.sleep(0.05)
        spec = {"linux": {"devices": [{"path": "/dev/nvidia1", "type": "c", "major": 1,
                                       "minor": 3, "fileMode": 0o660, "uid": 0, "gid": 0}]}}
        made, removed = devnodes.sync(child.pid, spec)  # (no CDI/env grant: no inventory)
    finally:
        child.kill()
    assert made == ["/dev/nvidia1"] and removed == ["/dev/nvidia0"]
    assert sorted(os.listdir(root / "dev")) == ["nvidia1"]
    st_ = os.stat(root / "dev" / "nvidia1")
    assert stat.S_ISCHR(st_.st_mode) and st_.st_mode & 0o777 == 0o660


def test_configured_criu_is_first_on_the_runtimes_path(tmp_path):
    """runc >= 1.2 ignores --criu (1.4 refuses it) and runs the criu on PATH: the configured
    one is put first on the runtime's PATH, alone in its dir, and --criu is never passed."""
    from runc_grit.node.state import ContainerState
    from runc_grit.runtimes import criuenv as runc
    real = tmp_path / "criu-4.2"
    real.write_text("#!/bin/sh\n")
    real.chmod(0o755)
    conf = config.Config(config.merge({"criu": str(real), "state_dir": str(tmp_path / "s")}))
    st = ContainerState(conf.state_dir, "c1")
    env = runc.hook_env(conf, st)
    first = env["PATH"].split(os.pathsep)[0]
    assert os.listdir(first) == ["criu"] and os.path.realpath(os.path.join(first, "criu")) == str(real)
    assert runc.hook_env(conf, st)["PATH"].split(os.pathsep)[0] == first  # the same dir again
    default = config.Config(config.merge({"state_dir": str(tmp_path / "s")}))
    assert runc.hook_env(default, st)["PATH"] == os.environ.get("PATH", runc.DEFAULT_PATH)


@pytest.mark.parametrize("a, b, same", [
    ("reg.io/app:1", "reg.io/app:1", True),
    ("reg.io/app:1", "reg.io/app:2", False),
    ("reg.io/app:1", "reg.io/other:1", False),
    # containerd 2.1's checkpoint restore: the tag at checkpoint, the digest at restore
    ("127.0.0.1:5000/app:test", "127.0.0.1:5000/app@sha256:ab12", True),
    ("127.0.0.1:5000/app@sha256:ab12", "127.0.0.1:5000/app@sha256:cd34", False),
    ("127.0.0.1:5000/app@sha256:ab12", "127.0.0.1:5001/app@sha256:ab12", False),
    ("app", "app:latest", True),
])
def test_same_image(a, b, same):
    from runc_grit.checkpoint import compat
    assert compat.same_image(a, b) is same and compat.same_image(b, a) is same


def test_large_images_are_hashed_in_parallel_chunks(tmp_path, monkeypatch):
    """A file larger than the chunk size is listed as the sha256 of each chunk (all chunks of
    all files hashed in parallel); a byte changed anywhere in it is still caught."""
    import hashlib
    from runc_grit.checkpoint import integrity
    d = make_images(str(tmp_path / "ck" / "x"), with_manifest=False)
    data = os.urandom(3 << 20) + b"tail"
    with open(os.path.join(d, "pages-2.img"), "wb") as f:
        f.write(data)
    monkeypatch.setattr(manifest, "CHUNK", 1 << 20)
    items = {i["name"]: i for i in manifest.list_images(d, digest=True)}
    big = items["pages-2.img"]
    assert "sha256" not in big and big["sha256_chunks"]["size"] == 1 << 20
    assert big["sha256_chunks"]["digests"] == [
        hashlib.sha256(data[i:i + (1 << 20)]).hexdigest() for i in range(0, len(data), 1 << 20)]
    assert items["pages-1.img"]["sha256"] == hashlib.sha256(b"p" * 4096).hexdigest()
    assert integrity.digests({os.path.join(d, "pages-2.img"): None})[
        os.path.join(d, "pages-2.img")] == hashlib.sha256(data).hexdigest()
    m = manifest.build("c1", {}, "/b", {"name": "runc", "version": "1.1"}, {"version": "4.1"},
                       list(items.values()), {})
    manifest.validate(m, "test")
    manifest.check_files(d, m, digest=True)
    with open(os.path.join(d, "pages-2.img"), "r+b") as f:
        f.seek((2 << 20) + 5)
        f.write(bytes([data[(2 << 20) + 5] ^ 0xFF]))  # a byte that differs (b"X" was one in 256)
    with pytest.raises(GritError, match="pages-2.img does not match its sha256"):
        manifest.check_files(d, m, digest=True)


def test_device_env_changes():
    from runc_grit.checkpoint import compat

    def spec(*env):
        return {"process": {"env": ["PATH=/bin"] + list(env)}}
    src = spec("NVIDIA_VISIBLE_DEVICES=GPU-a", "GPU_DEVICE_0_RESOURCE_CLAIM=claim-1", "X=1")
    dst = spec("NVIDIA_VISIBLE_DEVICES=GPU-b", "GPU_DEVICE_0_RESOURCE_CLAIM=claim-2", "X=2")
    remapped, claims = compat.device_env_changes(src, dst)
    assert remapped == [("NVIDIA_VISIBLE_DEVICES", "GPU-a", "GPU-b")]
    assert claims == [("GPU_DEVICE_0_RESOURCE_CLAIM", "claim-1", "claim-2")]
    assert compat.device_env_changes(src, src) == ([], [])
    assert compat.device_env_changes(spec("DRA_X=1"), spec())[1] == [("DRA_X", "1", "")]


def test_holds_nvidia_device_reads_the_fd_table(monkeypatch):
    """A paused container is thawed for its CUDA steps only when one of its processes holds
    an NVIDIA device open (told from /proc, which works on frozen tasks)."""
    from runc_grit.gpu import discovery, helper
    assert discovery.holds_nvidia_device(os.getpid()) is False  # no GPU open here
    assert discovery.holds_nvidia_device(2 ** 22 + 1) is False  # no such process
    links = {"/proc/7/fd/3": "/dev/null", "/proc/7/fd/4": "/dev/nvidiactl"}
    monkeypatch.setattr(discovery.os, "listdir", lambda d: ["3", "4"] if d == "/proc/7/fd" else [])
    monkeypatch.setattr(discovery.os, "readlink", lambda p: links[p])
    assert discovery.holds_nvidia_device(7) is True
    links["/proc/7/fd/4"] = "socket:[1]"
    assert discovery.holds_nvidia_device(7) is False
    # a helper binary (NVIDIA's CLI, or a test's fake) is asked, not guessed for
    assert helper.Helper().may_be_cuda(7) is True


def test_cgroup_mode_ignore_only_without_a_private_cgroup_namespace():
    from runc_grit.runtimes.criuconf import cgroups_mode_for
    own = {"linux": {"namespaces": [{"type": "pid"}, {"type": "cgroup"}]}}
    joined = {"linux": {"namespaces": [{"type": "cgroup", "path": "/proc/1/ns/cgroup"}]}}
    none = {"linux": {"namespaces": [{"type": "pid"}]}}
    assert cgroups_mode_for("ignore", own) == "runtime"
    assert cgroups_mode_for("ignore", joined) == "ignore"
    assert cgroups_mode_for("ignore", none) == "ignore"
    assert cgroups_mode_for("soft", own) == "soft"


def test_shared_namespaces_names_what_the_restored_init_shares_with_the_node():
    from runc_grit.runtimes.restorecheck import shared_namespaces
    spec = {"linux": {"namespaces": [{"type": "cgroup"}, {"type": "uts"},
                                     {"type": "network", "path": "/var/run/netns/x"}]}}
    why = shared_namespaces(os.getpid(), spec)  # this process: the node's namespaces
    assert "cgroup/uts namespaces" in why, why
    assert shared_namespaces(os.getpid(), {"linux": {"namespaces": []}}) is None
    assert shared_namespaces(None, spec) is None


# --- doctor: what decides GPU migration downtime (advice, never a blocker) ---
MOUNTINFO = """\
22 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
30 22 0:26 / /dev/shm rw,nosuid,nodev shared:2 - tmpfs tmpfs rw,inode64
41 22 0:40 / /var/lib/grit\\040images rw,relatime shared:9 - tmpfs rg rw,size=104857600k,huge=always
42 41 0:41 / /var/lib/grit\\040images/nfs rw shared:10 - nfs4 srv:/x rw,vers=4.2
"""


@pytest.mark.parametrize("path,want", [
    ("/var/lib/runc-grit/checkpoints", ("ext4", "rw")),
    ("/dev/shm/x", ("tmpfs", "rw,inode64")),
    ("/var/lib/grit images/a/b", ("tmpfs", "rw,size=104857600k,huge=always")),
    ("/var/lib/grit images/nfs/c", ("nfs4", "rw,vers=4.2")),
    ("/var/lib/grit imagesX", ("ext4", "rw")),
])
def test_doctor_finds_the_mount_that_holds_a_path(path, want):
    from runc_grit.checkpoint import staging
    assert staging.mount_of(path, MOUNTINFO) == want


def test_the_visible_mount_of_a_stacked_point_decides():
    """An NFS mounted over a local checkpoint root is what the root holds: it must never pass
    for the local filesystem below it (staging would trust it in place)."""
    from runc_grit.checkpoint import staging
    stacked = MOUNTINFO + "50 22 0:50 / /var/lib/ckpt rw - ext4 /dev/vdb rw\n" \
                          "51 22 0:51 / /var/lib/ckpt rw - nfs4 srv:/c rw\n"
    assert staging.mount_of("/var/lib/ckpt/a", stacked) == ("nfs4", "rw")


@pytest.mark.parametrize("text,mode", [("always [madvise] never\n", "madvise"),
                                       ("[always] madvise never\n", "always"), ("", None)])
def test_doctor_reads_the_thp_mode(tmp_path, text, mode):
    from runc_grit.node import doctor
    (tmp_path / "enabled").write_text(text)
    assert doctor.thp_mode(str(tmp_path / "enabled")) == mode
    assert doctor.thp_mode(str(tmp_path / "absent")) is None


def test_doctor_speed_advice_names_huge_pages_and_huge_tmpfs(tmp_path):
    from runc_grit.node import doctor
    (tmp_path / "thp").write_text("always [madvise] never\n")
    (tmp_path / "mi").write_text(MOUNTINFO)
    conf = config.Config(config.merge({"checkpoint_roots": ["/var/lib/grit images"],
                                       "staging_dir": "/dev/shm/staging"}))
    checks = {c.name: c for c in doctor.speed_checks(conf, str(tmp_path / "thp"), str(tmp_path / "mi"))}
    assert not checks["huge pages"].ok and "madvise" in checks["huge pages"].detail
    assert checks["images: checkpoint root"].ok
    assert not checks["images: staging_dir"].ok and "tmpfs" in checks["images: staging_dir"].detail
    assert not any(c.blocker for c in checks.values())
    (tmp_path / "thp").write_text("[always] madvise never\n")
    checks = {c.name: c for c in doctor.speed_checks(conf, str(tmp_path / "thp"), str(tmp_path / "mi"))}
    assert checks["huge pages"].ok


# --- GPU: every process's CUDA step at once ---
def test_gpu_steps_run_for_every_process_at_once():
    import threading
    from runc_grit.gpu import helper
    barrier = threading.Barrier(3, timeout=5)   # passes only if the three steps overlap
    seen = []
    assert helper.for_each([3, 1, 2], lambda p: (barrier.wait(), seen.append(p))) == [3, 1, 2]
    assert sorted(seen) == [1, 2, 3]


def test_gpu_step_failure_is_raised_after_every_step_ended():
    import time as _time
    from runc_grit.gpu import helper
    ended = []

    def step(p):
        if p == 2:
            raise GritError("pid 2: checkpoint failed", kind="gpu")
        _time.sleep(0.2)
        ended.append(p)

    with pytest.raises(GritError, match="pid 2"):
        helper.for_each([1, 2, 3], step)
    assert sorted(ended) == [1, 3]


@pytest.mark.parametrize("holders,cuda,refused", [
    ({11, 12}, {11: "running", 12: "running"}, None),       # every holder is a CUDA process
    ({11, 12}, {11: "running"}, "pid 12 holds"),           # 12: context not created yet
    (set(), {}, None),                                      # no GPU at all
    ({13}, {}, "pid 13 holds"),                             # an NVML-only client
])
def test_pre_dump_refuses_a_gpu_client_the_driver_cannot_checkpoint(monkeypatch, holders, cuda, refused):
    from runc_grit.gpu import discovery, predump
    monkeypatch.setattr(discovery, "holds_nvidia_device", lambda p: p in holders)
    if refused is None:
        predump.refuse_uncheckpointable([10, 11, 12, 13], cuda)
    else:
        with pytest.raises(GritError, match=refused) as e:
            predump.refuse_uncheckpointable([10, 11, 12, 13], cuda)
        assert e.value.kind == "gpu" and "CRIU cannot dump it" in e.value.message


def test_every_error_class_is_raised_and_has_one_exit_code():
    """Each GritError subclass is raised somewhere in the package, and the one table gives
    its exit code (RuntimeFailure passes the runtime's own on)."""
    import re
    from runc_grit import errors
    src = ""
    for dirpath, _, files in os.walk(os.path.dirname(errors.__file__)):
        for f in files:
            if f.endswith(".py") and f != "errors.py":
                with open(os.path.join(dirpath, f)) as fh:
                    src += fh.read()
    want = {"config": 1, "usage": 1, "spec": 1, "source": 1, "restore": 1, "checkpoint": 1,
            "registry": 1, "runtime": 1, "gpu": 1, "blocker": 2, "not-found": 127}
    assert set(errors.KINDS) == set(want)
    for kind, cls in errors.KINDS.items():
        assert re.search(r"raise %s\(" % cls.__name__, src), cls.__name__
        assert issubclass(cls, errors.GritError) and cls("x").kind == kind
        assert exit_code(cls("x")) == want[kind]
        assert type(GritError("x", kind=kind)) is cls  # the old spelling makes the class
    assert exit_code(errors.RuntimeFailure("x", exit_code=7)) == 7


@pytest.mark.parametrize("signing_key", [None, "/etc/runc-grit/signing.key"])
def test_the_commit_imports_are_loaded_while_the_runtime_dumps(signing_key):
    """checkpointing.preload: a node that signs has cryptography imported by a thread that
    runs during the dump, not at the commit; one that does not sign does not import it."""
    code = ("import sys, types\n"
            "from runc_grit.runtimes import checkpointing\n"
            "assert 'cryptography' not in sys.modules\n"
            "t = checkpointing.preload(types.SimpleNamespace(signing_key=%r))\n"
            "t is None or t.join(30)\n"
            "print(t is None or not t.is_alive(),\n"
            "      'runc_grit.checkpoint.integrity' in sys.modules,\n"
            "      'cryptography.hazmat.primitives.asymmetric.ed25519' in sys.modules)\n"
            % signing_key)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         check=True).stdout.split()
    assert out == ["True", "True", "True" if signing_key else "False"]
