"""`runc-grit cuda-checkpoint`: NVIDIA's cuda-checkpoint command line over the builtin helper.

    --toggle --pid P                 running -> lock+checkpoint; checkpointed -> restore+unlock
    --action lock|checkpoint|restore|unlock --pid P [--timeout MS] [--device-map OLD=NEW,...]
    --get-state --pid P              prints running|locked|checkpointed|failed
    --get-restore-tid --pid P        prints the restore thread id
Scripts written for NVIDIA's binary work unchanged; no NVIDIA binary is needed.
"""
import sys

import click

from runc_grit.errors import GritError, GpuError


def _device_map(text):
    pairs = []
    if not text:
        return pairs
    from runc_grit.gpu.driver import parse_uuid
    for item in text.split(","):
        old, sep, new = item.partition("=")
        if not sep:
            raise click.BadParameter("expected OLD=NEW, got %r" % item, param_hint="--device-map")
        try:
            parse_uuid(old)
            parse_uuid(new)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--device-map") from None
        pairs.append((old.strip(), new.strip()))
    return pairs


@click.command("cuda-checkpoint", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--toggle", is_flag=True, help="Toggle the CUDA state of the process.")
@click.option("--action", type=click.Choice(["lock", "checkpoint", "restore", "unlock"]))
@click.option("--get-state", "get_state", is_flag=True, help="Print the CUDA state.")
@click.option("--get-restore-tid", "get_restore_tid", is_flag=True,
              help="Print the restore thread id.")
@click.option("--pid", "-p", type=int, required=True, help="Process to act on.")
@click.option("--timeout", "-t", "timeout", type=int, default=0, show_default=True,
              help="Lock timeout in milliseconds (0: wait forever).")
@click.option("--device-map", "device_map", default=None,
              help="Restore onto other GPUs: OLD_UUID=NEW_UUID,...")
@click.option("--library", default="libcuda.so.1", hidden=True)
def cuda_checkpoint(toggle, action, get_state, get_restore_tid, pid, timeout, device_map, library):
    """CUDA checkpoint helper with NVIDIA cuda-checkpoint's flags."""
    chosen = [n for n, v in (("--toggle", toggle), ("--action", action), ("--get-state", get_state),
                             ("--get-restore-tid", get_restore_tid)) if v]
    if len(chosen) != 1:
        raise click.UsageError("give exactly one of --toggle, --action, --get-state, --get-restore-tid")
    pairs = _device_map(device_map)
    from runc_grit.gpu.driver import CudaError, open_backend
    try:
        api = open_backend(library)
        if get_state:
            click.echo(api.get_state(pid))
        elif get_restore_tid:
            click.echo(api.restore_tid(pid))
        elif action == "lock":
            api.lock(pid, timeout)
        elif action == "checkpoint":
            api.checkpoint(pid)
        elif action == "restore":
            api.restore(pid, pairs)
        elif action == "unlock":
            api.unlock(pid)
        else:  # toggle
            state = api.get_state(pid)
            if state == "running":
                api.lock(pid, timeout)
                api.checkpoint(pid)
            elif state == "checkpointed":
                api.restore(pid, pairs)
                api.unlock(pid)
            elif state == "locked":
                api.unlock(pid)
            else:
                raise GpuError("pid %d: cannot toggle from state %s" % (pid, state))
    except (CudaError, OSError) as e:
        click.echo("Error: %s" % e, err=True)
        sys.exit(1)
    except GritError as e:
        click.echo("Error: %s" % e.message, err=True)
        sys.exit(1)
