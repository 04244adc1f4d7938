"""An inference-like GPU server for the cold-start bench: it loads INFER_WEIGHTS (a file of
fp16 values on local disk) into VRAM, builds a stack of INFER_LAYERS 8192x8192 layers out of
it, warms up the way vLLM does (an eager pass, then the forward captured as a CUDA graph for
each batch size vLLM captures by default: 1, 2, 4, 8, 16, ..., 512, largest first, one
memory pool), and answers requests with the batch-INFER_BATCH graph: a file
INFER_DIR/req-ID holding a seed gets INFER_DIR/resp-ID, "SEED VALUE PID",
VALUE the float hex of the sum of the output for an input drawn from that seed (written to a
temp name, then renamed). The same seed gets the same VALUE bit for bit, in this process or
in one restored from its checkpoint. Phase times (since the interpreter started) go to
INFER_DIR/phases-PID.json once it is ready.
"""
import json
import os
import sys
import time

T0 = time.time()
phases = {}

import torch  # noqa: E402

phases["import_torch_s"] = time.time() - T0
torch.backends.cuda.matmul.allow_tf32 = False
path = os.environ["INFER_WEIGHTS"]
rdir = os.environ["INFER_DIR"]
layers = int(os.environ.get("INFER_LAYERS", "16"))
batch = int(os.environ.get("INFER_BATCH", "8"))
D = 8192
CHUNK = 256 << 20

size = os.path.getsize(path)
weights = torch.empty(size, dtype=torch.uint8, device="cuda")
torch.cuda.synchronize()
phases["cuda_init_s"] = time.time() - T0 - sum(phases.values())
staging = torch.empty(CHUNK, dtype=torch.uint8)  # pageable, as a safetensors load copies
view = staging.numpy()
with open(path, "rb", buffering=0) as f:
    off = 0
    while off < size:
        n = f.readinto(memoryview(view)[:min(CHUNK, size - off)])
        if not n:
            raise SystemExit("%s: short read at %d" % (path, off))
        weights[off:off + n].copy_(staging[:n])
        off += n
torch.cuda.synchronize()
phases["load_weights_s"] = time.time() - T0 - sum(phases.values())

w16 = weights.view(torch.float16)
per = D * D
stride = (w16.numel() - per) // max(1, layers - 1)
mats = [w16[i * stride:i * stride + per].view(D, D) for i in range(layers)]
sizes = [int(b) for b in os.environ.get("INFER_GRAPH_BATCHES", "").split()] or \
    [1, 2, 4] + list(range(8, 513, 8))
if batch not in sizes:
    sizes.append(batch)
x_max = torch.zeros(max(sizes), D, dtype=torch.float16, device="cuda")


def forward(x):
    for m in mats:
        x = torch.nn.functional.gelu(x @ m) * 0.5
    return x


forward(x_max)  # eager: cuBLAS handles and kernels loaded
torch.cuda.synchronize()
side = torch.cuda.Stream()
side.wait_stream(torch.cuda.current_stream())
with torch.cuda.stream(side):
    for _ in range(2):
        forward(x_max)
torch.cuda.current_stream().wait_stream(side)
pool = torch.cuda.graph_pool_handle()
graphs = {}
for b in sorted(sizes, reverse=True):
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, pool=pool):
        out = forward(x_max[:b])
    graphs[b] = (g, out)
graph, y_out = graphs[batch]
x_in = x_max[:batch]
graph.replay()
torch.cuda.synchronize()
phases["warmup_graphs_s"] = time.time() - T0 - sum(phases.values())
phases["graphs"] = len(graphs)
gen = torch.Generator(device="cuda")


def answer(seed):
    gen.manual_seed(seed)
    x_in.copy_(torch.randn(batch, D, generator=gen, device="cuda", dtype=torch.float16))
    graph.replay()
    return float(y_out.double().sum())


phases["ready_s"] = time.time() - T0  # (graphs: a count, not a time)
with open(os.path.join(rdir, "phases-%d.json" % os.getpid()), "w") as f:
    json.dump(phases, f)
seen = set()
while True:
    for name in sorted(os.listdir(rdir)):
        if not name.startswith("req-") or name in seen:
            continue
        seen.add(name)
        try:
            with open(os.path.join(rdir, name)) as f:
                seed = int(f.read().strip() or "0")
        except (OSError, ValueError):
            continue
        val = answer(seed)
        tmp = os.path.join(rdir, ".resp-%s" % name[4:])
        with open(tmp, "w") as f:
            f.write("%d %s %d\n" % (seed, val.hex(), os.getpid()))
        os.rename(tmp, os.path.join(rdir, "resp-%s" % name[4:]))
    time.sleep(0.001)
    sys.stdout.flush()
