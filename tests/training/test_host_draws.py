"""Host draws of a training step moved to the device through portable.device.host_to_device (patches
conditioner-dropout-mask-without-sync, training-sigma-without-sync): the same values, dtypes and generator use as
upstream's pageable copies, in the patched tree on CPU: TextAttr's per-sample dropout mask, BooleanFlag's flag and the
Text2Image scheduler's training sigma. That the copy waits for nothing on a GPU is
tests/ops/test_cuda.py::test_cuda_host_values_move_without_a_stream_sync."""

from __future__ import annotations

import subprocess
import sys

from .trainer_runs import cpu_env

DRIVE = r"""
import torch
from cosmos_predict2.conditioner import BooleanFlag, TextAttr
from cosmos_predict2.functional.batch_ops import batch_mul

x = torch.randn(64, 7, 5, dtype=torch.bfloat16)
text = TextAttr(input_key=["t5_text_embeddings"], dropout_rate=0.5)
torch.manual_seed(3)
ours = [text.random_dropout_input(x) for _ in range(3)]
after_ours = torch.rand(4)
torch.manual_seed(3)
upstream = [batch_mul(torch.bernoulli(0.5 * torch.ones(x.shape[0])).type_as(x), x) for _ in range(3)]
after_upstream = torch.rand(4)
assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(ours, upstream))
assert 0 < sum(int((o == 0).all(dim=(1, 2)).sum()) for o in ours) < 3 * 64  # some samples dropped, not all
assert torch.equal(after_ours, after_upstream)  # the generator advanced alike
flag = BooleanFlag(input_key="x", dropout_rate=0.3)
torch.manual_seed(5)
flags = [(flag.random_dropout_input(x), flag.flag)[1] for _ in range(20)]
torch.manual_seed(5)
want = [torch.bernoulli(0.7 * torch.ones(1)).bool() for _ in range(20)]
assert all(f.dtype == torch.bool and torch.equal(f, w) for f, w in zip(flags, want))

import numpy as np
from statistics import NormalDist
from cosmos_predict2.schedulers.rectified_flow_scheduler import RectifiedFlowAB2Scheduler
sched = RectifiedFlowAB2Scheduler()
np.random.seed(7)
ours = [sched.sample_sigma(3) for _ in range(4)]
np.random.seed(7)
upstream = [torch.exp(torch.tensor([NormalDist().inv_cdf(c) for c in np.random.uniform(size=3)])) for _ in range(4)]
assert all(a.dtype == b.dtype == torch.float32 and torch.equal(a, b) for a, b in zip(ours, upstream))
print("ok")
"""


def test_host_draws_are_upstreams_values(smoke_tree):
    r = subprocess.run([sys.executable, "-c", DRIVE], cwd=smoke_tree, env=cpu_env(smoke_tree), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and "ok" in r.stdout, (r.stdout + r.stderr)[-3000:]
