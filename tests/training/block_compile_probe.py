"""Probe for test_block_compile.py, run in the applied tree on CPU: portable/block_compile.py on the tiny Text2Image
DiT (4 blocks, fp32) with torch.compile's "aot_eager" backend (dynamo + AOT autograd, no code generation: the
same tracing as on CUDA, without inductor's compile time). Prints one JSON line."""

from __future__ import annotations

import copy
import io
import json
import sys
from contextlib import redirect_stdout

import torch
from torch._dynamo.utils import counters

from cosmos_predict2.configs.base.config_text2image import _PREDICT2_TEXT2IMAGE_NET_2B as NET
from cosmos_predict2.conditioner import DataType
from cosmos_predict2.portable import block_compile
from imaginaire.lazy_config import instantiate

_compile = torch.compile


def aot_eager(fn, **kw):
    return _compile(fn, **{**kw, "backend": "aot_eager"})


def net_for(sac: str):
    cfg = copy.deepcopy(NET)
    cfg.sac_config.mode = sac
    cfg.model_channels, cfg.num_blocks, cfg.num_heads = 64, 4, 4
    torch.manual_seed(0)
    return instantiate(cfg).float().train()


g = torch.Generator().manual_seed(1)
x = torch.randn(1, 16, 1, 4, 8, generator=g)
kw = dict(timesteps_B_T=torch.rand(1, 1, generator=g), crossattn_emb=torch.randn(1, 8, 1024, generator=g),
          fps=torch.tensor([16.0]), padding_mask=torch.zeros(1, 1, 32, 64), data_type=DataType.IMAGE)
target = torch.randn(1, 16, 1, 4, 8, generator=g)


def step(net):
    net.zero_grad(set_to_none=True)
    loss = (net(x, **kw) - target).pow(2).mean()
    loss.backward()
    return float(loss), {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


def rel(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max() / (a[k].abs().max() + 1e-12)) for k in a)


out = {}
for sac in ("none", "mm_only"):
    net = net_for(sac)
    keys = list(net.state_dict())
    loss0, g0 = step(net)
    counters.clear()
    n = block_compile.compile_blocks(net.blocks, force=True, backend="aot_eager")
    loss1, g1 = step(net)
    loss2, _ = step(net)
    net.affline_emb = net.crossattn_emb = net.affline_scale_log_info = None  # non-leaf logging tensors of forward
    twin = copy.deepcopy(net)
    out[sac] = dict(compiled=n, all_compiled=all(block_compile.is_compiled(b) for b in net.blocks),
                    graphs=int(counters["stats"].get("unique_graphs", 0)), graph_breaks=sum(counters["graph_break"].values()),
                    loss_eager=loss0, loss_compiled=loss1, loss_again=loss2, grad_rel=rel(g0, g1),
                    same_keys=list(net.state_dict()) == keys, block_type=type(net.blocks[0]).__name__,
                    deepcopy_rebound=all(b.forward.block is b for b in twin.blocks))

# the gate: requested on CPU -> nothing compiled; and the constructor hook (patch dit-blocks-compiled-on-request)
import os  # noqa: E402

os.environ[block_compile.ENV] = "1"
out["cpu_gate"] = dict(enabled=block_compile.enabled(), compiled=block_compile.compile_blocks(net_for("none").blocks))
block_compile.enabled = lambda: True  # as on CUDA
torch.compile = aot_eager
hooked = net_for("none")
out["constructor_hook"] = all(block_compile.is_compiled(b) for b in hooked.blocks)
torch.compile = _compile

# compile failure: one warning, eager blocks, the eager result
def broken(fn, **kw):
    def fail(*a, **k):
        raise RuntimeError("no compiler here")
    return fail


torch.compile = broken
net = net_for("none")
ref, _ = step(net_for("none"))
block_compile.compile_blocks(net.blocks, force=True)
buf = io.StringIO()
with redirect_stdout(buf):
    fl1, _ = step(net)
    fl2, _ = step(net)
torch.compile = _compile
out["fallback"] = dict(loss=fl1, loss_again=fl2, ref=ref, warnings=buf.getvalue().count("warning: torch.compile"),
                       message=buf.getvalue().strip().splitlines()[:1],
                       compiled=any(block_compile.is_compiled(b) for b in net.blocks))
print(json.dumps(out), file=sys.stdout)
