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


def test_pending_finite_check_is_settled_before_state_is_read(portable):
    """LateFiniteClip with FusedAdam's fused kernel (forced on, CPU) and a non-finite step left pending after
    zero_grad(set_to_none): FusedAdam.state_dict() and zero_grad(set_to_none=False) settle it first (the step is
    redone from the gradients the check held, which go back to None), and the total reaches the clip's owner at its
    next settle(); the values are those of the check before the step."""
    sh, optim = portable.shards, portable.optim
    torch.manual_seed(0)
    start = [torch.randn(n).bfloat16() for n in (16, 40)]
    grads = [torch.randn(t.shape).bfloat16() for t in start]
    grads[1][3] = float("nan")

    def run(late, settle):
        ps = [torch.nn.Parameter(t.clone()) for t in start]
        opt = optim.FusedAdam(ps, lr=1e-2, weight_decay=0.1, master_weights=True, fused=True)
        for p, g in zip(ps, grads):
            p.grad = g.clone()
        if not late:
            total = sh.clip_grad_norm_local([p.grad for p in ps], 0.5, True)
            opt.step()
            return ps, opt, total
        clip = sh.LateFiniteClip()
        assert clip.clip([p.grad for p in ps], 0.5, opt, params=ps) is not None
        opt.step()
        before = [p.detach().clone() for p in ps]
        if settle == "state_dict":
            opt.zero_grad(set_to_none=True)
            assert all(torch.equal(a, b) for a, b in zip(ps, start))  # skipped: nothing written yet
            opt.state_dict()
        else:
            opt.zero_grad(set_to_none=False)  # zeroing in place would leave nothing to redo from: settled first
        assert sh.unsettled_skip() is None and not all(torch.equal(a, b) for a, b in zip(ps, before))
        assert all(p.grad is None for p in ps) if settle == "state_dict" else all(not p.grad.any() for p in ps)
        return ps, opt, clip.settle()  # the owner's settle gets the total

    ref_ps, ref_opt, ref_total = run(False, None)
    for settle in ("state_dict", "zero_grad"):
        ps, opt, total = run(True, settle)
        assert torch.equal(total, ref_total), settle
        assert all(torch.equal(a, b) for a, b in zip(ps, ref_ps)), settle
        assert all(torch.equal(opt._masters[a], ref_opt._masters[b]) for a, b in zip(ps, ref_ps)), settle
