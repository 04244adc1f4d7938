"""runc-grit's own (operator) commands: doctor, demo, cuda-checkpoint, config, gc, hook,
keygen, key-id."""
import os
import sys

import click

from runc_grit import __version__


def operator_main(args):
    from runc_grit.errors import GritError, exit_code
    try:
        return cli.main(args=list(args), prog_name="runc-grit", standalone_mode=False) or 0
    except GritError as e:
        click.echo("runc-grit: %s" % e.message, err=True)
        return exit_code(e)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.Abort:
        return 130


def full_help(runtime, args):
    """`runc-grit --help`: the delegate runtime's own help (what a runc user expects), then
    runc-grit's commands."""
    import subprocess
    try:
        p = subprocess.run([runtime] + list(args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL, timeout=30)
        out, rc = p.stdout, p.returncode
    except (OSError, subprocess.TimeoutExpired) as e:
        out, rc = ("runc-grit: cannot run %s: %s\n" % (runtime, e)).encode(), 127
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    ctx = click.Context(cli, info_name="runc-grit")
    click.echo("\nrunc-grit %s wraps %s: every command above goes to it; create, run, "
               "checkpoint and restore are\nextended (README.md). runc-grit's own commands:"
               % (__version__, runtime))
    width = max(len(n) for n in cli.list_commands(ctx))
    for name in cli.list_commands(ctx):
        cmd = cli.get_command(ctx, name)
        click.echo("   %-*s  %s" % (width, name, cmd.get_short_help_str(80)))
    click.echo("Run 'runc-grit COMMAND --help' for one of them.")
    return rc


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="runc-grit")
def cli():
    """runc-grit operator commands. Every other command goes to the OCI runtime."""


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
def doctor(as_json):
    """Check what this node has and lacks for checkpoint/restore."""
    from runc_grit.node.doctor import render, run_checks
    checks = run_checks()
    click.echo(render(checks, as_json))
    blockers = [c.name for c in checks if c.blocker and not c.ok]
    if blockers:
        from runc_grit.errors import BlockerError
        raise BlockerError("doctor: %d blocker(s): %s" % (len(blockers), ", ".join(blockers)))


@cli.command()
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help="Where to build the bundles and images (default: a temp dir).")
@click.option("--keep", is_flag=True, help="Keep the work dir afterwards.")
@click.option("--wait", type=float, default=2.0, show_default=True,
              help="Seconds to let the counter run before the checkpoint.")
def demo(workdir, keep, wait):
    """Run a counter container through runc-grit, checkpoint it, restore it elsewhere."""
    from runc_grit.cli.demo import run_demo
    sys.exit(run_demo(workdir, keep, wait))


@cli.group()
def config():
    """Inspect the node configuration."""


@config.command("show")
@click.option("--path", default=None, help="Config file (default: $RUNC_GRIT_CONFIG or /etc/runc-grit/config.yaml).")
def config_show(path):
    """Validate the config and print it with defaults filled in."""
    import yaml
    from runc_grit.errors import GritError
    from runc_grit.node.config import load
    try:
        conf = load(path)
    except GritError as e:
        raise click.ClickException(e.message) from None
    click.echo(yaml.safe_dump(conf.as_dict(), sort_keys=False), nl=False)


@cli.command()
@click.argument("image_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def inspect(image_dir, as_json):
    """What a checkpoint holds, and whether this node can restore it (exit 1 if not)."""
    import json as _json
    import os as _os
    from runc_grit import fastconf
    from runc_grit.cli import inspect as inspect_cmd  # (the click command is named inspect)
    from runc_grit.node import config as _config
    from runc_grit.node import procs
    conf = _config.load()
    rt = fastconf.which(conf.runtime) or conf.runtime
    criu = procs.version_of(fastconf.which(conf.criu) or conf.criu, cache_dir=conf.state_dir)
    rep = inspect_cmd.inspect(image_dir, conf, _os.path.basename(rt), criu)
    click.echo(_json.dumps(rep, indent=1) if as_json else inspect_cmd.render(rep))
    return 1 if rep["problems"] else 0


@cli.command("export")
@click.argument("image_dir", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Archive to write (.tar.zst).")
@click.option("--no-compress", is_flag=True, help="Plain tar instead of zstd.")
def export_cmd(image_dir, output, no_compress):
    """Pack a checkpoint into one archive (checkpointctl's layout) to move it to another node."""
    from runc_grit.checkpoint import archive
    from runc_grit.checkpoint import manifest as _manifest
    m = _manifest.load(image_dir)
    total = sum(i["size"] for i in (m or {}).get("images", []))
    if sys.stdout.isatty() and total > 64 << 20:
        with click.progressbar(length=total, label="export") as bar:
            n = archive.export(image_dir, output, not no_compress, bar.update)
    else:
        n = archive.export(image_dir, output, not no_compress)
    click.echo("%s: %.1f MB of images -> %.1f MB" % (output, n / 1e6, os.path.getsize(output) / 1e6))


@cli.command("import")
@click.argument("archive_file", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(),
              help="New image dir to create (under checkpoint_roots, to restore from it).")
def import_cmd(archive_file, output):
    """Unpack an exported checkpoint and verify it (manifest, signature, every file)."""
    from runc_grit.checkpoint import archive
    from runc_grit.node import config as _config
    m = archive.import_(archive_file, output, _config.load())
    click.echo("%s: checkpoint of %s, %d files, verified" % (output, m["container"]["id"],
                                                             len(m["images"])))


@cli.command()
@click.argument("checkpoint_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("ref")
@click.option("--jobs", type=click.IntRange(1, 64), default=None,
              help="Blobs sent at once (default: the config's registry.jobs).")
@click.option("--blob-size", type=int, default=None,
              help="Bytes per part of a large file (a multiple of 64 MiB; default: the "
                   "config's registry.blob_size).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def push(checkpoint_dir, ref, jobs, blob_size, as_json):
    """Push a checkpoint to a registry as an OCI image (REF: HOST[:PORT]/REPO[:TAG]).

    CHECKPOINT_DIR: an image dir with grit-manifest.json, or a CRI checkpoint archive
    unpacked (checkpoint/ beside config.dump, spec.dump, status.dump), which containerd's
    CRI can then restore by image name as well."""
    import json as _json
    from runc_grit.node.config import load
    from runc_grit.registry import push as _push
    r = _push.push(checkpoint_dir, ref, load().registry, jobs=jobs, blob_size=blob_size)
    if as_json:
        click.echo(_json.dumps(r, indent=1))
    else:
        click.echo("%s: %d layers, %.1f MB, %.1f MB sent (%d blobs already there) in %.2fs"
                   % (r["ref"], r["layers"], r["bytes"] / 1e6, r["sent"] / 1e6, r["skipped"],
                      r["seconds"]))


@cli.command()
@click.argument("ref")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def pull(ref, out_dir, as_json):
    """Pull a checkpoint image into a new dir, verified as a restore would (signed manifest
    first, then every blob and file against its digest). REF: HOST[:PORT]/REPO[:TAG] or
    ...@sha256:DIGEST."""
    import json as _json
    from runc_grit.node.config import load
    from runc_grit.registry import pull as _pull
    path, m, _, st = _pull.to_dir(ref, out_dir, load())
    st.update(dir=path, container=m["container"]["id"], files=len(m["images"]))
    if as_json:
        click.echo(_json.dumps(st, indent=1))
    else:
        click.echo("%s: checkpoint of %s, %d files, %.1f MB in %.2fs, verified"
                   % (path, st["container"], st["files"], st["bytes"] / 1e6, st["seconds"]))


@cli.command()
@click.option("--dry-run", is_flag=True)
@click.option("--root", "roots", multiple=True,
              help="Runtime roots to look in (default: the one each container was made under).")
def gc(dry_run, roots):
    """Remove state of containers the runtime no longer knows, the staging copies of
    restores that were killed, the CRIU logs kept of failed restores, and pulled
    checkpoints beyond the cache's size bound (registry.cache_bytes)."""
    from runc_grit.node.config import load
    from runc_grit.node.state import ContainerState, list_ids
    from runc_grit.runtimes.delegate import Delegate
    conf = load()
    path = Delegate(conf.runtime).path
    for cid in list_ids(conf.state_dir):
        st = ContainerState(conf.state_dir, cid)
        rec = st.read() or {}
        where = list(roots) or [rec.get("root")]  # None: the runtime's default root
        known = any(Delegate.at(path, ["--root", r] if r else []).state(cid) is not None
                    for r in where)
        if not known:
            click.echo("stale: %s" % cid)
            if not dry_run:
                with st:
                    st.remove()
    from runc_grit.checkpoint import staging
    for path in staging.sweep(conf.staging_dir, dry_run=dry_run):
        click.echo("stale staging copy: %s" % path)
    from runc_grit.runtimes import criulog
    for path in criulog.kept(conf.state_dir):
        click.echo("log of a failed restore: %s" % path)
        if not dry_run:
            os.unlink(path)
    from runc_grit.registry import cache
    for path in cache.trim(cache.cache_dir(conf), conf.registry["cache_bytes"], dry_run=dry_run):
        click.echo("pulled checkpoint beyond the cache bound: %s" % path)


@cli.command()
@click.option("--out", "out_dir", default="/etc/runc-grit", show_default=True,
              type=click.Path(file_okay=False),
              help="Directory for signing.key and signing.pub.")
def keygen(out_dir):
    """Make this node's Ed25519 key pair: signing.key (0600, the config's signing_key) and
    signing.pub (0644: put it in the trusted_keys of the nodes that restore this node's
    checkpoints). Refuses to overwrite either."""
    from runc_grit.checkpoint import integrity
    key, pub, kid = integrity.write_key_pair(out_dir)
    click.echo("key %s: private %s, public %s" % (kid, key, pub))


@cli.command("key-id")
@click.argument("key_file", type=click.Path(exists=True, dir_okay=False))
def key_id(key_file):
    """Print a key's id, as manifests name their signer: a PEM public or private key, or a
    legacy HMAC secret."""
    from runc_grit.checkpoint import integrity
    click.echo(integrity.key_id_of_file(key_file))


def _register_cuda():
    from runc_grit.gpu.cli import cuda_checkpoint
    cli.add_command(cuda_checkpoint)


_register_cuda()
