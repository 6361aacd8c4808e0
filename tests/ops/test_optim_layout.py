"""FusedAdam keeps each parameter's local shard, moments and master between steps (portable/optim.py _layout): the
steady step looks nothing up, every event that changes what a lookup would find makes it look again, and a step
from the kept layout is bitwise the step of a fresh lookup (FusedAdam.keep_entries=False) through all of them."""

from __future__ import annotations

import pytest
import torch


def _params():
    torch.manual_seed(0)
    return [
        torch.nn.Parameter(torch.randn(33, 17).bfloat16()),
        torch.nn.Parameter(torch.randn(17).bfloat16()),
        torch.nn.Parameter(torch.randn(8, 4, 3)),  # fp32: updated in place, no master
        torch.nn.Parameter(torch.randn(40).bfloat16()),
    ]


def _grads(params, step):
    g = torch.Generator().manual_seed(1000 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g).to(p.dtype) * 1e-2


def _builds(portable):
    return portable.optim.STATS["entry_builds"]


def test_steady_steps_look_nothing_up(portable):
    params = _params()
    opt = portable.optim.FusedAdam(params, lr=1e-3, master_weights=True)
    before = _builds(portable)
    for step in range(5):
        _grads(params, step)
        opt.step()
        opt.zero_grad(set_to_none=True)
    assert _builds(portable) - before == 1  # the first step only, though every step brought new gradient tensors


@pytest.mark.parametrize("event", ["grad_none", "new_storage", "reset_masters", "load_state", "grad_dtype"])
def test_each_change_looks_the_parameters_up_again(portable, event):
    params = _params()
    opt = portable.optim.FusedAdam(params, lr=1e-3, master_weights=True)
    _grads(params, 0)
    opt.step()
    before = _builds(portable)
    _grads(params, 1)
    if event == "grad_none":
        params[1].grad = None
    elif event == "new_storage":
        params[3].data = params[3].data.clone()
    elif event == "reset_masters":
        opt.reset_master_weights()
    elif event == "load_state":
        opt.load_state_dict(opt.state_dict())
    elif event == "grad_dtype":
        params[2].grad = params[2].grad.double().float()  # same dtype: no look-up
        opt.step()
        assert _builds(portable) == before
        if hasattr(params[0], "grad_dtype"):  # torch >= 2.10 asks for this before a gradient of another dtype
            params[0].grad_dtype = None
        params[0].grad = params[0].grad.float()  # an fp32 gradient for a bf16 parameter
    opt.step()
    assert _builds(portable) == before + 1


@pytest.mark.parametrize("fused", [False, True])
def test_kept_layout_steps_as_a_fresh_lookup(portable, fused):
    """Two optimizers on equal parameters, one keeping its layout and one looking up at every step, through the
    same events: bitwise the same parameters, masters and moments after every step."""
    kept_p, fresh_p = _params(), _params()
    kept = portable.optim.FusedAdam(kept_p, lr=1e-3, weight_decay=0.1, master_weights=True, fused=fused)
    fresh = portable.optim.FusedAdam(fresh_p, lr=1e-3, weight_decay=0.1, master_weights=True, fused=fused)
    fresh.keep_entries = False

    def event(step, params, opt):
        if step == 3:
            params[1].grad = None  # one parameter without a gradient for a step
        elif step == 4:
            params[0].data = params[0].data.clone()  # a new storage, same shape: the master is kept
        elif step == 5:
            params[2].data = params[2].data * 0.5  # fp32, updated in place: the step must follow the new storage
        elif step == 6:
            opt.reset_master_weights()
        elif step == 7:
            opt.load_state_dict(opt.state_dict())
        elif step == 8:
            extra = torch.nn.Parameter(torch.ones(5, dtype=torch.bfloat16))
            extra.grad = torch.full((5,), 0.5, dtype=torch.bfloat16)
            params.append(extra)
            opt.add_param_group({"params": [extra], "lr": 1e-2})

    for step in range(10):
        for params, opt in ((kept_p, kept), (fresh_p, fresh)):
            _grads(params, step)
            event(step, params, opt)
            opt.step()
        for a, b in zip(kept_p, fresh_p):
            assert torch.equal(a, b), step
            sa, sb = kept.state[a], fresh.state[b]
            for name in ("exp_avg", "exp_avg_sq"):
                assert (name in sa) == (name in sb) and (name not in sa or torch.equal(sa[name], sb[name])), step
            ma, mb = kept._masters.get(a), fresh._masters.get(b)
            assert (ma is None) == (mb is None) and (ma is None or torch.equal(ma, mb)), step


def test_kernel_sets_are_kept_and_the_rest_take_the_other_path(portable, monkeypatch):
    """The sets the one-launch kernel gets (portable/adamw_kernel.py, CUDA only: here a recorder stands in for it):
    bf16 parameters with masters in one set (work = masters, parameters written), fp32 parameters in another
    (no parameters to write), bf16 without a master never; the same list objects at the next step, with that
    step's gradients. A set the kernel takes is left to it; the others take torch's kernel."""
    calls = []

    def recorder(work, grads, exp_avgs, exp_avg_sqs, params=None, **kw):
        calls.append((work, grads, exp_avgs, exp_avg_sqs, params))
        return work[0].dtype == torch.float32 and params is not None  # takes the masters' set only

    monkeypatch.setattr(portable.adamw_kernel, "step_", recorder)
    params = _params()
    opt = portable.optim.FusedAdam(params, lr=1e-3, master_weights=True, fused=True)
    for step in range(2):
        _grads(params, step)
        before = [p.detach().clone() for p in params]
        opt.step()
        masters_set, fp32_set = calls[-2:] if calls[-2][4] is not None else calls[-2:][::-1]
        assert [id(t) for t in masters_set[0]] == [id(opt._masters[p]) for p in (params[0], params[1], params[3])]
        assert [id(t) for t in masters_set[4]] == [id(p) for p in (params[0], params[1], params[3])]
        assert [id(t) for t in masters_set[1]] == [id(p.grad) for p in (params[0], params[1], params[3])]
        assert fp32_set[4] is None and [id(t) for t in fp32_set[0]] == [id(params[2])]
        # the masters' set was "taken" by the recorder (nothing written); the fp32 parameter took torch's kernel
        assert all(torch.equal(params[i], before[i]) for i in (0, 1, 3)) and not torch.equal(params[2], before[2])
    assert len(calls) == 4
    assert calls[0][0] is calls[2][0] or calls[0][0] is calls[3][0]  # the kept lists, not rebuilt


def test_parameters_without_a_storage_pointer_are_looked_up_every_step(portable, monkeypatch):
    """A parameter whose data_ptr() raises (tensor subclasses, fake tensors) cannot be keyed by storage: the layout
    is then built at every step, and the step is the same."""
    kept_p, fresh_p = _params(), _params()
    kept = portable.optim.FusedAdam(kept_p, lr=1e-3, master_weights=True)
    fresh = portable.optim.FusedAdam(fresh_p, lr=1e-3, master_weights=True)
    real = torch.Tensor.data_ptr

    def no_pointer(t):
        if any(t is p for p in kept_p):
            raise RuntimeError("Cannot access data pointer of Tensor that doesn't have storage")
        return real(t)

    monkeypatch.setattr(torch.Tensor, "data_ptr", no_pointer)
    before = _builds(portable)
    for step in range(3):
        _grads(kept_p, step)
        kept.step()
    assert _builds(portable) - before == 3
    monkeypatch.setattr(torch.Tensor, "data_ptr", real)
    for step in range(3):
        _grads(fresh_p, step)
        fresh.step()
    assert all(torch.equal(a, b) for a, b in zip(kept_p, fresh_p))
