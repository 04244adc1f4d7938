"""A watchdog for runc-grit's own death during a checkpoint or a restore.

runc-grit starts the runtime in a process group of its own (runc, CRIU, the action scripts)
and this small process beside it, holding a pipe. When runc-grit finishes it writes "ok"; when
it is killed, the pipe just closes, and the guard rolls back what was in flight:

  checkpoint  CRIU outlives runc (runc dies with runc-grit, CRIU does not) and then holds the
              container's tasks in a ptrace stop for good. The guard kills the group, which
              releases them; thaws a container left frozen; restores and unlocks every CUDA
              process the pre-dump hook had checkpointed. The source keeps running, no
              manifest exists (it is written last), so the image dir is refused for restores.
  restore     the half-restored container is removed: the group killed, `runtime delete
              --force`, every process left in its cgroup killed, runc-grit's state removed.
  runsc-checkpoint
              (a guarded block: pause, runsc checkpoint --leave-running, manifest, stop)
              the manifest is removed; a sandbox runc-grit paused is resumed; the CUDA
              processes frozen inside it are restored and unlocked (runsc exec of the helper).

  python -m runc_grit.guard JOB_JSON   (stdin: the pipe, "pgid N" then "ok"; run by procs.run)
"""
import json
import os
import signal
import sys
import time


def _group_gone(pgid, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        time.sleep(0.05)
    return False


def _kill_cgroup(state_json):
    """Kill every process left in the cgroups runc made for the container."""
    for path in (state_json or {}).get("cgroup_paths", {}).values():
        try:
            with open(os.path.join(path, "cgroup.procs")) as f:
                pids = [int(x) for x in f.read().split()]
        except OSError:
            continue
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _runc_state_json(rt, cid):
    try:
        with open(os.path.join(rt.root(), cid, "state.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def rollback(job):
    from runc_grit.node.state import ContainerState
    from runc_grit.runtimes.delegate import Delegate
    rt = Delegate.at(job["runtime"], job["globals"])
    if job["pgid"]:  # 0: a guarded block in runc-grit itself; its children died with it
        try:
            os.killpg(job["pgid"], signal.SIGKILL)
        except ProcessLookupError:
            pass
        _group_gone(job["pgid"])
    st = ContainerState(os.path.dirname(job["state_dir"]), os.path.basename(job["state_dir"]))
    with st:
        record = {"rolled_back": job["kind"], "t": time.time()}
        if job["kind"] == "runsc-checkpoint":
            record.update(_runsc_unfreeze(rt, job))
            if st.read() is None:
                st.remove()
            else:
                st.write(record, "rollback.json")
        elif job["kind"] == "checkpoint":
            # left frozen by CRIU, or by the caller's pause (containerd pauses, then
            # checkpoints, and its deferred resume dies with the CRI deadline that killed
            # runc-grit): an unfinished checkpoint leaves the source running (KEP-6274), and
            # CUDA's restore and unlock need it thawed
            info = rt.state(job["cid"]) or {}
            if info.get("status") == "paused":
                rt.resume(job["cid"])
                record["thawed"] = True
            record.update(_cuda_epilogue(st))
            if st.read() is not None:
                st.write(record, "rollback.json")
            else:  # runc-grit held no state for this container before: leave none
                st.remove()
        else:
            state_json = _runc_state_json(rt, job["cid"])
            rt.force_delete(job["cid"])
            rt.release_restore_mounts(job["cid"])
            _kill_cgroup(state_json)
            st.remove()
    return record


def _cuda_epilogue(st, tries=3):
    """Every CUDA process the pre-dump touched back to running. A helper runc-grit had started
    dies with it, but may just have changed a process's state: so look again, a few times."""
    from runc_grit.gpu import rollback
    from runc_grit.node import config as _config
    out = {}
    for _ in range(tries):
        try:
            conf = _config.Config(json.loads(os.environ["RUNC_GRIT_HOOK_CONF"]))
            out["cuda_resumed"] = rollback.epilogue(st, conf)
            out.pop("cuda_error", None)
            time.sleep(0.5)
            if not rollback.pending(st, conf):
                break
        except Exception as e:  # noqa: BLE001 - recorded; nothing else can act now
            out["cuda_error"] = str(e)
    return out


class _NoLog:
    def warning(self, msg):
        pass

    debug = warning


def _runsc_unfreeze(rt, job):
    from runc_grit.checkpoint import manifest
    from runc_grit.gpu import sandbox
    out = {}
    if job.get("image_dir"):
        manifest.remove(job["image_dir"])  # runc-grit never reported it complete
    info = rt.state(job["cid"]) or {}
    if info.get("status") == "paused" and not job.get("was_paused"):
        rt.resume(job["cid"])
        out["resumed"] = True
        info = rt.state(job["cid"]) or {}
    if info.get("status") != "running":
        out["sandbox"] = info.get("status") or "gone"
        return out
    if not job.get("sandbox_helper"):
        return out
    helper = sandbox.SandboxHelper(rt, job["cid"], job["sandbox_helper"])
    try:
        # whatever the helper reports locked or checkpointed: runc-grit may have died
        # half-way through the freeze
        pids = [p for p in helper.pids() if helper.state(p) in ("locked", "checkpointed")]
        left = sandbox.unfreeze(helper, pids, _NoLog())
    except Exception as e:  # noqa: BLE001 - recorded; nothing else can act now
        out["cuda_error"] = str(e)
        return out
    out.update(cuda_resumed=[p for p in pids if p not in left], cuda_left=left)
    return out


def main(argv):
    job = json.loads(argv[0])
    lines = sys.stdin.buffer.read().decode("ascii", "replace").split()  # until EOF
    if "ok" in lines or "pgid" not in lines:
        return 0  # runc-grit finished, or died before it started the runtime
    job["pgid"] = int(lines[lines.index("pgid") + 1])
    rollback(job)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
