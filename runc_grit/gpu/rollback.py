"""GPU phase after a failure: when a dump failed, or ran with --leave-running, every CUDA
process the pre-dump hook locked or checkpointed is restored and unlocked again, so that the
source keeps computing. Nothing is left locked."""
import os

from runc_grit.errors import GritError, GpuError
from runc_grit.gpu import helper as _helper
from runc_grit.gpu import records


def epilogue(st, conf, log=None):
    """After a failed dump or a --leave-running one: put every CUDA process the pre-dump
    hook touched back to `running`. Returns the pids resumed."""
    rec = records.read_record(st)
    procs = rec.get("processes") or {}
    if not procs:
        return []
    helper = _helper.for_config(conf, required=True)
    resumed, failed = [], []
    for p in sorted(int(x) for x in procs):
        if not os.path.exists("/proc/%d" % p):
            continue
        try:
            s = helper.state(p)
            if s == "checkpointed":
                helper.restore(p)
                s = helper.state(p)
            if s == "locked":
                helper.unlock(p)
                resumed.append(p)
            elif s == "running" and procs[str(p)].get("locked"):
                resumed.append(p)
            if helper.state(p) != "running":
                failed.append(p)
        except GritError as e:
            failed.append(p)
            if log:
                log.error("CUDA resume of pid %d failed: %s" % (p, e.message))
    rec["epilogue"] = {"resumed": resumed, "failed": failed}
    records.write_record(st, rec)
    if failed:
        raise GpuError("CUDA processes %s could not be resumed" % failed)
    return resumed


def pending(st, conf):
    """The processes the pre-dump touched that are not running (yet)."""
    procs = records.read_record(st).get("processes") or {}
    if not procs:
        return []
    helper = _helper.for_config(conf, required=True)
    return [int(p) for p in procs if os.path.exists("/proc/%s" % p)
            and helper.state(int(p)) not in (None, "running")]
