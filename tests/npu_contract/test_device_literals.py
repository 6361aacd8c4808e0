"""The upstream code on paths NPU training reaches (validation, sample drawing, EMA, checkpointing) goes through
the device layer, not the literal "cuda" (patches 0024-0028). Exercised on CPU in the applied tree, in a subprocess
(the tree's packages import megatron and friends): EMA's cache() as ema_scope uses it, collate_batches over a
one-rank gloo group, and the draw-sample callback's noise generator."""

from __future__ import annotations

import os
import re
import subprocess
import sys

FILES = ("imaginaire/utils/ema.py", "cosmos_predict2/utils/dtensor_helper.py", "imaginaire/utils/distributed.py",
         "cosmos_predict2/callbacks/every_n_draw_sample.py", "cosmos_predict2/checkpointer.py")

SCRIPT = r'''
import os, torch, torch.distributed as dist
from imaginaire.utils.ema import FastEmaModelUpdater
from imaginaire.utils import distributed
from cosmos_predict2.portable import device

assert device.DEVICE_TYPE == "cpu"
net = torch.nn.Linear(4, 4)
ema = FastEmaModelUpdater()
ema.cache(net.parameters())  # what ema_scope does before validation / sample drawing
assert all(p.device.type == "cpu" for p in ema.collected_params)
ema.restore(net.parameters())
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:%s" % os.environ["PORT"], rank=0, world_size=1)
out = distributed.collate_batches([torch.ones(2, 3), torch.zeros(1, 3)])
assert out.shape == (3, 3), out.shape
dist.destroy_process_group()
import cosmos_predict2.callbacks.every_n_draw_sample as draw
src = open(draw.__file__).read()
assert "torch.Generator(device=portable_device.get_device())" in src
g = torch.Generator(device=device.get_device()); g.manual_seed(0)
print("OK")
'''


def test_no_cuda_literal_left_in_npu_reachable_files(applied_tree):
    for rel in FILES:
        text = (applied_tree / rel).read_text()
        assert not re.search(r"""["']cuda["']""", text), rel
        assert "torch.cuda.empty_cache" not in text, rel


def test_ema_cache_and_collate_run_on_cpu(applied_tree):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "COSMOS_DEVICE": "cpu", "PORT": str(port), "PYTHONPATH": str(applied_tree)}
    r = subprocess.run([sys.executable, "-c", SCRIPT], cwd=applied_tree, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout[-2000:] + r.stderr[-3000:]
