"""containerd: the node installer against a scratch root, the drop-in configs loaded by the real
containerd, and runc-grit as the runc-v2 BinaryName of a private containerd driven by ctr."""
import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from conftest import REPO, Env
from ctrd import IMAGE, Containerd, build_image_archive, grit_wrapper

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = None

pytestmark = pytest.mark.integration
CONF_DIR = os.path.join(REPO, "containerd-config")
ORIGINAL = """# the node's own containerd config
version = 2
root = "/var/lib/containerd"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.9"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  SystemdCgroup = true
"""


def toml(text):
    if tomllib is None:
        pytest.skip("tomllib needs Python 3.11")
    return tomllib.loads(text)


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


# --- 3. installer against a scratch root -------------------------------------------------------

@pytest.mark.parametrize("existing", [True, False], ids=["config.toml present", "absent"])
def test_install_twice_then_uninstall_restores(tmp_path, existing):
    root = str(tmp_path / "root")
    os.makedirs(root + "/etc/containerd")
    if existing:
        with open(root + "/etc/containerd/config.toml", "w") as f:
            f.write(ORIGINAL)
        os.makedirs(root + "/etc/runc-grit")
        with open(root + "/etc/runc-grit/config.yaml", "w") as f:
            f.write("checkpoint_roots: [/data/ckpt]\n")  # the node's own: never touched
    before = snapshot(root)
    args = ("--destdir", root, "--venv", sys.prefix, "--containerd-version", "1", "--k3s")
    run_script("install.sh", *args)
    after1 = snapshot(root)
    text = after1["etc/containerd/config.toml"].decode()
    main = toml(text)
    rt = main["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["grit"]
    assert rt["runtime_type"] == "io.containerd.runc.v2"
    assert rt["options"]["BinaryName"] == "/usr/local/bin/runc-grit"
    assert "grit.dev/*" in rt["pod_annotations"] and "grit.dev/*" in rt["container_annotations"]
    if existing:  # the original settings and comments are all still there, in place
        assert text.startswith(ORIGINAL)
        cri = main["plugins"]["io.containerd.grpc.v1.cri"]
        assert cri["sandbox_image"] == "registry.k8s.io/pause:3.9"
        assert cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is True
        assert after1["etc/runc-grit/config.yaml"] == b"checkpoint_roots: [/data/ckpt]\n"
        # and the real containerd loads the result with both runtimes
        dump = config_dump(tmp_path, text)
        rts = dump["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]
        assert rts["grit"]["options"]["BinaryName"] == "/usr/local/bin/runc-grit"
        assert rts["runc"]["options"]["SystemdCgroup"] is True
        assert dump["plugins"]["io.containerd.grpc.v1.cri"]["sandbox_image"] == \
            "registry.k8s.io/pause:3.9"
    else:
        from runc_grit.node import config
        conf = config.load(root + "/etc/runc-grit/config.yaml")
        assert conf.checkpoint_roots == ["/var/lib/runc-grit/checkpoints"]
    assert after1["usr/local/bin/runc-grit"] == "-> %s/bin/runc-grit" % sys.prefix
    assert "var/lib/rancher/k3s/agent/etc/containerd/config.toml.tmpl" in after1
    mtime = os.stat(root + "/etc/containerd/config.toml").st_mtime_ns
    run_script("install.sh", *args)
    assert snapshot(root) == after1, "a second install changed something"
    assert os.stat(root + "/etc/containerd/config.toml").st_mtime_ns == mtime
    run_script("uninstall.sh", "--destdir", root)
    assert snapshot(root) == before


def test_merge_block_is_replaced_not_repeated_and_edits_elsewhere_survive_removal():
    sys.path.insert(0, os.path.join(REPO, "install"))
    from containerd_merge import add_block, remove_block
    block = '[plugins."x".grit]\n  a = 1\n'
    once = add_block(ORIGINAL, block, 2)
    assert add_block(once, block, 2) == once
    assert add_block(once, block.replace("1", "2"), 2).count("BEGIN runc-grit") == 1
    edited = once.replace('root = "/var/lib/containerd"', 'root = "/data/containerd"')
    assert remove_block(edited) == ORIGINAL.replace('"/var/lib/containerd"', '"/data/containerd"')
    assert toml(add_block("", block, 3))["version"] == 3


# --- 4. the drop-ins, parsed and loaded by the real containerd -------------------------------

def config_dump(tmp_path, main_text):
    cfg = tmp_path / "main.toml"
    cfg.write_text(main_text)
    p = subprocess.run(["containerd", "--config", str(cfg), "config", "dump"],
                       capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr.decode()
    return toml(p.stdout.decode())


def test_imports_would_clobber_the_cri_section(tmp_path):
    """Why install.sh appends the tables instead of using `imports`: containerd 1.6 replaces
    the node's whole CRI plugin section with the imported one."""
    dropin = os.path.join(CONF_DIR, "containerd-1.x.toml")
    dump = config_dump(tmp_path, ORIGINAL.replace("version = 2\n",
                                                  'version = 2\nimports = ["%s"]\n' % dropin))
    runtimes = dump["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]
    assert "grit" in runtimes and "runc" not in runtimes


def test_v3_dropin_parses():
    with open(os.path.join(CONF_DIR, "containerd-2.x.toml")) as f:
        cfg = toml(f.read())
    assert cfg["version"] == 3
    rt = cfg["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["grit"]
    assert rt["options"]["BinaryName"] == "/usr/local/bin/runc-grit"


def test_k3s_template_renders_to_a_config_containerd_loads(tmp_path):
    with open(os.path.join(CONF_DIR, "k3s-config.toml.tmpl")) as f:
        tmpl = f.read()
    # what k3s's Go template does with it: the comment goes, "base" is k3s's own config
    out = re.sub(r"\{\{-?\s*/\*.*?\*/\s*-?\}\}\n?", "", tmpl, flags=re.S)
    out = out.replace('{{ template "base" . }}', ORIGINAL).replace("{{ .SystemdCgroup }}", "true")
    assert "{{" not in out
    dump = config_dump(tmp_path, out)
    rt = dump["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["grit"]
    assert rt["options"]["BinaryName"] == "/usr/local/bin/runc-grit"


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

PAUSE = "docker.io/library/grit-pause:test"


def cri_lines(path):
    """Numbers from a CRI log file ("<time> stdout F <line>")."""
    out = []
    try:
        with open(path) as f:
            for ln in f:
                parts = ln.rstrip("\n").split(" ", 3)
                if len(parts) == 4 and parts[3].isdigit():
                    out.append(int(parts[3]))
    except OSError:
        pass
    return out


@pytest.fixture
def cri(workdir):
    if not shutil.which("containerd"):
        pytest.skip("containerd not installed")
    pytest.importorskip("grpc")
    pytest.importorskip("grpc_tools")
    from cri_client import CRI
    e = Env(workdir)
    d = os.path.join(workdir, "ctd")
    os.makedirs(d)
    wrapper = grit_wrapper(os.path.join(workdir, "runc-grit"))
    cri_toml = f"""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # root here lacks CAP_SYS_RESOURCE: the sandbox's oom_score_adj -998 would fail runc init
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/cni-bin"
    conf_dir = "{d}/cni-conf"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.grit]
    runtime_type = "io.containerd.runc.v2"
    pod_annotations = ["grit.dev/*", "kybernate.io/*"]
    container_annotations = ["grit.dev/*", "kybernate.io/*"]
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.grit.options]
    BinaryName = "{wrapper}"
"""
    c = Containerd(d, e.env, extra_toml=cri_toml, disabled=(), ns="k8s.io")
    for name, cmd in ((IMAGE, ("sh",)), (PAUSE, ("sleep", "2147483647"))):
        arch = build_image_archive(os.path.join(workdir, name.split("/")[-1] + ".tar"), name, cmd)
        p = c.ctr("images", "import", arch)
        assert p.returncode == 0, p.stderr
    client = CRI(c.sock)
    client.version()
    client.ctrd, client.grit, client.pods = c, e, []
    yield client
    for pod in client.pods:
        try:
            client.remove_pod(pod)
        except Exception:  # noqa: BLE001 - best effort, containerd stops next
            pass
    c.stop()


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
    sb = json.load(open(os.path.join(cri.grit.state_dir, pod2, "state.json")))
    assert sb["restored_from"] is None
