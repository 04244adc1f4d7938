"""containerd: the node installer against a scratch root, the drop-in configs loaded by the real
containerd, and runc-grit as the runc-v2 BinaryName of a private containerd driven by ctr and by
kubelet's CRI calls. containerd 1.6, 1.7 and 2.x: the one on PATH decides which config version
(2 or 3) is written and which checks apply (`containerd --version`)."""
import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from conftest import REPO, Env
from ctrd import (
    IMAGE,
    Containerd,
    build_image_archive,
    containerd_version,
    cri_containerd,
    cri_session,
    grit_wrapper,
)

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = None

pytestmark = pytest.mark.integration
CONF_DIR = os.path.join(REPO, "containerd-config")
BIN = "/usr/local/bin/runc-grit"
# a node's own containerd config, version 2 (containerd 1.x; 2.x migrates it) ...
ORIGINAL = """# the node's own containerd config
version = 2
root = "/var/lib/containerd"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.9"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  SystemdCgroup = true
"""
# ... and version 3 (containerd 2.x)
ORIGINAL_V3 = """# the node's own containerd config
version = 3
root = "/var/lib/containerd"

[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = "registry.k8s.io/pause:3.9"

[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
  SystemdCgroup = true
"""
V2_CRI = "io.containerd.grpc.v1.cri"
V3_RUNTIME, V3_IMAGES = "io.containerd.cri.v1.runtime", "io.containerd.cri.v1.images"


def toml(text):
    if tomllib is None:
        pytest.skip("tomllib needs Python 3.11")
    return tomllib.loads(text)


def ctrd_major():
    v = containerd_version()
    return v[0] if v else None


def snapshot(root):
    """{path: content or '-> target'} of every file and link under root."""
    out = {}
    for d, dirs, files in os.walk(root):
        for n in files + [x for x in dirs if os.path.islink(os.path.join(d, x))]:
            p = os.path.join(d, n)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = "-> " + os.readlink(p)
            else:
                with open(p, "rb") as f:
                    out[rel] = f.read()
    return out


def run_script(name, *args):
    p = subprocess.run(["bash", os.path.join(REPO, "install", name)] + list(args),
                       capture_output=True, timeout=300)
    assert p.returncode == 0, p.stdout.decode() + p.stderr.decode()
    return p.stdout.decode()


def runtimes_of(cfg):
    """The CRI runtime tables of a parsed config (or `config dump`), version 2 or 3."""
    if cfg.get("version", 1) >= 3:
        return cfg["plugins"][V3_RUNTIME]["containerd"]["runtimes"]
    return cfg["plugins"][V2_CRI]["containerd"]["runtimes"]


def sandbox_image_of(cfg):
    if cfg.get("version", 1) >= 3:
        return cfg["plugins"][V3_IMAGES]["pinned_images"]["sandbox"]
    return cfg["plugins"][V2_CRI]["sandbox_image"]


def assert_grit_runtime(rt):
    assert rt["runtime_type"] == "io.containerd.runc.v2"
    assert rt["options"]["BinaryName"] == BIN
    assert "grit.dev/*" in rt["pod_annotations"] and "grit.dev/*" in rt["container_annotations"]


# --- 3. installer against a scratch root -------------------------------------------------------

# (--containerd-version, the node's config.toml before, the config version written)
INSTALL_CASES = [
    pytest.param(1, ORIGINAL, 2, id="1.x, v2 config.toml present"),
    pytest.param(1, None, 2, id="1.x, absent"),
    pytest.param(2, ORIGINAL_V3, 3, id="2.x, v3 config.toml present"),
    pytest.param(2, ORIGINAL, 2, id="2.x, v2 config.toml present (2.x migrates it)"),
    pytest.param(2, None, 3, id="2.x, absent"),
]


@pytest.mark.parametrize("major,existing,written", INSTALL_CASES)
def test_install_twice_then_uninstall_restores(tmp_path, major, existing, written):
    """install.sh for containerd 1.x or 2.x, twice, then uninstall.sh. The result is loaded by
    the real containerd on PATH (`config dump`) when its major version is the one installed
    for; the other major's files are checked as TOML."""
    root = str(tmp_path / "root")
    os.makedirs(root + "/etc/containerd")
    if existing:
        with open(root + "/etc/containerd/config.toml", "w") as f:
            f.write(existing)
        os.makedirs(root + "/etc/runc-grit")
        with open(root + "/etc/runc-grit/config.yaml", "w") as f:
            f.write("checkpoint_roots: [/data/ckpt]\n")  # the node's own: never touched
    before = snapshot(root)
    args = ("--destdir", root, "--venv", sys.prefix, "--containerd-version", str(major), "--k3s")
    run_script("install.sh", *args)
    after1 = snapshot(root)
    text = after1["etc/containerd/config.toml"].decode()
    main = toml(text)
    assert main["version"] == written
    assert_grit_runtime(runtimes_of(main)["grit"])
    if existing:  # the original settings and comments are all still there, in place
        assert text.startswith(existing)
        assert sandbox_image_of(main) == "registry.k8s.io/pause:3.9"
        assert runtimes_of(main)["runc"]["options"]["SystemdCgroup"] is True
        assert after1["etc/runc-grit/config.yaml"] == b"checkpoint_roots: [/data/ckpt]\n"
    else:
        from runc_grit.node import config
        conf = config.load(root + "/etc/runc-grit/config.yaml")
        assert conf.checkpoint_roots == ["/var/lib/runc-grit/checkpoints"]
    if ctrd_major() == major:
        # the real containerd loads the result: containerd 2.x shows it as version 3 (a
        # version 2 file migrated), with the grit runtime and the node's own settings
        dump = config_dump(tmp_path, text)
        assert dump["version"] == (3 if major == 2 else 2)
        rts = runtimes_of(dump)
        assert_grit_runtime(rts["grit"])
        if existing:
            assert rts["runc"]["options"]["SystemdCgroup"] is True
            assert sandbox_image_of(dump) == "registry.k8s.io/pause:3.9"
    assert after1["usr/local/bin/runc-grit"] == "-> %s/bin/runc-grit" % sys.prefix
    tmpl, other = "config.toml.tmpl", "config-v3.toml.tmpl"
    if major == 2:
        tmpl, other = other, tmpl
    k3s = "var/lib/rancher/k3s/agent/etc/containerd/"
    src = "k3s-config-v3.toml.tmpl" if major == 2 else "k3s-config.toml.tmpl"
    with open(os.path.join(CONF_DIR, src), "rb") as f:
        assert after1[k3s + tmpl] == f.read()
    assert k3s + other not in after1
    mtime = os.stat(root + "/etc/containerd/config.toml").st_mtime_ns
    run_script("install.sh", *args)
    assert snapshot(root) == after1, "a second install changed something"
    assert os.stat(root + "/etc/containerd/config.toml").st_mtime_ns == mtime
    run_script("uninstall.sh", "--destdir", root)
    assert snapshot(root) == before


def test_install_keeps_and_restores_the_nodes_k3s_template(tmp_path):
    """A k3s template the node already had is replaced, and put back by uninstall.sh."""
    root = str(tmp_path / "root")
    k3s = root + "/var/lib/rancher/k3s/agent/etc/containerd/"
    os.makedirs(k3s)
    for name in ("config.toml.tmpl", "config-v3.toml.tmpl"):
        with open(k3s + name, "w") as f:
            f.write('{{ template "base" . }}\n# the node\'s own %s\n' % name)
    before = snapshot(root)
    for major in (1, 2):
        run_script("install.sh", "--destdir", root, "--venv", sys.prefix,
                   "--containerd-version", str(major), "--k3s")
    after = snapshot(root)
    rel = "var/lib/rancher/k3s/agent/etc/containerd/"
    assert b"runtimes.grit" in after[rel + "config.toml.tmpl"]
    assert b"runtimes.grit" in after[rel + "config-v3.toml.tmpl"]
    run_script("uninstall.sh", "--destdir", root)
    assert snapshot(root) == before


def test_merge_block_is_replaced_not_repeated_and_edits_elsewhere_survive_removal(tmp_path):
    sys.path.insert(0, os.path.join(REPO, "install"))
    from containerd_merge import add_block, config_version, remove_block
    block = '[plugins."x".grit]\n  a = 1\n'
    once = add_block(ORIGINAL, block, 2)
    assert add_block(once, block, 2) == once
    assert add_block(once, block.replace("1", "2"), 2).count("BEGIN runc-grit") == 1
    edited = once.replace('root = "/var/lib/containerd"', 'root = "/data/containerd"')
    assert remove_block(edited) == ORIGINAL.replace('"/var/lib/containerd"', '"/data/containerd"')
    assert toml(add_block("", block, 3))["version"] == 3
    assert (config_version(ORIGINAL), config_version(ORIGINAL_V3)) == (2, 3)
    # what install.sh asks to pick the tables for containerd 2.x
    out = subprocess.run([sys.executable, os.path.join(REPO, "install", "containerd_merge.py"),
                          "version", str(tmp_path / "none.toml")], capture_output=True, text=True)
    assert out.stdout == "none\n"
    (tmp_path / "v2.toml").write_text(ORIGINAL)
    out = subprocess.run([sys.executable, os.path.join(REPO, "install", "containerd_merge.py"),
                          "version", str(tmp_path / "v2.toml")], capture_output=True, text=True)
    assert out.stdout == "2\n"


# --- 4. the drop-ins, parsed and loaded by the real containerd -------------------------------

def config_dump(tmp_path, main_text):
    cfg = tmp_path / "main.toml"
    cfg.write_text(main_text)
    p = subprocess.run(["containerd", "--config", str(cfg), "config", "dump"],
                       capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr.decode()
    return toml(p.stdout.decode())


def test_imports_clobber_the_cri_section_on_1x_but_merge_on_2x(tmp_path):
    """Why install.sh appends the tables instead of using `imports`: containerd 1.6/1.7 replace
    the node's whole CRI plugin section with the imported one (its runc runtime is gone).
    containerd 2.x merges an imported file key by key: both runtimes stay there."""
    major = ctrd_major()
    if major is None:
        pytest.skip("containerd not installed")
    if major >= 2:
        dropin, original = "containerd-2.x.toml", ORIGINAL_V3
    else:
        dropin, original = "containerd-1.x.toml", ORIGINAL
    v = "version = %d\n" % (3 if major >= 2 else 2)
    dump = config_dump(tmp_path, original.replace(v, v + 'imports = ["%s"]\n' % os.path.join(
        CONF_DIR, dropin)))
    runtimes = runtimes_of(dump)
    assert "grit" in runtimes
    if major >= 2:
        assert runtimes["runc"]["options"]["SystemdCgroup"] is True
        assert sandbox_image_of(dump) == "registry.k8s.io/pause:3.9"
    else:
        assert "runc" not in runtimes


def test_v3_dropin_parses():
    with open(os.path.join(CONF_DIR, "containerd-2.x.toml")) as f:
        cfg = toml(f.read())
    assert cfg["version"] == 3
    rt = cfg["plugins"][V3_RUNTIME]["containerd"]["runtimes"]["grit"]
    assert rt["options"]["BinaryName"] == BIN


def render_k3s(name, base):
    """What k3s's Go template does with one of our templates: the comment goes, "base" is k3s's
    own config (here a node config of the same version), .SystemdCgroup is true."""
    with open(os.path.join(CONF_DIR, name)) as f:
        tmpl = f.read()
    out = re.sub(r"\{\{-?\s*/\*.*?\*/\s*-?\}\}\n?", "", tmpl, flags=re.S)
    out = out.replace('{{ template "base" . }}', base).replace("{{ .SystemdCgroup }}", "true")
    assert "{{" not in out
    return out


@pytest.mark.parametrize("name,base", [
    pytest.param("k3s-config.toml.tmpl", ORIGINAL, id="config.toml.tmpl (v2)"),
    pytest.param("k3s-config-v3.toml.tmpl", ORIGINAL_V3, id="config-v3.toml.tmpl (v3)")])
def test_k3s_template_renders_to_a_config_containerd_loads(tmp_path, name, base):
    """k3s with containerd 1.7 renders config.toml.tmpl (version 2); k3s with containerd 2.x
    renders config-v3.toml.tmpl (version 3), else config.toml.tmpl, which 2.x migrates."""
    out = render_k3s(name, base)
    assert_grit_runtime(runtimes_of(toml(out))["grit"])
    major = ctrd_major()
    if major is None:
        pytest.skip("containerd not installed")
    if "v3" in name and major < 2:
        # why install.sh picks the template by containerd's version: a version 3 config never
        # registers grit on 1.x (1.7 refuses the file; 1.6 reads it as version 2, without
        # the version 3 tables). k3s with containerd 1.x never renders config-v3.toml.tmpl.
        cfg = tmp_path / "main.toml"
        cfg.write_text(out)
        p = subprocess.run(["containerd", "--config", str(cfg), "config", "dump"],
                           capture_output=True, timeout=60)
        if p.returncode != 0:
            assert b"version `3` is not supported" in p.stderr, p.stderr
        else:
            assert b"runtimes.grit" not in p.stdout
        return
    dump = config_dump(tmp_path, out)
    rts = runtimes_of(dump)
    assert_grit_runtime(rts["grit"])
    assert rts["grit"]["options"]["SystemdCgroup"] is True
    assert rts["runc"]["options"]["SystemdCgroup"] is True
    assert sandbox_image_of(dump) == "registry.k8s.io/pause:3.9"


def test_runtimeclass_names_the_handler():
    import yaml
    with open(os.path.join(CONF_DIR, "runtimeclass.yaml")) as f:
        rc = yaml.safe_load(f)
    assert (rc["kind"], rc["metadata"]["name"], rc["handler"]) == ("RuntimeClass", "grit", "grit")
    with open(os.path.join(REPO, "install", "daemonset.yaml")) as f:
        ds = yaml.safe_load(f)
    args = ds["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert ds["kind"] == "DaemonSet" and "install/install.sh" in args
    for name in ("pod-restore.yaml", "pod-source.yaml"):
        with open(os.path.join(CONF_DIR, "examples", name)) as f:
            assert yaml.safe_load(f)["spec"]["runtimeClassName"] == "grit"


# --- 1. a real containerd, runc-grit as the runc-v2 binary, driven by ctr ----------------------

COUNTER = "i=0; while true; do i=$((i+1)); echo $i; sleep 0.1; done"


@pytest.fixture
def ctrd(workdir):
    if not shutil.which("containerd") or not shutil.which("ctr"):
        pytest.skip("containerd not installed")
    e = Env(workdir)
    d = os.path.join(workdir, "ctd")
    os.makedirs(d)
    c = Containerd(d, e.env)
    c.grit = e
    c.wrapper = grit_wrapper(os.path.join(workdir, "runc-grit"))
    p = c.ctr("images", "import", build_image_archive(os.path.join(workdir, "busybox.tar")))
    assert p.returncode == 0, p.stderr
    yield c
    c.stop()


def numbers(path):
    try:
        with open(path) as f:
            return [int(x) for x in f.read().split() if x.isdigit()]
    except OSError:
        return []


def wait(pred, timeout=15):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.1)
    return pred()


def ctr_run(c, cid, log, *extra):
    return c.ctr("run", "-d", "--runc-binary", c.wrapper, "--log-uri", "file://" + log,
                 *extra, IMAGE, cid, "sh", "-c", COUNTER)


def test_ctr_checkpoint_then_restore_by_annotation(ctrd, workdir):
    c = ctrd
    log1, log2 = os.path.join(workdir, "c1.log"), os.path.join(workdir, "c2.log")
    p = ctr_run(c, "c1", log1)
    assert p.returncode == 0, p.stderr
    assert wait(lambda: len(numbers(log1)) >= 5)
    img = os.path.join(c.grit.ckroot, "c1")
    p = c.ctr("task", "checkpoint", "--exit", "--image-path", img, "--work-path", img + "-w", "c1")
    assert p.returncode == 0, p.stderr
    man = json.load(open(os.path.join(img, "grit-manifest.json")))  # it went through runc-grit
    assert man["container"]["id"] == "c1"
    assert c.tasks()["c1"] == "STOPPED"
    restore_by_annotation_continues(c, img, numbers(log1), log2)


def restore_by_annotation_continues(c, img, before, log2):
    """`ctr run --annotation grit.dev/restore-from=IMG` as task c2: it continues the
    counter at before[-1] + 1, runs, and is killed and deleted, leaving no runc-grit state."""
    p = ctr_run(c, "c2", log2, "--annotation", "grit.dev/restore-from=" + img)
    assert p.returncode == 0, p.stderr
    assert wait(lambda: len(numbers(log2)) >= 3)
    after = numbers(log2)
    assert after[0] == before[-1] + 1, (before[-3:], after[:3])
    assert c.tasks()["c2"] == "RUNNING"
    assert c.ctr("task", "kill", "-s", "SIGKILL", "c2").returncode == 0
    assert wait(lambda: c.tasks().get("c2") == "STOPPED")
    assert c.ctr("task", "delete", "c2").returncode == 0
    assert c.ctr("container", "delete", "c2").returncode == 0
    assert not os.path.exists(os.path.join(c.grit.state_dir, "c2"))


def test_ctr_refused_restore_shows_runc_grit_reason(ctrd, workdir, tmp_path):
    c = ctrd
    outside = str(tmp_path / "elsewhere")
    os.makedirs(outside)
    p = ctr_run(c, "bad", os.path.join(workdir, "bad.log"),
                "--annotation", "grit.dev/restore-from=" + outside)
    assert p.returncode != 0
    err = p.stderr.decode()
    assert "outside the checkpoint roots" in err, err
    assert "bad" not in c.tasks()


# --- 2. the path kubelet takes: containerd's CRI plugin, runtime handler "grit" ----------------


def cri_lines(path):
    """Numbers from a CRI log file ("<time> stdout F <line>")."""
    from test_cri_checkpoint import values
    return values(path)


@pytest.fixture
def cri(workdir):
    if not shutil.which("containerd"):
        pytest.skip("containerd not installed")
    pytest.importorskip("grpc")
    pytest.importorskip("grpc_tools")
    e = Env(workdir)
    d = os.path.join(workdir, "ctd")
    os.makedirs(d)
    c = cri_containerd(d, e.env, grit_wrapper(os.path.join(workdir, "runc-grit")))
    with cri_session(c, e) as client:
        yield client


def test_cri_pod_restores_from_grit_checkpoint_annotation(cri, workdir):
    """kubelet's calls, runtime handler grit: a pod's container is checkpointed into GRIT's
    layout, and a new pod annotated grit.dev/checkpoint restores it; its sandbox is not."""
    logs1, logs2 = os.path.join(workdir, "pod1"), os.path.join(workdir, "pod2")
    os.makedirs(logs1)
    os.makedirs(logs2)
    cfg1 = cri.sandbox_config("src", logs1)
    pod1 = cri.run_pod(cfg1, "grit")
    cri.pods.append(pod1)
    c1 = cri.create_container(pod1, cfg1, "counter", IMAGE, ["sh", "-c", COUNTER], "counter.log")
    cri.start(c1)
    assert wait(lambda: len(cri_lines(os.path.join(logs1, "counter.log"))) >= 5)
    # GRIT's layout: <dir>/<container name>/checkpoint
    ck = os.path.join(cri.grit.ckroot, "train-1")
    img = os.path.join(ck, "counter", "checkpoint")
    p = cri.ctrd.ctr("task", "checkpoint", "--exit", "--image-path", img, "--work-path",
                     img + "-w", c1)
    assert p.returncode == 0, p.stderr
    assert wait(lambda: cri.state_name(c1) == "CONTAINER_EXITED")
    before = cri_lines(os.path.join(logs1, "counter.log"))
    cfg2 = cri.sandbox_config("dst", logs2, {"grit.dev/checkpoint": ck})
    pod2 = cri.run_pod(cfg2, "grit")
    cri.pods.append(pod2)
    c2 = cri.create_container(pod2, cfg2, "counter", IMAGE, ["sh", "-c", COUNTER], "counter.log")
    cri.start(c2)
    assert wait(lambda: len(cri_lines(os.path.join(logs2, "counter.log"))) >= 3)
    after = cri_lines(os.path.join(logs2, "counter.log"))
    assert after[0] == before[-1] + 1, (before[-3:], after[:3])
    assert cri.state_name(c2) == "CONTAINER_RUNNING"
    # runc-grit's records: the container was restored from GRIT's layout, the sandbox was not
    st = json.load(open(os.path.join(cri.grit.state_dir, c2, "state.json")))
    assert st["restored_from"] == os.path.realpath(img)
    # the sandbox was created as it was: runc-grit keeps no state for a plain create
    assert not os.path.exists(os.path.join(cri.grit.state_dir, pod2))
