"""`runc-grit demo`: the main job, end to end on this machine with real runc and CRIU.

A busybox counter container is created and started through runc-grit (as containerd does
it: create, then start, stdio as pipes), checkpointed through runc-grit, and restored into a
new container (new id, new bundle) by the grit.dev/restore-from annotation. The exit code
says whether the counter resumed (the restored container's first number is the next one).
"""
import json
import os
import shutil
import tempfile
import time

import click

from runc_grit.cli.harness import Grit
from runc_grit.oci import bundle as _bundle


def _step(n, text):
    click.echo(click.style("[%d] " % n, fg="cyan", bold=True) + text)


def run_demo(workdir=None, keep=False, wait=2.0):
    own = workdir is None
    workdir = os.path.abspath(workdir or tempfile.mkdtemp(prefix="runc-grit-demo-"))
    os.makedirs(workdir, exist_ok=True)
    root = os.path.join(workdir, "runc-root")
    ckroot = os.path.join(workdir, "checkpoints")
    os.makedirs(ckroot, exist_ok=True)
    conf_path = os.path.join(workdir, "config.yaml")
    # this demo "node"'s own Ed25519 key pair, as install.sh makes one (demo.key, mode 600)
    from runc_grit.checkpoint import integrity
    key = os.path.join(workdir, "demo.key")
    if not os.path.exists(key):
        integrity.write_key_pair(workdir, "demo")
    with open(conf_path, "w") as f:
        f.write("checkpoint_roots: [%s]\nstate_dir: %s\nsigning_key: %s\nrequire_signature: true\n"
                "staging_dir: %s\ntrusted_keys: []\n"
                % (json.dumps(ckroot), json.dumps(os.path.join(workdir, "state")),
                   json.dumps(key), json.dumps(os.path.join(workdir, "staging"))))
    env = dict(os.environ, RUNC_GRIT_CONFIG=conf_path)
    grit = Grit(root, env)
    src_b = os.path.join(workdir, "bundle-src")
    dst_b = os.path.join(workdir, "bundle-dst")
    image = os.path.join(ckroot, "counter")
    ok = False
    readers = []
    try:
        _step(1, "bundle: busybox rootfs from %s, a counter printing 1, 2, 3, ..." % _bundle.find_busybox())
        _bundle.make_bundle(src_b, _bundle.counter_args("0.2"))

        _step(2, "runc-grit create + start demo-src (stdio as pipes, like containerd)")
        p, out1 = grit.create_with_pipes(src_b, "demo-src")
        readers.append(out1)
        if p.returncode != 0:
            raise click.ClickException("create failed: %s" % grit.log_error(src_b))
        grit.run(src_b, "start", "demo-src").check_returncode()
        time.sleep(wait)
        out1.wait_for(lambda r: len(r.ints()) >= 3)
        click.echo("    demo-src counts: %s" % " ".join(map(str, out1.ints()[-5:])))

        _step(3, "runc-grit checkpoint --image-path %s demo-src" % image)
        t0 = time.monotonic()
        p = grit.run(src_b, "checkpoint", "--image-path", image,
                     "--work-path", os.path.join(workdir, "work-dump"), "demo-src")
        dt = time.monotonic() - t0
        if p.returncode != 0:
            raise click.ClickException("checkpoint failed: %s" % grit.log_error(src_b))
        out1.closed()
        before = out1.ints()
        last = before[-1] if before else None
        with open(os.path.join(image, "grit-manifest.json")) as f:
            man = json.load(f)
        click.echo("    done in %.2fs; %d image files, %d KiB; grit-manifest.json written"
                   % (dt, len(man["images"]), sum(i["size"] for i in man["images"]) // 1024))
        grit.run(src_b, "delete", "demo-src")

        _step(4, "new bundle with annotation grit.dev/restore-from=%s; runc-grit create + start demo-dst"
              % image)
        _bundle.make_bundle(dst_b, _bundle.counter_args("0.2"),
                            annotations={"grit.dev/restore-from": image},
                            rootfs_from=os.path.join(src_b, "rootfs"))
        t0 = time.monotonic()
        p, out2 = grit.create_with_pipes(dst_b, "demo-dst")
        readers.append(out2)
        dt = time.monotonic() - t0
        if p.returncode != 0:
            raise click.ClickException("restore-on-create failed: %s" % grit.log_error(dst_b))
        grit.run(dst_b, "start", "demo-dst").check_returncode()
        out2.wait_for(lambda r: len(r.ints()) >= 3, timeout=10)
        after = out2.ints()
        st = grit.state("demo-dst") or {}
        click.echo("    restored in %.2fs; runc state: %s, pid %s" % (dt, st.get("status"), st.get("pid")))

        first = after[0] if after else None
        ok = last is not None and first == last + 1
        _step(5, "before / after")
        rows = [("container", "demo-src", "demo-dst"),
                ("bundle", os.path.basename(src_b), os.path.basename(dst_b)),
                ("numbers", " ".join(map(str, before[-3:])), " ".join(map(str, after[:3]))),
                ("last / first", str(last), str(first))]
        w = max(len(r[1]) for r in rows) + 2
        for r in rows:
            click.echo("    %-14s %-*s %s" % (r[0], w, r[1], r[2]))
        if ok:
            click.echo(click.style("RESUMED: demo-dst continued at %d after %d" % (first, last),
                                   fg="green", bold=True))
        else:
            click.echo(click.style("NOT RESUMED: expected %s, got %s" % (
                None if last is None else last + 1, first), fg="red", bold=True))
    except click.ClickException as e:
        click.echo(click.style("FAILED: " + e.message, fg="red", bold=True))
    finally:
        _step(6, "clean up")
        for cid, b in (("demo-dst", dst_b), ("demo-src", src_b)):
            grit.run(b if os.path.isdir(b) else None, "delete", "--force", cid)
        if own and not keep:
            shutil.rmtree(workdir, ignore_errors=True)
        elif keep:
            click.echo("    kept %s" % workdir)
    return 0 if ok else 1
