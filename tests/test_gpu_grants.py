"""Which GPUs a spec grants (gpu.grants), and the destination check that uses it."""
from concurrent.futures import ThreadPoolExecutor

import pytest

from runc_grit.errors import GritError
from runc_grit.gpu import destination, grants

DEV = {"path": "/dev/nvidia1", "type": "c", "major": 195, "minor": 1}
HOOK = {"prestart": [{"path": "/usr/bin/nvidia-container-runtime-hook", "args": ["x", "prestart"]}]}
NODE = [{"index": 0, "minor": 0, "uuid": "GPU-a"}, {"index": 1, "minor": 1, "uuid": "GPU-b"}]


def spec(devices=(), env=(), ann=None, hooks=None):
    s = {"process": {"env": list(env)}, "linux": {"devices": list(devices)},
         "annotations": dict(ann or {})}
    if hooks:
        s["hooks"] = hooks
    return s


@pytest.mark.parametrize("sp, nvrt, count, chosen", [
    (spec(), False, 0, []),
    (spec([DEV]), False, 1, ["GPU-b"]),
    (spec(ann={"cdi.k8s.io/gpu": "nvidia.com/gpu=0"}), False, 1, ["GPU-a"]),
    (spec(ann={"cdi.k8s.io/x": "nvidia.com/gpu=GPU-b,vendor.com/net=eth"}), False, 1, ["GPU-b"]),
    (spec(ann={"cdi.k8s.io/gpu": "nvidia.com/gpu=all"}), False, None, ["GPU-a", "GPU-b"]),
    (spec(env=["NVIDIA_VISIBLE_DEVICES=0"]), False, 0, []),             # nobody acts on it
    (spec(env=["NVIDIA_VISIBLE_DEVICES=0"]), True, 1, ["GPU-a"]),       # the nvidia runtime
    (spec(env=["NVIDIA_VISIBLE_DEVICES=GPU-b"], hooks=HOOK), False, 1, ["GPU-b"]),  # its hook
    (spec(env=["NVIDIA_VISIBLE_DEVICES=all"]), True, None, ["GPU-a", "GPU-b"]),
    (spec(env=["NVIDIA_VISIBLE_DEVICES=void"]), True, 0, []),
    (spec(env=["NVIDIA_VISIBLE_DEVICES=none"]), True, 0, []),
    (spec(env=["NVIDIA_VISIBLE_DEVICES="]), True, 0, []),
    (spec(env=["NVIDIA_VISIBLE_DEVICES=nvidia.com/gpu=1"]), True, 1, ["GPU-b"]),
])
def test_grants_of_a_spec(sp, nvrt, count, chosen):
    g = grants.of_spec(sp, nvrt)
    assert g.count() == count and g.empty() == (count == 0)
    assert [d["uuid"] for d in g.select(NODE)] == chosen


class Conf:
    cuda = {"enabled": "auto", "require_same_gpu_model": True}


def _m(n_gpus, procs=1):
    return {"gpu": {"processes": [{"pid": 10 + i} for i in range(procs)],
                    "devices": [{"index": i, "uuid": "GPU-s%d" % i, "name": "NVIDIA H200"}
                                for i in range(n_gpus)]}}


def test_no_gpu_granted_is_refused_before_the_node_is_asked(monkeypatch):
    monkeypatch.setattr(destination.discovery, "inventory",
                        lambda: pytest.fail("the node's GPUs were read"))
    with pytest.raises(GritError) as e:
        destination.check_destination(_m(1), Conf(), spec=spec())
    assert "CUDA state of 1 process(es) on 1 GPU(s) (NVIDIA H200)" in e.value.message
    assert "this container's spec grants no GPU" in e.value.message
    with pytest.raises(GritError, match="spec grants 1 GPU"):
        destination.check_destination(_m(2), Conf(), spec=spec([DEV]))


def test_the_granted_gpu_is_the_remap_target_never_all(monkeypatch):
    monkeypatch.setattr(destination.discovery, "inventory", lambda: {
        "driver_version": "580.1", "devices": [dict(d, name="NVIDIA H200") for d in NODE]})
    assert destination.check_destination(_m(1), Conf(), spec=spec([DEV])) == [("GPU-s0", "GPU-b")]
    cdi = spec(ann={"cdi.k8s.io/gpu": "nvidia.com/gpu=GPU-z"})  # a GPU this node lacks
    with pytest.raises(GritError, match="of which 0 are on this node"):
        destination.check_destination(_m(1), Conf(), spec=cdi)
    assert destination.check_destination({"gpu": {}}, Conf(), spec=spec()) is None


def test_the_inventory_read_early_is_what_the_check_uses(monkeypatch):
    """runc's restore reads the node's GPUs in a thread while it checks the images
    (a Future); the destination check takes that result, or its error."""
    calls = []
    node = {"driver_version": "580.1", "devices": [dict(d, name="NVIDIA H200") for d in NODE]}
    monkeypatch.setattr(destination.discovery, "inventory", lambda: calls.append(1) or node)
    with ThreadPoolExecutor(1) as pool:
        early = pool.submit(destination.discovery.inventory)
    assert destination.check_destination(_m(1), Conf(), spec=spec([DEV]),
                                         get_inventory=early.result) == [("GPU-s0", "GPU-b")]
    assert calls == [1]

    def broken():
        raise RuntimeError("NVML: driver/library version mismatch")
    monkeypatch.setattr(destination.discovery, "inventory", broken)
    with ThreadPoolExecutor(1) as pool:
        early = pool.submit(destination.discovery.inventory)
    with pytest.raises(RuntimeError, match="version mismatch"):
        destination.check_destination(_m(1), Conf(), spec=spec([DEV]), get_inventory=early.result)


@pytest.mark.parametrize("m, sp, want", [
    (_m(1), spec([DEV]), True),
    (_m(1), spec(), False),                       # no GPU granted: refused before asking
    ({"gpu": {"processes": [{"pid": 1}]}}, spec([DEV]), False),   # no inventory recorded
    ({"gpu": {}}, spec([DEV]), False),            # no CUDA state
    (_m(1), None, False),
])
def test_when_the_inventory_is_read_early(m, sp, want):
    assert destination.wants_inventory(m, Conf(), sp) is want
