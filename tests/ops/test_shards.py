"""portable/shards.py on CPU: GradClip's one-pass clip stays one pass on the host too (its per-step host work lands on
the step when the step is launch-bound: the device idles between the backward and the norm)."""

from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile


def test_clip_norm_takes_no_op_per_gradient(portable):
    """clip_grad_norm_local over 300 gradients: no `to` per gradient's norm (they are on the gradients' device
    already; ~300 dispatches a step before), and the total and the scaled gradients as torch's clip_grad_norm_ gives
    them. (CPU runs foreach ops per tensor, so only the `to` calls are counted here.)"""
    sh = portable.shards
    torch.manual_seed(0)
    grads = [torch.randn(n).bfloat16() for n in range(10, 310)]
    ref = [g.clone() for g in grads]
    ref_params = [torch.nn.Parameter(torch.zeros_like(g)) for g in ref]
    for p, g in zip(ref_params, ref):
        p.grad = g
    ref_total = torch.nn.utils.clip_grad_norm_(ref_params, 0.5)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        total = sh.clip_grad_norm_local(grads, 0.5, force_finite=True)
    ops = {e.key: e.count for e in prof.key_averages()}
    assert ops.get("aten::to", 0) < 20, ops
    assert torch.equal(total, ref_total)
    assert all(torch.equal(g, r.grad) for g, r in zip(grads, ref_params))
