"""Reliability under load and faults, with real runc + CRIU: nothing lost, nothing half-done.
What each test proves is listed in docs/reliability.md."""
import os
import signal
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from runc_grit.oci import bundle as _bundle

from conftest import Env
from test_integration_runc import assert_continues, checkpoint, start_counter

pytestmark = pytest.mark.integration


def token_procs(token):
    """pids whose command line carries token (a workload's unique marker)."""
    out = []
    for n in os.listdir("/proc"):
        if n.isdigit():
            try:
                with open("/proc/%s/cmdline" % n, "rb") as f:
                    if token.encode() in f.read():
                        out.append(int(n))
            except OSError:
                pass
    return out


def counter_args(token):
    return ["sh", "-c", _bundle.COUNTER % "0.1" + " # " + token]


def slow_script(e, action):
    """A CRIU action script that stops CRIU at `action` for 5 s: a fixed moment to kill at."""
    path = os.path.join(e.dir, "slow-%s.sh" % action)
    mark = os.path.join(e.dir, "at-" + action)
    with open(path, "w") as f:
        f.write('#!/bin/sh\n[ "$CRTOOLS_SCRIPT_ACTION" = "%s" ] || exit 0\n'
                'echo $PPID > %s\nsleep 5\n' % (action, mark))
    os.chmod(path, 0o755)
    return path, mark


def checkpointed_counter(e, name, token, rootfs_from=None):
    """A counter (marked with token) started, checkpointed into ck/img and deleted.
    Returns (bundle, its output, image dir)."""
    b0 = e.bundle(name, args=counter_args(token), rootfs_from=rootfs_from)
    p, out0 = e.grit.create_with_pipes(b0, name)
    assert p.returncode == 0 and e.grit.run(b0, "start", name).returncode == 0
    assert out0.wait_for(lambda r: len(r.ints()) >= 3)
    img = os.path.join(e.ckroot, "img")
    checkpoint(e, b0, name, img)
    e.grit.run(b0, "delete", name)
    assert token_procs(token) == []
    return b0, out0, img


def wait_file(path, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        if os.path.exists(path) and os.path.getsize(path):
            return True
        time.sleep(0.01)
    return False


def keeps_counting(out, n=3, timeout=10):
    k = len(out.ints())
    return out.wait_for(lambda r: len(r.ints()) >= k + n, timeout)


# --- 1. load ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_100_lifecycles_16_at_a_time(genv):
    args = ["sleep", "1000"]
    rootfs = os.path.join(genv.bundle("proto", args=args), "rootfs")

    def lifecycle(i):
        cid = "load-%03d" % i
        b = genv.bundle(cid, args=args, rootfs_from=rootfs)
        g = genv.grit
        # the container's stdio: /dev/null (a pipe would be held open by the container)
        steps = [("create", g.run(b, "create", "--bundle", b, "--pid-file", b + "/init.pid", cid,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)),
                 ("start", g.run(b, "start", cid))]
        st = g.state(cid)
        steps.append(("state", subprocess.CompletedProcess([], 0 if st and st["status"] == "running" else 1)))
        steps.append(("kill", g.run(b, "kill", cid, "KILL")))
        end = time.time() + 20
        while time.time() < end and (g.state(cid) or {}).get("status") != "stopped":
            time.sleep(0.05)
        steps.append(("delete", g.run(b, "delete", cid)))
        return [(name, p.returncode, g.log_error(b) if p.returncode else None) for name, p in steps
                if p.returncode != 0]

    with ThreadPoolExecutor(16) as pool:
        failures = [f for f in pool.map(lifecycle, range(100)) if f]
    assert failures == []
    from runc_grit.node.state import list_ids
    assert list_ids(genv.state_dir) == []  # no container's state left (caches may stay)
    assert genv.runc("list", "-q").stdout.split() == []


def test_8_concurrent_checkpoints_each_restored(genv):
    n = 8
    started = [start_counter(genv, "c%d" % i, "c%d" % i) for i in range(n)]
    for _, out in started:
        assert out.wait_for(lambda r: len(r.ints()) >= 3)

    def ckpt(i):
        b = started[i][0]
        img = os.path.join(genv.ckroot, "c%d" % i)
        p = genv.grit.run(b, "checkpoint", "--image-path", img, "--work-path", img + "-w", "c%d" % i)
        return p.returncode, genv.grit.log_error(b)

    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(ckpt, range(n)))
    assert all(rc == 0 for rc, _ in results), results
    for i, (b, out) in enumerate(started):
        out.closed()
        genv.grit.run(b, "delete", "c%d" % i)

    def restore(i):
        return start_counter(genv, "r%d" % i, "r%d" % i,
                             annotations={"grit.dev/restore-from": os.path.join(genv.ckroot, "c%d" % i)},
                             rootfs_from=os.path.join(started[i][0], "rootfs"))

    with ThreadPoolExecutor(n) as pool:
        restored = list(pool.map(restore, range(n)))
    for (_, before), (_, after) in zip(started, restored):
        assert after.wait_for(lambda r: len(r.ints()) >= 3)
        assert_continues(before.ints(), after.ints())


# --- 2. faults during checkpoint --------------------------------------------------------------

def _refused(genv, img, b_src):
    b = genv.bundle("probe-%s" % uuid.uuid4().hex[:6], annotations={"grit.dev/restore-from": img},
                    rootfs_from=os.path.join(b_src, "rootfs"))
    p, _ = genv.grit.create_with_pipes(b, "probe")
    return p.returncode != 0 and genv.grit.state("probe") is None, genv.grit.log_error(b)


@pytest.mark.parametrize("fault", ["kill runc-grit", "kill criu", "ENOSPC", "unwritable dir"])
def test_checkpoint_fault_leaves_the_source_running(workdir, fault):
    e = Env(workdir)
    if fault.startswith("kill"):
        script, mark = slow_script(e, "network-lock")  # tasks frozen and seized by CRIU
        e.write_config({"checkpoint_roots": [e.ckroot], "state_dir": e.state_dir,
                        "criu_options": ["action-script " + script]})
    b, out = start_counter(e, "src", "src")
    assert out.wait_for(lambda r: len(r.ints()) >= 3)
    img = os.path.join(e.ckroot, "img")
    mounted = None
    if fault in ("ENOSPC", "unwritable dir"):
        os.makedirs(img)
        opts = "size=64k" if fault == "ENOSPC" else "ro,size=1m"
        subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", img], check=True)
        mounted = img
    try:
        p = subprocess.Popen(e.grit.argv(b, "checkpoint", "--image-path", img, "--work-path",
                                         os.path.join(workdir, "work"), "src"), env=e.grit.env)
        if fault == "kill runc-grit":
            assert wait_file(mark)
            p.send_signal(signal.SIGKILL)
        elif fault == "kill criu":
            assert wait_file(mark)
            with open(mark) as f:
                os.kill(int(f.read()), signal.SIGKILL)  # the action script's parent: CRIU
        rc = p.wait(60)
        assert rc != 0
        assert keeps_counting(out), "the source stopped (%s)" % fault
        assert e.grit.state("src")["status"] == "running"
        if fault != "kill runc-grit":
            assert "keeps running" in e.grit.log_error(b)
        assert not os.path.exists(os.path.join(img, "grit-manifest.json"))
    finally:
        if mounted:
            subprocess.run(["umount", "-l", mounted])
    refused, why = _refused(e, img, b)
    assert refused, why
    e.cleanup()


# --- 3. faults during restore-on-create ---------------------------------------------------------

@pytest.mark.parametrize("policy", ["fail", "fresh"])
@pytest.mark.parametrize("fault", ["kill criu", "truncated image", "unwritable pid file"])
def test_restore_fault_fails_cleanly_or_starts_fresh(workdir, fault, policy):
    e = Env(workdir)
    token = "tok-" + uuid.uuid4().hex[:10]
    b, out = start_counter(e, "src", "src")
    checkpointed_counter(e, "src2", token, os.path.join(b, "rootfs"))
    img = os.path.join(e.ckroot, "img")
    ann = {"grit.dev/restore-from": img, "grit.dev/restore-policy": policy}
    b1 = e.bundle("dst", args=counter_args(token), annotations=ann,
                  rootfs_from=os.path.join(b, "rootfs"))
    pid_file = os.path.join(b1, "init.pid")
    killer = None
    if fault == "truncated image":
        pages = sorted(f for f in os.listdir(img) if f.startswith("pages-"))[0]
        with open(os.path.join(img, pages), "r+b") as f:
            f.truncate(os.path.getsize(os.path.join(img, pages)) // 2)
    elif fault == "unwritable pid file":
        ro = os.path.join(workdir, "ro")
        os.makedirs(ro)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", ro], check=True)
        pid_file = os.path.join(ro, "init.pid")
    else:
        script, mark = slow_script(e, "post-restore")  # tasks restored, not yet resumed
        e.write_config({"checkpoint_roots": [e.ckroot], "state_dir": e.state_dir,
                        "criu_options": ["action-script " + script]})

        def kill_criu():
            if wait_file(mark):
                with open(mark) as f:
                    os.kill(int(f.read()), signal.SIGKILL)
        import threading
        killer = threading.Thread(target=kill_criu)
        killer.start()
    try:
        r_out, w_out = os.pipe()
        p = subprocess.run(e.grit.argv(b1, "create", "--bundle", b1, "--pid-file", pid_file, "dst"),
                           stdin=subprocess.DEVNULL, stdout=w_out, stderr=w_out, env=e.grit.env,
                           timeout=120)
        os.close(w_out)
        from runc_grit.cli.harness import PipeReader
        out1 = PipeReader(r_out)
        if killer:
            killer.join()
        err = e.grit.log_error(b1)
        if policy == "fresh" and fault != "unwritable pid file":
            # a fresh container: created, then started, it counts from 1
            assert p.returncode == 0, err
            assert e.grit.run(b1, "start", "dst").returncode == 0
            assert out1.wait_for(lambda r: len(r.ints()) >= 2)
            assert out1.ints()[0] == 1
            assert "policy 'fresh'" in open(os.path.join(b1, "log.json")).read()
            e.grit.run(b1, "delete", "--force", "dst")
        else:
            assert p.returncode != 0
            assert err, "no error in --log"
            assert e.grit.state("dst") is None
            assert not os.path.exists(os.path.join(e.state_dir, "dst"))
        time.sleep(0.5)
        assert token_procs(token) == [], "processes left behind"
        with open("/proc/self/mountinfo") as f:  # runc's criu-root bind mount included
            assert [ln for ln in f if e.root + "/" in ln] == [], "mounts left behind"
    finally:
        if fault == "unwritable pid file":
            subprocess.run(["umount", "-l", os.path.join(workdir, "ro")])
        e.cleanup()


# --- 4. crash consistency -------------------------------------------------------------------------

def test_runc_grit_killed_during_restore_create(workdir):
    """runc-grit dies in the middle of a restore-on-create (CRIU at post-restore): its guard
    removes the half-made container; start/state/kill/delete then answer cleanly, and no
    process of it is left."""
    e = Env(workdir)
    token = "tok-" + uuid.uuid4().hex[:10]
    b0, out0, img = checkpointed_counter(e, "src", token)
    script, mark = slow_script(e, "post-restore")
    e.write_config({"checkpoint_roots": [e.ckroot], "state_dir": e.state_dir,
                    "criu_options": ["action-script " + script]})
    b1 = e.bundle("dst", args=counter_args(token), annotations={"grit.dev/restore-from": img},
                  rootfs_from=os.path.join(b0, "rootfs"))
    p = subprocess.Popen(e.grit.argv(b1, "create", "--bundle", b1, "--pid-file",
                                     os.path.join(b1, "init.pid"), "dst"),
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env=e.grit.env)
    assert wait_file(mark)
    p.send_signal(signal.SIGKILL)
    p.wait()
    end = time.time() + 20
    while time.time() < end and (token_procs(token) or os.path.exists(os.path.join(e.state_dir, "dst"))):
        time.sleep(0.1)
    assert token_procs(token) == [], "processes left behind"
    assert not os.path.exists(os.path.join(e.state_dir, "dst"))
    with open("/proc/self/mountinfo") as f:  # runc's criu-root bind mount, which runc leaves
        assert [ln for ln in f if e.root + "/" in ln] == [], "mounts left behind"
    for cmd in (["start", "dst"], ["state", "dst"], ["kill", "dst", "KILL"], ["delete", "dst"]):
        r = e.grit.run(b1, *cmd, timeout=30)
        assert r.returncode != 0, cmd  # the container does not exist, and says so
        assert "does not exist" in e.grit.log_error(b1), cmd
    # and the image is still good: a new create restores it
    e.write_config({"checkpoint_roots": [e.ckroot], "state_dir": e.state_dir})
    b2, out2 = start_counter(e, "dst2", "dst2", annotations={"grit.dev/restore-from": img},
                             rootfs_from=os.path.join(b0, "rootfs"))
    assert out2.wait_for(lambda r: len(r.ints()) >= 2)
    assert_continues(out0.ints(), out2.ints())
    e.cleanup()
