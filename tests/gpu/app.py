"""Deterministic GPU workload: one line per step, `step=N val=<float hex> pid=P`.

A restored process must continue the sequence exactly: step N+1 with the value an
uninterrupted run prints at N+1 (compared as float hex, so bit for bit).
APP_MIB: VRAM to hold; APP_TICK: seconds between steps; APP_STEPS: stop after N steps;
APP_CHILD=1: also start a child process that does the same into <log>.child.
"""
import faulthandler
import os
import signal
import subprocess
import sys
import time

import torch

faulthandler.register(signal.SIGUSR1, all_threads=True)  # stacks to stderr, for diagnosis
mib = int(os.environ.get("APP_MIB", "1024"))
out_path = sys.argv[1]
child = None
if os.environ.get("APP_CHILD") == "1":
    env = dict(os.environ, APP_CHILD="0", APP_SEED="1")
    child = subprocess.Popen([sys.executable, __file__, out_path + ".child"], env=env)
torch.manual_seed(int(os.environ.get("APP_SEED", "0")))
x = torch.rand(mib * 1024 * 1024 // 4, device="cuda")
w = torch.rand(1024, 1024, device="cuda") / 32
steps = int(os.environ.get("APP_STEPS", "0"))
tick = float(os.environ.get("APP_TICK", "0.1"))
out = open(out_path, "a", buffering=1)
out.write("info devices=%d current=%s\n" % (torch.cuda.device_count(),
                                             torch.cuda.get_device_properties(0).uuid))
step = 0
while not steps or step < steps:
    step += 1
    x.mul_(0.999).add_(0.001)
    w = torch.tanh(w @ w + 0.01)
    val = float(x[:1000000].double().sum()) + float(w.double().sum())
    out.write("step=%d val=%s pid=%d\n" % (step, val.hex(), os.getpid()))
    time.sleep(tick)
