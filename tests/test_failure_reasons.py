"""Every failure names its cause (issue: GPU destination and failure reasons): CRIU's cause
line (the last error before its FAILED line, not the clean-up after it), a hint a user can
act on, and a log that still exists. Table tests over CRIU logs that real runs wrote
(tests/data/criu-logs, made by the integration tests below), then the runs themselves."""
import json
import os
import shutil
import subprocess

import pytest

from conftest import Env
from runc_grit.runtimes import criulog
from test_integration_runc import checkpoint

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "criu-logs")


def _lines(name):
    with open(os.path.join(DATA, name)) as f:
        return f.read().splitlines()


@pytest.mark.parametrize("log, status, cause, hint", [
    # a second copy in the same network namespace: CRIU's bind fails; after "Restoring
    # FAILED" it prints clean-up errors (which runc-grit once reported as the reason)
    ("addr-in-use.restore.log", "failed", "Address already in use", "already holds one of its sockets"),
    # an image CRIU cannot read
    ("corrupt-image.restore.log", "failed", "bfd: BUG", None),
    # this VM's kernel cannot dump an inet socket's options: a kernel feature
    ("inet-socket-unsupported.dump.log", "failed", "Can't get 1:16 opt: Operation not supported",
     "kernel or CRIU feature"),
])
def test_cause_and_hint_of_real_criu_logs(log, status, cause, hint):
    lines = _lines(log)
    got_status, line = criulog.cause(lines)
    assert got_status == status
    if cause:
        assert cause in line, line
    assert line is None or "cgroupd" not in line  # never the clean-up after FAILED
    h = criulog.hint(line, lines)
    assert (hint is None and h is None) or (hint and hint in (h or "")), h


@pytest.mark.parametrize("lines, status, cause", [
    (["(00.1) Error (criu/sk-unix.c:1): unix: Can't bind: Address already in use",
      "(00.2) Error (criu/cr-restore.c:2): Restoring FAILED.",
      "(00.3) Error (criu/cgroup.c:3): cg: cgroupd: recv req error: No such file or directory"],
     "failed", "unix: Can't bind: Address already in use"),
    (["(00.1) Info something", "(00.2) Restore finished successfully. Tasks resumed."],
     "finished", None),
    (["(00.1) Info something", "(00.2) Warn (x): y"], "killed", None),
])
def test_cause_table(lines, status, cause):
    assert criulog.cause(lines) == (status, cause)


@pytest.mark.parametrize("text, want", [
    ("Can't bind inet socket (id 5): Address already in use", "sockets"),
    ("write: No space left on device", "no space"),
    ("cuda-checkpoint: CUDA_ERROR_NO_DEVICE", "GPU"),
    ("kerndat: can't check memfd", "kernel or CRIU feature"),
    ("Can't open mm-1.img", None),
])
def test_hint_table(text, want):
    h = criulog.hint(text)
    assert (want is None and h is None) or want in h


def test_kept_logs_are_bounded(tmp_path):
    log = tmp_path / "restore.log"
    log.write_text("x")
    for i in range(criulog.KEEP + 3):
        assert criulog.keep(str(log), str(tmp_path / "state"), "c%d" % i)
    assert len(criulog.kept(str(tmp_path / "state"))) == criulog.KEEP


# --- real runc + CRIU ---------------------------------------------------------------------

@pytest.fixture
def fenv(workdir):
    e = Env(workdir)
    netns = "rg-" + os.path.basename(workdir)
    subprocess.run(["ip", "netns", "add", netns], check=True)
    subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
    e.netns = "/run/netns/" + netns
    yield e
    e.cleanup()
    subprocess.run(["ip", "netns", "del", netns])


def _in_netns(b, path):
    p = os.path.join(b, "config.json")
    spec = json.load(open(p))
    for ns in spec["linux"]["namespaces"]:
        if ns["type"] == "network":
            ns["path"] = path
    json.dump(spec, open(p, "w"))


# a counter holding an abstract unix socket (this kernel cannot dump inet sockets: see
# tests/data/criu-logs/inet-socket-unsupported.dump.log): the node's python, its /usr
# bind-mounted read-only into the busybox rootfs
LISTENER = ["/usr/bin/python3", "-S", "-c",
            "import socket, time\n"
            "s = socket.socket(socket.AF_UNIX)\ns.bind('\\0runc-grit-test')\ns.listen(1)\n"
            "i = 0\nwhile True:\n    i += 1\n    print(i, flush=True)\n    time.sleep(0.1)\n"]


def _with_host_usr(b):
    p = os.path.join(b, "config.json")
    spec = json.load(open(p))
    spec["mounts"].append({"destination": "/usr", "type": "bind", "source": "/usr",
                           "options": ["rbind", "ro"]})
    json.dump(spec, open(p, "w"))
    for name in ("lib", "lib64"):
        link = os.path.join(b, "rootfs", name)
        if not os.path.lexists(link):
            os.symlink("usr/" + name, link)


def _save(path, name):
    if os.environ.get("RUNC_GRIT_SAVE_CRIU_LOGS"):  # refreshes tests/data/criu-logs
        os.makedirs(DATA, exist_ok=True)
        shutil.copyfile(path, os.path.join(DATA, name))


@pytest.mark.integration
def test_a_second_copy_in_the_same_network_namespace_names_the_socket(fenv):
    """The source keeps running (--leave-running) and holds its listening port; a restore
    into a container of the same network namespace fails in CRIU's bind: the reason is that
    line with the hint, not CRIU's clean-up, and the log it names exists afterwards."""
    e = fenv
    b = e.bundle("src", args=LISTENER)
    _in_netns(b, e.netns)
    _with_host_usr(b)
    p, out = e.grit.create_with_pipes(b, "src")
    assert p.returncode == 0, e.grit.log_error(b)
    assert e.grit.run(b, "start", "src").returncode == 0
    assert out.wait_for(lambda r: len(r.ints()) >= 3)
    img = os.path.join(e.ckroot, "l")
    checkpoint(e, b, "src", img, "--leave-running")
    b2 = e.bundle("copy", args=LISTENER, annotations={"grit.dev/restore-from": img},
                  rootfs_from=os.path.join(b, "rootfs"))
    _in_netns(b2, e.netns)
    _with_host_usr(b2)
    p, _ = e.grit.create_with_pipes(b2, "copy")
    assert p.returncode != 0
    err = e.grit.log_error(b2)
    log = err.rsplit("(log: ", 1)[1].rstrip(")")
    _save(log, "addr-in-use.restore.log")
    assert "Address already in use" in err, err
    assert "hint: a copy of this checkpoint (or another process) already holds" in err, err
    assert "cgroupd" not in err.split("criu:")[-1], err
    assert os.path.exists(log) and log.startswith(os.path.join(e.state_dir, "failed")), log
    assert e.grit.state("copy") is None
    # gc removes the kept log
    g = subprocess.run(e.grit.argv0 + ["gc"], env=e.env, capture_output=True, timeout=120)
    assert g.returncode == 0 and log in g.stdout.decode(), g.stdout + g.stderr
    assert not os.path.exists(log)


@pytest.mark.integration
def test_a_corrupt_image_names_criu_s_line_and_keeps_the_log(fenv):
    from runc_grit.checkpoint import integrity, manifest
    from runc_grit.node import config
    e = fenv
    b = e.bundle("src")
    p, out = e.grit.create_with_pipes(b, "src")
    assert p.returncode == 0 and e.grit.run(b, "start", "src").returncode == 0
    assert out.wait_for(lambda r: len(r.ints()) >= 2)
    img = os.path.join(e.ckroot, "c")
    checkpoint(e, b, "src", img, "--leave-running")
    with open(os.path.join(img, "mm-1.img"), "r+b") as f:
        f.seek(8)
        f.write(b"\xff" * 16)
    m = manifest.load(img)
    m["images"] = manifest.list_images(img, digest=True)
    integrity.sign_manifest(m, config.load(e.config_path))  # an insider's signed bad image
    manifest.write(img, m)
    b2 = e.bundle("dst", annotations={"grit.dev/restore-from": img})
    p, _ = e.grit.create_with_pipes(b2, "dst")
    assert p.returncode != 0
    err = e.grit.log_error(b2)
    assert "criu: " in err and "ends without a result" not in err, err
    log = err.rsplit("(log: ", 1)[1].rstrip(")")
    assert os.path.exists(log), err
    _save(log, "corrupt-image.restore.log")


@pytest.mark.integration
def test_no_space_for_the_staging_copy_says_so(fenv):
    e = fenv
    staging = os.path.join(e.dir, "tiny")
    os.makedirs(staging)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", staging], check=True)
    try:
        e.write_config({"staging_dir": staging, "staging": "copy"})
        b = e.bundle("src")
        p, out = e.grit.create_with_pipes(b, "src")
        assert p.returncode == 0 and e.grit.run(b, "start", "src").returncode == 0
        img = os.path.join(e.ckroot, "s")
        checkpoint(e, b, "src", img, "--leave-running")
        b2 = e.bundle("dst", annotations={"grit.dev/restore-from": img})
        p, _ = e.grit.create_with_pipes(b2, "dst")
        assert p.returncode != 0
        err = e.grit.log_error(b2)
        assert "No space left on device" in err and "hint: no space left" in err, err
        assert os.listdir(staging) == []
    finally:
        subprocess.run(["umount", staging])


@pytest.mark.integration  # (mounts a tmpfs: root)
def test_a_log_cut_short_on_a_full_filesystem_says_so(tmp_path):
    """CRIU writing its images into a full tmpfs could not finish its own log either (seen on
    the H200 with CRIU 4.2): not 'killed', but no space."""
    d = tmp_path / "full"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(d)], check=True)
    try:
        with open(d / "dump.log", "w") as f:
            f.write("(00.000001) Version: 4.2\n(00.1) Dumping task\n")
        with open(d / "filler", "wb") as f:
            try:
                f.write(b"x" * (64 << 10))
            except OSError:
                pass
        why = criulog.explain(str(d), ("dump.log",))
        assert "its filesystem is full" in why and "hint: no space left" in why, why
    finally:
        subprocess.run(["umount", str(d)])
