"""Portable FusedAdam (AdamW with fp32 masters) against torch.optim on CPU (fresh random params/grads)."""

from __future__ import annotations

import copy
import io

import pytest
import torch

from _dist_helpers import run_ranks


def make_params(dtype=torch.float32, scale=1.0):
    shapes = [(33, 17), (17,), (8, 4, 3)]
    return [torch.nn.Parameter((torch.randn(s) * scale).to(dtype)) for s in shapes]


def groups(params, lr=1e-2, wd=0.1):
    # two groups, as a config may pass (different lr / weight decay)
    return [
        {"params": params[:2], "lr": lr, "weight_decay": wd},
        {"params": params[2:], "lr": lr * 3, "weight_decay": 0.0},
    ]


def test_fp32_matches_torch_adamw(portable):
    ours_p = make_params()
    ref_p = [torch.nn.Parameter(p.detach().clone()) for p in ours_p]
    start = [p.detach().clone() for p in ours_p]
    ours = portable.optim.FusedAdam(groups(ours_p), betas=[0.9, 0.99], eps=1e-8, master_weights=True, capturable=True)
    ref = torch.optim.AdamW(groups(ref_p), betas=(0.9, 0.99), eps=1e-8)
    for _ in range(20):
        for a, b in zip(ours_p, ref_p):
            g = torch.randn_like(a)
            a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    diff = max((a - b).abs().max().item() for a, b in zip(ours_p, ref_p))
    moved = max((a - p0).abs().max().item() for a, p0 in zip(ours_p, start))  # sanity: params moved
    assert diff <= 1e-6, diff
    assert moved > 1e-3


def test_l2_mode_matches_torch_adam(portable):
    ours_p = make_params()
    ref_p = [torch.nn.Parameter(p.detach().clone()) for p in ours_p]
    ours = portable.optim.FusedAdam(ours_p, lr=1e-2, weight_decay=0.05, adam_w_mode=False, betas=(0.9, 0.99))
    ref = torch.optim.Adam(ref_p, lr=1e-2, weight_decay=0.05, betas=(0.9, 0.99))
    for _ in range(10):
        for a, b in zip(ours_p, ref_p):
            g = torch.randn_like(a)
            a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    assert max((a - b).abs().max().item() for a, b in zip(ours_p, ref_p)) <= 1e-6


def test_bf16_small_updates_are_kept_by_masters(portable):
    """lr 4.3e-5 on weights ~0.02: below half a bf16 ulp per step, so plain AdamW on bf16 loses every update."""
    lr, steps = 4.3e-5, 50
    # |w| in [0.017, 0.029]: one bf16 binade, ulp 2^-13 = 1.2e-4, so a 4.3e-5 step is below half an ulp
    w0 = torch.sign(torch.randn(4096)) * (0.017 + 0.012 * torch.rand(4096))
    ours_p = torch.nn.Parameter(w0.bfloat16())
    plain_p = torch.nn.Parameter(w0.bfloat16())
    fp32_p = torch.nn.Parameter(w0.bfloat16().float())  # the fp32 trajectory from the same start
    ours = portable.optim.FusedAdam([ours_p], lr=lr, betas=(0.9, 0.99), weight_decay=0.1, master_weights=True,
                                    capturable=True)
    plain = torch.optim.AdamW([plain_p], lr=lr, betas=(0.9, 0.99), weight_decay=0.1)
    ref = torch.optim.AdamW([fp32_p], lr=lr, betas=(0.9, 0.99), weight_decay=0.1)
    for _ in range(steps):
        g = torch.randn(4096).bfloat16()
        ours_p.grad, plain_p.grad, fp32_p.grad = g.clone(), g.clone(), g.float()
        ours.step()
        plain.step()
        ref.step()
    start = w0.bfloat16()
    changed_plain = (plain_p.detach() != start).float().mean().item()
    changed_ours = (ours_p.detach() != start).float().mean().item()
    print(f"changed: plain AdamW on bf16 {changed_plain:.1%}, FusedAdam with masters {changed_ours:.1%}")
    assert changed_plain < 0.02, changed_plain
    assert changed_ours > 0.5, changed_ours
    # ours is the fp32 trajectory rounded once to bf16
    same = (ours_p.detach() == fp32_p.detach().bfloat16()).float().mean().item()
    assert same > 0.99, same
    assert ours.state[ours_p]["exp_avg"].dtype == torch.float32


def test_bf16_without_masters_updates_in_place(portable):
    p = torch.nn.Parameter(torch.randn(64).bfloat16())
    opt = portable.optim.FusedAdam([p], lr=1e-1, master_weights=False)
    before = p.detach().clone()
    p.grad = torch.randn(64).bfloat16()
    opt.step()
    assert p.dtype == torch.bfloat16 and not torch.equal(p.detach(), before)
    assert opt._masters == {}


def _run(opt, params, grads):
    for g_list in grads:
        for p, g in zip(params, g_list):
            p.grad = g.clone()
        opt.step()


def test_state_dict_round_trip(portable):
    FusedAdam = portable.optim.FusedAdam
    params = make_params(torch.bfloat16, 0.02)
    opt = FusedAdam(groups(params, lr=1e-3), betas=(0.9, 0.99), master_weights=True, capturable=True)
    grads = [[torch.randn_like(p) for p in params] for _ in range(10)]
    _run(opt, params, grads[:5])

    buf = io.BytesIO()
    torch.save({"params": [p.detach() for p in params], "optim": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=False)
    sd = saved["optim"]
    assert all("master" not in k for st in sd["state"].values() for k in st)  # masters are not saved
    assert sd["param_groups"][0]["step"] == 5

    params2 = [torch.nn.Parameter(t.clone()) for t in saved["params"]]
    opt2 = FusedAdam(groups(params2, lr=1e-3), betas=(0.9, 0.99), master_weights=True, capturable=True)
    opt2.load_state_dict(sd)
    for p in params2:
        assert opt2.state[p]["exp_avg"].dtype == torch.float32  # not rounded to the bf16 param dtype
    _run(opt, params, grads[5:])
    _run(opt2, params2, grads[5:])
    # the resumed run rebuilt masters from bf16 params, the original kept fp32 masters: within one bf16 rounding
    for a, b in zip(params, params2):
        torch.testing.assert_close(a.detach().float(), b.detach().float(), atol=2e-4, rtol=1e-2)
    for a, b in zip(params, params2):
        torch.testing.assert_close(opt.state[a]["exp_avg"], opt2.state[b]["exp_avg"])


def test_loads_upstream_style_tensor_lr_and_step(portable):
    params = make_params()
    opt = portable.optim.FusedAdam(params, lr=1e-3, capturable=True, master_weights=True)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    sd = copy.deepcopy(opt.state_dict())
    sd["param_groups"][0]["lr"] = torch.tensor(5e-4)
    sd["param_groups"][0]["step"] = torch.tensor([7], dtype=torch.int32)
    opt.load_state_dict(sd)
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-4) and opt.param_groups[0]["step"] == 7
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 0.5)
    opt.step()
    assert opt.param_groups[0]["step"] == 8
    sched.step()
    assert isinstance(opt.param_groups[0]["lr"], float)


def test_param_groups_master_for_low_precision_callback(portable):
    """imaginaire's LowPrecisionCallback copies param_groups_master into the params after each step."""
    params = make_params(torch.bfloat16, 0.02) + [torch.nn.Parameter(torch.randn(5))]
    opt = portable.optim.FusedAdam(params, lr=1e-4, master_weights=True, capturable=True)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    masters = opt.param_groups_master
    assert len(masters) == 1 and len(masters[0]["params"]) == len(params)
    for p, m in zip(params, masters[0]["params"]):
        assert m.shape == p.shape
        assert (m.dtype == torch.float32) and (m is not p or p.dtype == torch.float32)
    before = [p.detach().clone() for p in params]
    torch._foreach_copy_([p.data for p in params], [m.data for m in masters[0]["params"]])  # the callback's copy
    for a, b in zip(params, before):
        assert torch.equal(a.detach(), b)  # step() already wrote the masters back: the copy changes nothing


def test_constructor_errors(portable):
    with pytest.raises(RuntimeError, match="amsgrad"):
        portable.optim.FusedAdam(make_params(), amsgrad=True)


def _fsdp_worker(rank, world):
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    from portable_loader import load_portable

    pkg = load_portable("cosmos_portable_fsdp_worker")
    torch.manual_seed(1234)  # same init and grads on every rank
    lr, steps = 4.3e-5, 20
    model = torch.nn.Sequential(torch.nn.Linear(32, 64, bias=False), torch.nn.Linear(64, 16, bias=False))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.2)
    full0 = {n: p.detach().clone().bfloat16() for n, p in model.named_parameters()}
    model = model.bfloat16()
    mesh = init_device_mesh("cpu", (world,))
    for layer in model:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt = pkg.optim.FusedAdam(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.1,
                              master_weights=True, capturable=True)
    ref_params = {n: torch.nn.Parameter(t.float()) for n, t in full0.items()}
    ref = torch.optim.AdamW(list(ref_params.values()), lr=lr, betas=(0.9, 0.99), weight_decay=0.1)
    for _ in range(steps):
        for n, p in model.named_parameters():
            g = torch.randn(p.shape).bfloat16()
            assert isinstance(p, DTensor)
            p.grad = DTensor.from_local(g.chunk(world, dim=0)[rank].clone(), mesh, p.placements)
            ref_params[n].grad = g.float()
        opt.step()
        ref.step()
    for n, p in model.named_parameters():
        master = opt._masters[p]
        assert master.shape == p.to_local().shape and master.dtype == torch.float32  # local-shard master
        assert isinstance(opt.state[p]["exp_avg"], DTensor)
        full = p.full_tensor()
        same = (full == ref_params[n].detach().bfloat16()).float().mean().item()
        assert same > 0.99, (n, same)
        assert (full != full0[n]).float().mean().item() > 0.5
    osd = get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        shapes = sorted(tuple(st["exp_avg"].shape) for st in osd["state"].values())
        assert shapes == [(16, 64), (64, 32)], shapes
    dist.barrier()


def test_fsdp2_dtensor_masters_two_ranks(portable):
    run_ranks(_fsdp_worker, 2)


@pytest.mark.parametrize("adam_w_mode", [True, False])
def test_fused_kernel_matches_the_foreach_update(portable, adam_w_mode):
    """fused=True (torch's fused Adam(W) kernel; COSMOS_FUSED_ADAM=1 on CUDA): bf16 params with fp32 masters, two
    groups (one with weight decay), 15 steps: masters, moments and params as the foreach path's to fp32 rounding,
    and not trivially (the params moved)."""
    torch.manual_seed(3)
    base = make_params(torch.bfloat16, scale=0.5)
    runs = {}
    for fused in (False, True):
        ps = [torch.nn.Parameter(p.detach().clone()) for p in base]
        opt = portable.optim.FusedAdam(groups(ps), betas=(0.9, 0.99), eps=1e-8, master_weights=True,
                                       adam_w_mode=adam_w_mode, fused=fused)
        g = torch.Generator().manual_seed(7)
        for _ in range(15):
            for p in ps:
                p.grad = torch.randn(p.shape, generator=g).to(torch.bfloat16)
            opt.step()
        runs[fused] = (ps, opt)
    (p0, o0), (p1, o1) = runs[False], runs[True]
    assert o1.fused is True and o0.fused is False
    for a, b in zip(p0, p1):
        m0, m1 = o0._masters[a], o1._masters[b]
        assert torch.allclose(m1, m0, rtol=1e-6, atol=1e-7), (m1 - m0).abs().max()
        for k in ("exp_avg", "exp_avg_sq"):
            assert torch.allclose(o1.state[b][k], o0.state[a][k], rtol=1e-6, atol=1e-9), k
        assert (b.float() - m1.to(torch.bfloat16).float()).abs().max() == 0  # params are the rounded masters
    assert max((a.float() - s.float()).abs().max().item() for a, s in zip(p1, base)) > 1e-2


def test_fused_follows_cosmos_fused_adam_on_cuda_only(portable, monkeypatch):
    """fused=None reads COSMOS_FUSED_ADAM (the device layer's boolean parser; unset means on) and applies it on CUDA
    only: on CPU the foreach path runs whatever the variable says; a bad value is a one-line error."""
    ps = make_params()
    monkeypatch.delenv("COSMOS_FUSED_ADAM", raising=False)
    assert portable.optim.FusedAdam(ps, lr=1e-2)._fused_env is True  # the default on CUDA
    monkeypatch.setenv("COSMOS_FUSED_ADAM", "0")
    assert portable.optim.FusedAdam(ps, lr=1e-2)._fused_env is False
    monkeypatch.setenv("COSMOS_FUSED_ADAM", "1")
    opt = portable.optim.FusedAdam(ps, lr=1e-2)
    calls = []
    monkeypatch.setattr(torch, "_fused_adamw_", lambda *a, **k: calls.append(1))
    for p in ps:
        p.grad = torch.randn_like(p)
    opt.step()
    assert opt.fused is None and opt._fused_env is True and calls == []  # CPU: not fused
    monkeypatch.setenv("COSMOS_FUSED_ADAM", "maybe")
    with pytest.raises(ValueError, match="COSMOS_FUSED_ADAM='maybe' is not a boolean"):
        portable.optim.FusedAdam(ps, lr=1e-2)


def test_buckets_bound_the_fp32_copies_and_keep_the_update(portable, monkeypatch):
    """Parameters go into buckets of at most upcast.BUCKET_NUMEL elements in order (one parameter larger than the bound
    gets a bucket of its own); the update is the same as in one bucket."""
    shapes = [(6,), (5,), (12,), (3,), (4,), (2,)]
    torch.manual_seed(0)
    start = [torch.randn(s) for s in shapes]
    grads = [[torch.randn(s) for s in shapes] for _ in range(3)]

    def run(bound):
        monkeypatch.setattr(portable.upcast, "BUCKET_NUMEL", bound)
        ps = [torch.nn.Parameter(t.clone()) for t in start]
        opt = portable.optim.FusedAdam(ps, lr=1e-2, weight_decay=0.1)
        seen = []
        real = opt._update
        monkeypatch.setattr(opt, "_update", lambda bucket, *a, **k: (seen.append([e[0].numel() for e in bucket]),
                                                                      real(bucket, *a, **k))[1])
        for gs in grads:
            for p, g in zip(ps, gs):
                p.grad = g.clone()
            opt.step()
        return ps, seen[: len(seen) // len(grads)]

    small, buckets = run(10)
    assert buckets == [[6], [5], [12], [3, 4, 2]]
    big, one = run(1 << 26)
    assert one == [[6, 5, 12, 3, 4, 2]]
    assert all(torch.equal(a, b) for a, b in zip(small, big))



def test_fused_step_count_is_one_tensor_per_step_not_per_bucket(portable, monkeypatch):
    """The fused kernel's step count is one 0-dim tensor per device and step, shared by all buckets (the kernel only
    reads it): 4 buckets, one `full` op per step, and the same update as in one bucket."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class _Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    shapes = [(6,), (5,), (12,), (3,), (4,), (2,)]
    torch.manual_seed(1)
    start = [torch.randn(s).to(torch.bfloat16) for s in shapes]
    grads = [torch.randn(s).to(torch.bfloat16) for s in shapes]

    def run(bound):
        monkeypatch.setattr(portable.upcast, "BUCKET_NUMEL", bound)
        ps = [torch.nn.Parameter(t.clone()) for t in start]
        opt = portable.optim.FusedAdam(ps, lr=1e-2, weight_decay=0.1, master_weights=True, fused=True)
        for p, g in zip(ps, grads):
            p.grad = g.clone()
        opt.step()  # masters and moments made
        with _Count() as rec:
            opt.step()
        return ps, rec.ops

    small, ops = run(10)
    assert ops.count("_fused_adamw_") == 4 and ops.count("full") == 1, ops
    big, _ = run(1 << 26)
    assert all(torch.equal(a, b) for a, b in zip(small, big))


def _state_of(opt, ps):
    return ([p.detach().clone() for p in ps], [opt._masters[p].clone() for p in ps],
            [opt.state[p]["exp_avg"].clone() for p in ps], [opt.state[p]["exp_avg_sq"].clone() for p in ps],
            [g["step"] for g in opt.param_groups])


def _same(a, b):
    tensors = lambda s: [t for part in s[:4] for t in part]
    return all(torch.equal(x, y) for x, y in zip(tensors(a), tensors(b))) and a[4] == b[4]


def test_skip_flag_leaves_the_step_undone_and_redo_is_the_step_at_its_lr(portable):
    """skip_next_step_if (the fused kernel's found_inf): a flag of 1 leaves parameters, masters, moments and the
    step count of the flagged step as a step never taken; redo_skipped_step then is that step bitwise, at the
    learning rate it had even when a scheduler moved it since. A flag of 0 is an ordinary step."""
    torch.manual_seed(3)
    start = [t.to(torch.bfloat16) for t in (torch.randn(33, 17), torch.randn(17), torch.randn(8, 4, 3))]
    grads = [[torch.randn(t.shape).to(torch.bfloat16) for t in start] for _ in range(3)]

    def run(flags):
        ps = [torch.nn.Parameter(t.clone()) for t in start]
        opt = portable.optim.FusedAdam(groups(ps), betas=(0.9, 0.99), master_weights=True, fused=True)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 / (1 + i))
        for g_step, flag in zip(grads, flags):
            for p, g in zip(ps, g_step):
                p.grad = g.clone()
            if flag is not None:
                assert opt.can_skip_on_device(ps[0].device)
                opt.skip_next_step_if(torch.tensor(float(flag)))
            before = _state_of(opt, ps) if opt.state else None
            opt.step()
            sched.step()
            if flag == 1:
                if before is not None:  # nothing written by the flagged step
                    assert _same(_state_of(opt, ps)[:4] + (before[4],), before)
                opt.redo_skipped_step()
        return _state_of(opt, ps)

    plain = run([None, None, None])
    assert _same(run([0, 0, 0]), plain)
    assert _same(run([None, 1, None]), plain)  # the second step flagged, redone after the scheduler's step
    assert _same(run([1, 1, 1]), plain)  # the first step too (masters and moments made by the flagged step)
    assert plain[4] == [3, 3]


def test_skip_flag_needs_the_fused_kernel(portable):
    """The foreach path cannot read a device flag: can_skip_on_device says so, and a flag given anyway is an error,
    not a step silently taken."""
    ps = make_params(torch.bfloat16)
    opt = portable.optim.FusedAdam(ps, master_weights=True, fused=False)
    assert not opt.can_skip_on_device(ps[0].device)
    assert not portable.optim.FusedAdam(ps, bias_correction=False, fused=True).can_skip_on_device(ps[0].device)
    for p in ps:
        p.grad = torch.ones_like(p)
    opt.skip_next_step_if(torch.tensor(1.0))
    with pytest.raises(portable.user_error.UserRuntimeError, match="can_skip_on_device"):
        opt.step()
