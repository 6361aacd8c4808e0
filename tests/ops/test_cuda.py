"""CUDA paths of the portable ops (skipped without a GPU). Also runnable without pytest:
`python tests/ops/test_cuda.py [NAME_PART...]` (the GPU image may lack pytest). Fresh random inputs, float64 references."""

from __future__ import annotations

import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_attention import ref_attention  # noqa: E402
from test_rope import cosmos_like_freqs, ref_rope, anchor_rope_bf16  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEV = "cuda"


def _env(name, value):
    class _Ctx:
        def __enter__(self):
            self.old = os.environ.get(name)
            os.environ[name] = value

        def __exit__(self, *exc):
            if self.old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = self.old

    return _Ctx()


def test_cuda_device_layer(cuda_portable):
    dev = cuda_portable.device
    assert dev.DEVICE_TYPE == "cuda" and dev.dist_backend() == "nccl"
    assert dev.get_device().type == "cuda"
    s = dev.new_stream()
    x = torch.randn(1 << 20, device=DEV)
    with dev.stream(s):
        y = x * 2
    dev.wait_stream(s)
    torch.testing.assert_close(y, x * 2)
    assert dev.memory_stats()["allocated"] > 0


def test_cuda_attention_auto_and_forced(cuda_portable):
    att = cuda_portable.attention
    cc = torch.cuda.get_device_capability()
    for dtype, tol in ((torch.bfloat16, 2e-2), (torch.float16, 4e-3), (torch.float32, 1e-4)):
        q, k, v = (torch.randn(2, 300, 4, 128, device=DEV, dtype=dtype) for _ in range(3))
        p = att.AttnParams(1 / math.sqrt(128), False, 0.0, False)
        name = att.select_backend(q, k, v, p)
        if dtype == torch.float32:
            assert name == "efficient", name
        elif cc[0] * 10 + cc[1] in (90, 100):
            assert name == "cudnn", name
        else:
            assert name == "flash", name
        ref = ref_attention(q, k, v)
        for causal in (False, True):
            out = att.attention(q, k, v, causal=causal)
            assert out.dtype == dtype
            torch.testing.assert_close(out.double(), ref_attention(q, k, v, causal=causal), atol=tol, rtol=tol)
        for forced in ("cudnn", "flash", "efficient", "math"):
            if dtype == torch.float32 and forced in ("cudnn", "flash"):
                with _env("COSMOS_ATTN_BACKEND", forced), pytest.raises(RuntimeError, match="needs fp16/bf16"):
                    att.attention(q, k, v)
                continue
            with _env("COSMOS_ATTN_BACKEND", forced):
                out = att.attention(q, k, v)
            torch.testing.assert_close(out.double(), ref, atol=tol, rtol=tol)


def test_cuda_attention_backward(cuda_portable):
    q, k, v = (torch.randn(1, 256, 2, 64, device=DEV, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    cuda_portable.attention.attention(q, k, v).float().square().sum().backward()
    qd, kd, vd = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref_attention(qd, kd, vd).square().sum().backward()
    for a, b in ((q, qd), (k, kd), (v, vd)):
        torch.testing.assert_close(a.grad.double(), b.grad, atol=5e-2, rtol=5e-2)


def test_cuda_rope_compiled_te_semantics(cuda_portable):
    rope = cuda_portable.rope
    B, S, H, D = 1, 4080, 16, 128
    t = torch.randn(B, S, H, D, device=DEV).bfloat16()
    freqs = cosmos_like_freqs(S, D).to(DEV)
    out = rope.apply_rotary_pos_emb(t, freqs, tensor_format="bshd", fused=True)
    assert rope._apply_fast.state["compiled"] is not None and not rope._apply_fast.state["failed"]
    expected = ref_rope(t, freqs, "bshd").to(torch.bfloat16)
    mism = (out != expected).float().mean().item()
    anchor = (anchor_rope_bf16(t, freqs) != expected).float().mean().item()
    print(f"rope bf16 mismatch vs fp32-once: ours {mism:.2e}, anchor {anchor:.2e}")
    assert mism < 0.002 and anchor > 0.05
    # gradients through the compiled kernel
    tg = torch.randn(B, 64, H, D, device=DEV, requires_grad=True)
    g = torch.randn_like(tg)
    (rope.apply_rotary_pos_emb(tg, freqs, "bshd") * g).sum().backward()
    td = tg.detach().double().requires_grad_()
    (ref_rope(td, freqs, "bshd") * g.double()).sum().backward()
    torch.testing.assert_close(tg.grad.double(), td.grad, atol=1e-5, rtol=1e-5)


def test_cuda_rmsnorm_compiled(cuda_portable):
    rn = cuda_portable.rmsnorm
    norm = rn.RMSNorm(128, params_dtype=torch.bfloat16, device=DEV)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(128))
    x = torch.randn(1, 4080, 16, 128, device=DEV).bfloat16()
    out = norm(x)
    assert rn._rms_norm_fast.state["compiled"] is not None and not rn._rms_norm_fast.state["failed"]
    ref = (x.double() * torch.rsqrt(x.double().pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight.double())
    assert (out != ref.to(torch.bfloat16)).float().mean().item() < 0.01
    assert out.dtype == torch.bfloat16


def test_cuda_fused_adam_bf16_masters(cuda_portable):
    lr = 4.3e-5
    w0 = torch.sign(torch.randn(1 << 16, device=DEV)) * (0.017 + 0.012 * torch.rand(1 << 16, device=DEV))
    p = torch.nn.Parameter(w0.bfloat16())
    ref_p = torch.nn.Parameter(w0.bfloat16().float())
    opt = cuda_portable.optim.FusedAdam([p], lr=lr, betas=(0.9, 0.99), weight_decay=0.1, master_weights=True,
                                   capturable=True)
    ref = torch.optim.AdamW([ref_p], lr=lr, betas=(0.9, 0.99), weight_decay=0.1)
    for _ in range(50):
        g = torch.randn(1 << 16, device=DEV).bfloat16()
        p.grad, ref_p.grad = g, g.float()
        opt.step()
        ref.step()
    assert (p.detach() != w0.bfloat16()).float().mean().item() > 0.5
    assert (p.detach() == ref_p.detach().bfloat16()).float().mean().item() > 0.99


def test_cuda_fused_kernel_matches_foreach(cuda_portable):
    """fused=True (torch's fused AdamW kernel, COSMOS_FUSED_ADAM=1) on CUDA: masters as the foreach path's to fp32
    rounding after 20 steps of bf16 params with fp32 masters."""
    w0 = 0.02 * torch.randn(3, 1 << 15, device=DEV)
    out = {}
    for fused in (False, True):
        ps = [torch.nn.Parameter(w.bfloat16()) for w in w0]
        opt = cuda_portable.optim.FusedAdam(ps, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1, master_weights=True,
                                            fused=fused)
        g = torch.Generator(device=DEV).manual_seed(5)
        for _ in range(20):
            for p in ps:
                p.grad = torch.randn(p.shape, device=DEV, generator=g).bfloat16()
            opt.step()
        out[fused] = [opt._masters[p] for p in ps]
    for a, b in zip(out[False], out[True]):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7), (a - b).abs().max()
    assert (out[True][0] - w0[0]).abs().max() > 1e-3


def test_cuda_ema_update_overlapped(cuda_portable):
    """The EMA update on a side stream (portable/ema_overlap.py, patch 0049): the same values as in line
    (COSMOS_EMA_OVERLAP=0), and it really runs behind the current stream until wait(): a write to the parameters
    queued after wait() is not seen by a stalled update, one queued without the wait is (the wait is what keeps it
    correct)."""
    eo = cuda_portable.ema_overlap
    n, beta = 1 << 20, 0.999
    ema0 = [torch.randn(n, device=DEV) for _ in range(3)]
    src0 = [torch.randn(n, device=DEV).bfloat16() for _ in range(3)]

    def update(stall):
        ema, src = [e.clone() for e in ema0], [x.clone() for x in src0]
        with eo.side_stream(ema[0].device):
            if stall:
                torch.cuda._sleep(200_000_000)  # ~0.1 s of device time on the side stream before the update
            torch._foreach_mul_(ema, beta)
            torch._foreach_add_(ema, src, alpha=1.0 - beta)
        return ema, src

    with _env("COSMOS_EMA_OVERLAP", "0"):
        inline, _ = update(False)
        assert eo.pending() == 0
    ref = [e.double() * beta + x.double() * (1 - beta) for e, x in zip(ema0, src0)]
    assert all(torch.allclose(a.double(), r, atol=1e-6) for a, r in zip(inline, ref))
    with _env("COSMOS_EMA_OVERLAP", "1"):
        ema, src = update(True)
        assert eo.pending() == 1
        eo.wait()
        torch._foreach_add_(src, 1.0)  # the optimizer's write, after the wait
        torch.cuda.synchronize()
        assert eo.pending() == 0 and all(torch.equal(a, b) for a, b in zip(ema, inline))
        ema, src = update(True)
        torch._foreach_add_(src, 1.0)  # the same write without the wait races ahead of the stalled update
        torch.cuda.synchronize()
        eo.wait()
        assert not torch.equal(ema[0], inline[0])


def test_cuda_upcast_and_ema_update_take_the_multi_tensor_path(cuda_portable):
    """portable/upcast.py on the card: 300 bf16 tensors reach fp32 through a few multi-tensor kernels, not one kernel
    each (the foreach copy converts dtypes in its fast path), and the EMA update built on it equals upstream's
    _foreach_mul_ + _foreach_add_ (which, with bf16 sources, launches a kernel per tensor) to fp32 rounding."""
    from torch.profiler import ProfilerActivity, profile

    up = cuda_portable.upcast
    src = [torch.randn(1000 + 7 * i, device=DEV).bfloat16() for i in range(300)]
    ema = [torch.randn(x.shape, device=DEV) for x in src]
    ref = [e.clone() for e in ema]
    no_kernel = _env("COSMOS_EMA_KERNEL", "0")  # this test is about the copy + lerp path (lerp_kernel: below)
    no_kernel.__enter__()
    up.ema_update_(ema, src, 0.999)  # builds the buffer and its views
    torch._foreach_mul_(ref, 0.999)
    torch._foreach_add_(ref, src, alpha=1.0 - 0.999)
    torch.cuda.synchronize()

    def kernels(fn):
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        return sum(e.count for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA)

    n_up = kernels(lambda: up.upcast(src, "test"))
    n_up = kernels(lambda: up.upcast(src, "test"))  # steady: views cached
    n_ema = kernels(lambda: up.ema_update_(ema, src, 0.999))
    n_ref = kernels(lambda: (torch._foreach_mul_(ref, 0.999), torch._foreach_add_(ref, src, alpha=1.0 - 0.999)))
    assert n_up <= 10 and n_ema <= 20 and n_ref >= 300, (n_up, n_ema, n_ref)
    no_kernel.__exit__()
    assert all(torch.equal(a, x.float()) for a, x in zip(up.upcast(src, "test"), src))
    for a, b in zip(ema, ref):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def _compiled_variants(kernel) -> int:
    """How many compiled variants a jitted Triton kernel holds (Triton 3.x keeps them per device: `device_caches`,
    whose entries start with the kernel cache dict; older releases: `cache`)."""
    caches = getattr(kernel, "device_caches", None)
    if caches is None:
        return sum(len(v) for v in kernel.cache.values())
    return sum(len(next(x for x in v if isinstance(x, dict))) for v in caches.values())


def test_cuda_lerp_kernel_updates_the_ema_in_one_launch(cuda_portable):
    """portable/lerp_kernel.py (the EMA update's Triton kernel): 300 fp32 tensors of sizes around the chunk size
    (tails, single elements) move toward bf16 and fp16 sources in ONE launch, with the values of the foreach path
    (upcast, then _foreach_lerp_) and of upstream's mul + add to fp32 rounding, for a small and a large weight;
    a misaligned view is refused (the caller's foreach path then runs) and so is COSMOS_EMA_KERNEL=0."""
    from torch.profiler import ProfilerActivity, profile

    lk, up = cuda_portable.lerp_kernel, cuda_portable.upcast
    if lk._build_kernel() is None:
        pytest.skip(f"lerp kernel unavailable: {lk._unavailable}")
    c = lk.CHUNK
    sizes = [1, 7, c - 1, c, c + 1, 3 * c + 5] + [1000 + 37 * i for i in range(294)]
    for dtype in (torch.bfloat16, torch.float16):
        src = [torch.randn(n, device=DEV).to(dtype) for n in sizes]
        ema = [torch.randn(n, device=DEV) for n in sizes]
        compiled = []
        for weight in (1e-4, 0.7):
            ref = [e.clone() for e in ema]
            torch._foreach_lerp_(ref, [x.float() for x in src], weight)
            upstream = [e.clone() * (1 - weight) + x.float() * weight for e, x in zip(ema, src)]
            assert lk.why_not(ema, src) is None
            assert lk.lerp_(ema, src, weight)
            for a, b, u in zip(ema, ref, upstream):
                torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
                torch.testing.assert_close(a, u, rtol=1e-5, atol=1e-5)
            compiled.append(_compiled_variants(lk._kernel))
        # a weight on the other side of 0.5 (the EMA's 1 - beta crossing it early in a run) compiles nothing new
        assert compiled[0] == compiled[1], compiled
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            up.ema_update_(ema, src, 0.999)
            torch.cuda.synchronize()
        launches = sum(e.count for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA)
        assert launches == 1, launches
        # the tables: kept while the storages stay; a moved tensor re-uploads the offsets, not the chunk table
        before = dict(lk.STATS)
        up.ema_update_(ema, src, 0.999)
        assert lk.STATS["offset_uploads"] == before["offset_uploads"] and lk.STATS["tables"] == before["tables"]
        ema[3] = ema[3].clone()
        ref = [e.clone() for e in ema]
        torch._foreach_lerp_(ref, [x.float() for x in src], 1e-3)
        up.ema_update_(ema, src, 1.0 - 1e-3)
        assert lk.STATS["offset_uploads"] == before["offset_uploads"] + 1 and lk.STATS["tables"] == before["tables"]
        for a, b in zip(ema, ref):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    base = torch.randn(4097, device=DEV)
    odd = [base[1:1025]]  # 4 bytes past an aligned start
    before = odd[0].clone()
    assert "aligned" in lk.why_not(odd, [torch.randn(1024, device=DEV).bfloat16()])
    assert not lk.lerp_(odd, [torch.randn(1024, device=DEV).bfloat16()], 0.5) and torch.equal(odd[0], before)
    with _env("COSMOS_EMA_KERNEL", "0"):
        assert lk.why_not(ema, src) == "COSMOS_EMA_KERNEL=0"


def test_cuda_adamw_kernel_matches_torch_fused_path(cuda_portable):
    """portable/adamw_kernel.py (FusedAdam's update in one Triton launch): 300 bf16 parameters with fp32 masters, of
    sizes around the chunk size, and fp32 parameters, four steps with a scheduler and GradClip's coefficient in the
    step on two of them, against FusedAdam on torch's fused kernel (COSMOS_ADAM_KERNEL=0, the clip's multiply
    before the step): masters and moments to fp32 rounding, bf16 parameters equal to their rounded masters; one
    launch per dtype set and step; a non-contiguous gradient sends the step to torch's kernel."""
    ak, optim = cuda_portable.adamw_kernel, cuda_portable.optim
    if ak._build_kernel() is None:
        pytest.skip(f"adamw kernel unavailable: {ak._unavailable}")
    torch.manual_seed(0)
    c = ak.CHUNK
    sizes = [1, 7, c - 1, c, c + 1, 3 * c + 5] + [1000 + 37 * i for i in range(294)]
    start = [torch.randn(n, device=DEV).bfloat16() for n in sizes] + [torch.randn(300, device=DEV)]
    grads = [[torch.randn(t.shape, device=DEV).to(t.dtype) for t in start] for _ in range(4)]
    coefs = [None, torch.tensor(0.3, device=DEV).bfloat16(), None, torch.tensor(0.05, device=DEV).bfloat16()]

    def run(kernel):
        with _env("COSMOS_ADAM_KERNEL", "1" if kernel else "0"):
            ps = [torch.nn.Parameter(t.clone()) for t in start]
            opt = optim.FusedAdam(ps, lr=1e-2, weight_decay=0.1, master_weights=True)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 / (1 + i))
            launches = []
            for gs, coef in zip(grads, coefs):
                for p, g in zip(ps, gs):
                    p.grad = g.clone()
                if coef is not None:
                    if kernel:
                        assert opt.scale_grads_in_next_step(coef, len(ps))
                    else:
                        torch._foreach_mul_([p.grad for p in ps[:-1]], coef)
                        torch._foreach_mul_([ps[-1].grad], coef)
                before = ak.STATS["launches"]
                opt.step()
                sched.step()
                launches.append(ak.STATS["launches"] - before)
            torch.cuda.synchronize()
            return ps, opt, launches

    (pa, oa, la), (pb, ob, lb) = run(True), run(False)
    assert la == [2, 2, 2, 2] and lb == [0, 0, 0, 0], (la, lb)  # bf16-with-master set and fp32 set
    for x, y in zip(pa, pb):
        for name in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(oa.state[x][name], ob.state[y][name], rtol=1e-5, atol=1e-7)
        if x.dtype == torch.bfloat16:
            torch.testing.assert_close(oa._masters[x], ob._masters[y], rtol=1e-5, atol=1e-6)
            assert torch.equal(x.detach(), oa._masters[x].bfloat16())  # written once, rounded to nearest
        else:
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
    # a strided gradient: the whole set goes to torch's kernel, with the same result
    ps = [torch.nn.Parameter(torch.randn(64, 64, device=DEV).bfloat16())]
    opt = optim.FusedAdam(ps, lr=1e-2, master_weights=True)
    ps[0].grad = torch.randn(64, 64, device=DEV).bfloat16().t()
    z = lambda: [torch.zeros(64, 64, device=DEV)]
    assert "contiguous" in ak.why_not(z(), [ps[0].grad], z(), z(), [ps[0]])
    before = ak.STATS["launches"]
    opt.step()
    assert ak.STATS["launches"] == before


def _late_clip_inputs(width: int):
    """Start values of three bf16 parameters and three steps of their gradients, the second step's not finite: the
    LateFiniteClip tests' inputs."""
    torch.manual_seed(0)
    start = [torch.randn(s, device=DEV).bfloat16() for s in ((300, width), (width,), (5000,))]
    grads = [[torch.randn(t.shape, device=DEV).bfloat16() for t in start] for _ in range(3)]
    grads[1][0][3, 4] = float("nan")
    grads[1][2][7] = float("inf")
    return start, grads


def _assert_bitwise(names, a, b) -> None:
    """Each named list of tensors in `a` equals its twin in `b` bitwise; else, per tensor that differs: (index, max
    abs difference, elements that differ)."""
    for what, xs, ys in zip(names, a, b):
        diff = [(i, (x.float() - y.float()).abs().max().item(), (x != y).sum().item())
                for i, (x, y) in enumerate(zip(xs, ys)) if not torch.equal(x, y)]
        assert not diff, (what, diff)


def test_cuda_late_finite_clip_skips_and_redoes_on_the_device(cuda_portable):
    """portable/shards.py LateFiniteClip with FusedAdam's fused kernel on CUDA (its found_inf flag): finite and
    non-finite gradients end with the same parameters, masters, moments and norms as the check before the step,
    and the flagged step writes nothing before settle() redoes it."""
    sh, optim = cuda_portable.shards, cuda_portable.optim
    start, grads = _late_clip_inputs(70)

    def run(late):
        ps = [torch.nn.Parameter(t.clone()) for t in start]
        opt = optim.FusedAdam(ps, lr=1e-2, weight_decay=0.1, master_weights=True)
        assert opt.uses_fused_kernel(ps[0].device) and opt.can_skip_on_device(ps[0].device)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 / (1 + i))
        clip, norms = sh.LateFiniteClip(), []
        for it, gs in enumerate(grads):
            for p, g in zip(ps, gs):
                p.grad = g.clone()
            if late:
                assert clip.clip([p.grad for p in ps], 0.5, opt) is not None
                before = [p.detach().clone() for p in ps]
                opt.step()
                if it == 1:  # the flagged step wrote nothing
                    assert all(torch.equal(a, b) for a, b in zip(ps, before))
                sched.step()
                norms.append(clip.settle())
            else:
                norms.append(sh.clip_grad_norm_local([p.grad for p in ps], 0.5, True))
                opt.step()
                sched.step()
        return ps, [opt._masters[p] for p in ps], [opt.state[p]["exp_avg_sq"] for p in ps], norms

    _assert_bitwise(("params", "masters", "exp_avg_sq", "norms"), run(True), run(False))


def test_cuda_late_finite_clip_settled_next_step_skips_the_ema_on_the_device(cuda_portable):
    """GradClip's order with the check settled at the next step's start (COSMOS_CLIP_SETTLE_NEXT_STEP, default):
    clip, step, scheduler, the EMA update (portable/upcast.py), zero_grad(set_to_none), settle. The EMA update takes
    portable/lerp_kernel.py with the step's device flag (no host read: the check stays pending); a flagged step
    leaves parameters and EMA as they were until settle() redoes the step from the gradients the check held and then
    the EMA update. Parameters, masters, moments, EMA and norms equal bitwise to the check before the step."""
    sh, optim, up, lk = cuda_portable.shards, cuda_portable.optim, cuda_portable.upcast, cuda_portable.lerp_kernel
    start, grads = _late_clip_inputs(72)

    def run(late):
        ps = [torch.nn.Parameter(t.clone()) for t in start]
        ema = [t.float() for t in start]
        opt = optim.FusedAdam(ps, lr=1e-2, weight_decay=0.1, master_weights=True)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 / (1 + i))
        clip, norms = sh.LateFiniteClip(), []
        for it, gs in enumerate(grads):
            for p, g in zip(ps, gs):
                p.grad = g.clone()
            if late:
                assert clip.clip([p.grad for p in ps], 0.5, opt, params=ps) is not None
                before = [t.detach().clone() for t in ps + ema]
                opt.step()
                sched.step()
                launches = lk.STATS["launches"]
                up.ema_update_(ema, ps, 0.99)
                assert lk.STATS["launches"] == launches + 1 and sh.unsettled_skip() is not None  # still pending
                if it == 1:  # the flagged step and its EMA update wrote nothing
                    torch.cuda.synchronize()
                    assert all(torch.equal(a, b) for a, b in zip(ps + ema, before))
                opt.zero_grad(set_to_none=True)
                norms.append(clip.settle())
                assert sh.unsettled_skip() is None and all(p.grad is None for p in ps)
            else:
                norms.append(sh.clip_grad_norm_local([p.grad for p in ps], 0.5, True))
                opt.step()
                sched.step()
                up.ema_update_(ema, ps, 0.99)
                opt.zero_grad(set_to_none=True)
        return ps, [opt._masters[p] for p in ps], [opt.state[p]["exp_avg_sq"] for p in ps], ema, norms

    _assert_bitwise(("params", "masters", "exp_avg_sq", "ema", "norms"), run(True), run(False))


def test_cuda_clip_on_device_treats_a_non_finite_step_without_the_host(cuda_portable):
    """COSMOS_CLIP_ON_DEVICE=1: LateFiniteClip sums the norm after nan_to_num on the device only for a non-finite
    step (adamw_kernel.sumsq_if_) and FusedAdam's kernel takes NaN/inf elements as 0 (SANITIZE); settle() reads
    nothing. Against the default skip-and-redo mode (bitwise the check before the step): the same norms to one bf16
    step of the non-finite one (another summation order), and then the same parameters, masters and moments,
    bitwise where the norms came out equal."""
    sh, optim, ak = cuda_portable.shards, cuda_portable.optim, cuda_portable.adamw_kernel
    start, grads = _late_clip_inputs(74)

    def run(on_device):
        with _env("COSMOS_CLIP_ON_DEVICE", "1" if on_device else "0"):
            ps = [torch.nn.Parameter(t.clone()) for t in start]
            opt = optim.FusedAdam(ps, lr=1e-2, weight_decay=0.1, master_weights=True)
            assert opt.can_sanitize_on_device(ps[0].device)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 / (1 + i))
            clip, norms, launches = sh.LateFiniteClip(), [], ak.STATS["launches"]
            for gs in grads:
                for p, g in zip(ps, gs):
                    p.grad = g.clone()
                assert clip.clip([p.grad for p in ps], 0.5, opt, params=ps) is not None
                opt.step()
                sched.step()
                for p in ps:
                    p.grad = None  # zero_grad(set_to_none) before the settle, as in training
                norms.append(clip.settle())
            return (ps, [opt._masters[p] for p in ps], [opt.state[p]["exp_avg_sq"] for p in ps], norms,
                    ak.STATS["launches"] - launches)

    *on, launches_on = run(True)
    *ref, launches_ref = run(False)
    assert launches_on == 6 and launches_ref == 4, (launches_on, launches_ref)  # sumsq + step; 3 steps + the redo
    assert torch.equal(on[3][0], ref[3][0]) and torch.equal(on[3][2], ref[3][2])  # the finite steps' norms
    assert abs(on[3][1].float() - ref[3][1].float()) <= ref[3][1].float() * 2**-7
    if torch.equal(on[3][1], ref[3][1]):
        _assert_bitwise(("params", "masters", "exp_avg_sq", "norms"), on, ref)
    else:  # one bf16 step apart in the non-finite step's norm: its clip coefficient and what follows, slightly
        for xs, ys in zip(on[1], ref[1]):
            assert ((xs - ys).abs() <= 1e-2 * ys.abs().max()).all()


def test_cuda_step_phases_from_events_do_not_wait(cuda_portable):
    """portable/step_timing.py on CUDA (the applied tree's, COSMOS_TEST_TREE): the phase marks are timing events, so
    no step synchronizes the device; a loader wait hidden behind queued device work counts ~0, one that outlasts
    it counts the device's idle time; forward+backward is its device time."""
    tree = os.environ.get("COSMOS_TEST_TREE")
    if not tree:
        pytest.skip("needs COSMOS_TEST_TREE=<applied tree> (step_timing imports upstream's imaginaire)")
    import time
    import types

    sys.path.insert(0, tree)
    import cosmos_predict2.portable.step_timing as st

    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(3):  # the last of three: the first ran at a lower clock (a 100 ms sleep took 65 ms after it)
        a.record(); torch.cuda._sleep(50_000_000); b.record(); b.synchronize()
    per_ms = 50_000_000 / a.elapsed_time(b)  # sleep cycles per ms on this card, roughly

    def busy(ms):
        torch.cuda._sleep(int(per_ms * ms))

    syncs, real = [0], torch.cuda.synchronize

    def counting(*args, **kwargs):
        syncs[0] += 1
        return real(*args, **kwargs)

    cb = st.StepTimingCallback(every_n=1)
    cb.on_train_start(types.SimpleNamespace(), 0)
    busy(1)
    torch.cuda.synchronize = counting
    rows, pending = [], None
    try:
        for it, loader_s in enumerate((0.05, 0.05, 0.45)):
            cb.on_before_dataloading(it); time.sleep(loader_s); cb.on_after_dataloading(it)
            cb.on_before_forward(it); busy(100); cb.on_after_backward(None, it)
            cb.on_before_optimizer_step(None, None, None, None, it); busy(200)
            cb.on_training_step_batch_end(None, None, None, None, it)
            fields = st.take_fields()
            assert fields["phases_clock"] == "device events"
            if pending is not None:  # read one step late, as TrainMetricsCallback does
                n = syncs[0]
                rows.append(pending(gather=False)[0])
                assert syncs[0] == n
            pending = fields["phases_s_per_rank"]
        assert syncs[0] == 0, syncs
    finally:
        torch.cuda.synchronize = real
    rows.append(pending(gather=False)[0])
    # the sleeps' lengths follow the card's clock: compare phases with each other, not with nominal times
    for ph in rows:
        assert abs(2 * ph["fwd_bwd"] - ph["optimizer"]) < 0.1 * ph["optimizer"], rows  # 100 and 200 ms of sleep
        assert abs(ph["step"] - (ph["data"] + ph["fwd_bwd"] + ph["optimizer"])) < 0.01, rows  # nothing else ran
    assert 0.05 < rows[1]["optimizer"] < 0.3, rows
    assert rows[1]["data"] < 0.01, rows  # 50 ms of loader behind the last step's queued optimizer sleep
    # 450 ms of loader: the device idles for what outlasts the queued work. Reading step 0's events at the end of
    # step 1 waited for step 0's end, so step 1's forward and optimizer sleeps were all still queued then.
    assert abs(rows[2]["data"] - (0.45 - rows[1]["fwd_bwd"] - rows[1]["optimizer"])) < 0.03, rows


def test_cuda_adaln_chains_compiled(cuda_portable):
    """adaLN modulation and gated residual (patch 0035): one compiled kernel each, forward and backward within bf16
    rounding of a float64 reference, and no worse than the eager bf16 chain."""
    ad = cuda_portable.adaln
    norm = torch.nn.LayerNorm(2048, elementwise_affine=False, eps=1e-6)
    x = torch.randn(1, 6, 44, 80, 2048, device=DEV).bfloat16().requires_grad_()  # above ad.FUSE_MIN_NUMEL
    # (1, 1, 1, 1, D), as in the real net (one timestep per sample): the shape whose gradient torch.compile's
    # derived backward returned as (D,) on torch 2.11
    scale, shift, gate = (0.3 * torch.randn(1, 1, 1, 1, 2048, device=DEV).bfloat16().requires_grad_() for _ in range(3))
    y = torch.randn_like(x).requires_grad_()
    out = ad.modulate(norm, x, scale, shift)
    res = ad.gated_residual(x, gate, y)
    g1, g2 = torch.randn_like(out), torch.randn_like(res)
    grads = torch.autograd.grad([out, res], [x, scale, shift, gate, y], [g1, g2])
    for fn in (ad._modulate_fwd_fast, ad._modulate_bwd_fast, ad._gated_residual_fwd_fast, ad._gated_residual_bwd_fast):
        assert fn.state["compiled"] is not None and not fn.state["failed"]
    xd, sd, hd, gd, yd = (t.detach().double().requires_grad_() for t in (x, scale, shift, gate, y))
    ref_out = torch.nn.functional.layer_norm(xd, (2048,), eps=1e-6) * (1 + sd) + hd
    ref_res = xd + gd * yd
    ref_grads = torch.autograd.grad([ref_out, ref_res], [xd, sd, hd, gd, yd], [g1.double(), g2.double()])
    eager_out = ad.modulate_reference(x, scale, shift, 1e-6)

    def rel(a, b):
        return ((a.double() - b).norm() / b.norm()).item()

    assert rel(out, ref_out) < 4e-3 and rel(out, ref_out) <= rel(eager_out, ref_out) * 1.05
    assert rel(res, ref_res) < 4e-3
    for got, want in zip(grads, ref_grads):
        assert rel(got, want) < 1e-2, (got.shape, rel(got, want))


def test_cuda_block_under_selective_checkpointing(cuda_portable):
    """RMSNorm + RoPE (compiled) + attention + the adaLN chains (compiled, the last op of the block as in upstream's
    Block) inside upstream-style SAC (mm and attention saved): same output and gradients as without checkpointing,
    and the compiled kernels stay in use. The compiled residual being the last op is what made checkpointing's
    early stop of the recomputation pass through our compile fallback (a crash on the H200, 2026-12-01)."""
    import functools

    from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

    pk = cuda_portable
    pk.adaln.FUSE_MIN_NUMEL = 0  # the fused chains at this small size too
    B, S, H, D = 1, 512, 4, 64
    C = H * D
    torch.manual_seed(torch.seed() % 2**31)
    lin = torch.nn.Linear(C, 3 * C, bias=False, device=DEV, dtype=torch.bfloat16)
    qn = pk.rmsnorm.RMSNorm(D, params_dtype=torch.bfloat16, device=DEV)
    kn = pk.rmsnorm.RMSNorm(D, params_dtype=torch.bfloat16, device=DEV)
    freqs = cosmos_like_freqs(S, D).to(DEV)
    norm = torch.nn.LayerNorm(C, elementwise_affine=False, eps=1e-6)
    scale, shift, gate = (0.3 * torch.randn(B, 1, C, device=DEV, dtype=torch.bfloat16) for _ in range(3))
    saved = []

    def block(x):
        h = pk.adaln.modulate(norm, x, scale, shift)
        q, k, v = lin(h).unflatten(-1, (3, H, D)).unbind(2)
        q = pk.rope.apply_rotary_pos_emb(qn(q), freqs, tensor_format="bshd", fused=True)
        k = pk.rope.apply_rotary_pos_emb(kn(k), freqs, tensor_format="bshd", fused=True)
        return pk.adaln.gated_residual(x, gate, pk.attention.attention(q, k, v).flatten(-2))

    def policy(ctx, func, *args, **kwargs):
        keep = func == torch.ops.aten.mm.default or pk.sac.is_attention_op(func)
        if keep and not ctx.is_recompute:
            saved.append(str(func))
        return CheckpointPolicy.MUST_SAVE if keep else CheckpointPolicy.PREFER_RECOMPUTE

    x = torch.randn(B, S, C, device=DEV, dtype=torch.bfloat16, requires_grad=True)
    g = torch.randn(B, S, C, device=DEV, dtype=torch.bfloat16)
    out_ref = block(x)
    out_ref.backward(g)
    ref_grads = [x.grad.clone(), lin.weight.grad.clone(), qn.weight.grad.clone()]
    x.grad = lin.weight.grad = qn.weight.grad = kn.weight.grad = None
    out = checkpoint(block, x, use_reentrant=False,
                     context_fn=functools.partial(create_selective_checkpoint_contexts, policy))
    out.backward(g)
    assert torch.equal(out, out_ref)
    for a, b in zip([x.grad, lin.weight.grad, qn.weight.grad], ref_grads):
        torch.testing.assert_close(a, b, atol=1e-2, rtol=1e-2)
    assert any("attention" in s for s in saved), saved
    assert not pk.rope._apply_fast.state["failed"] and not pk.rmsnorm._rms_norm_fast.state["failed"]
    assert not pk.adaln._modulate_fwd_fast.state["failed"] and not pk.adaln._gated_residual_bwd_fast.state["failed"]
    assert pk.adaln._gated_residual_bwd_fast.state["compiled"] is not None


def test_cuda_rope_inside_cuda_graph_uses_replay_values(cuda_portable):
    """As imaginaire's make_graphed_callables: warm-up with a static freqs buffer, capture, then copy new angles
    into the buffer and replay. The graph must use the new angles (a cos/sin cache hit at capture would not)."""
    rope = cuda_portable.rope
    S, D = 256, 64
    static_x = torch.randn(1, S, 2, D, device=DEV).bfloat16()
    static_f = cosmos_like_freqs(S, D).to(DEV)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):  # warm-up (fills the cache and compiles)
            rope.apply_rotary_pos_emb(static_x, static_f, "bshd", fused=True)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = rope.apply_rotary_pos_emb(static_x, static_f, "bshd", fused=True)
    new_f = cosmos_like_freqs(S, D).to(DEV) * 1.7
    new_x = torch.randn_like(static_x)
    static_f.copy_(new_f)
    static_x.copy_(new_x)
    graph.replay()
    torch.cuda.synchronize()
    expected = ref_rope(new_x, new_f, "bshd").to(torch.bfloat16)
    assert (static_out != expected).float().mean().item() < 0.002


def test_cuda_flash_cute_matches_reference_and_is_saved_by_sac(cuda_portable):
    """FlashAttention-4's CuTe kernels through the flash_cute backend (where flash-attn-4 is installed): forward and
    gradients against float64, causal and not; under selective checkpointing that saves attention ops the kernel's
    forward runs once (saved), not again in backward."""
    import functools

    from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

    pk = cuda_portable
    if not pk.flash_cute.available():
        pytest.skip("flash-attn-4 (flash_attn.cute) is not installed")
    cc = torch.cuda.get_device_capability()
    if cc[0] * 10 + cc[1] not in (90, 100):
        pytest.skip("flash_cute runs on sm90/sm100 only")
    att = pk.attention
    p = att.AttnParams(1 / math.sqrt(128), False, 0.0, False)
    long_q = torch.empty(1, att.FLASH_CUTE_MIN_SEQ, 1, 128, device=DEV, dtype=torch.bfloat16)
    short_q = long_q[:, : att.FLASH_CUTE_MIN_SEQ - 1]
    assert att.select_backend(long_q, long_q, long_q, p) == "flash_cute"  # auto: first for long sequences
    assert att.select_backend(short_q, short_q, short_q, p) == "cudnn"
    for causal in (False, True):
        q, k, v = (torch.randn(2, 333, 4, 128, device=DEV, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        g = torch.randn(2, 333, 4, 128, device=DEV, dtype=torch.bfloat16)
        with _env("COSMOS_ATTN_BACKEND", "flash_cute"):
            out = att.attention(q, k, v, causal=causal)
        out.backward(g)
        qd, kd, vd = (x.detach().double().requires_grad_() for x in (q, k, v))
        ref = ref_attention(qd, kd, vd, causal=causal)
        ref.backward(g.double())
        torch.testing.assert_close(out.double(), ref, atol=2e-2, rtol=2e-2)
        for a, b in ((q, qd), (k, kd), (v, vd)):
            torch.testing.assert_close(a.grad.double(), b.grad, atol=5e-2, rtol=5e-2)

    from torch.utils._python_dispatch import TorchDispatchMode

    calls = []

    class CountFwd(TorchDispatchMode):  # outside SAC's mode: sees the op only when it really runs
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if "flash_cute_fwd" in str(func):
                calls.append(str(func))
            return func(*args, **(kwargs or {}))

    def policy(ctx, func, *args, **kwargs):
        keep = pk.sac.is_attention_op(func)
        return CheckpointPolicy.MUST_SAVE if keep else CheckpointPolicy.PREFER_RECOMPUTE

    q, k, v = (torch.randn(1, 256, 2, 128, device=DEV, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))

    def fn(q, k, v):
        return att.attention(q * 1.5, k, v).float().square().sum()

    with _env("COSMOS_ATTN_BACKEND", "flash_cute"), CountFwd():
        loss = checkpoint(fn, q, k, v, use_reentrant=False,
                          context_fn=functools.partial(create_selective_checkpoint_contexts, policy))
        loss.backward()
    assert len(calls) == 1, f"flash_cute forward ran {len(calls)} times under SAC (saved: 1)"
    assert q.grad is not None and torch.isfinite(q.grad).all()


def test_cuda_flash_cute_forward_config_at_odd_shapes(cuda_portable):
    """The measured forward tiling (FWD_CONFIGS, e.g. 192x128 on sm90 for head_dim 128) against FA4's own tiling and
    float64 at shapes that are not multiples of the tile: odd query/key lengths, cross-attention to 512 text tokens,
    several batches and heads."""
    pk = cuda_portable
    if not pk.flash_cute.available() or pk.flash_cute.import_error():
        pytest.skip("flash-attn-4 (flash_attn.cute) is not installed or does not import")
    major = torch.cuda.get_device_capability()[0]
    kw = pk.flash_cute.FWD_CONFIGS.get((major, 128, False))
    if not kw:
        pytest.skip(f"no measured forward configuration for sm{major}x, head_dim 128")
    fwd = pk.flash_cute._interface()._flash_attn_fwd
    for b, sq, sk, h in ((1, 333, 333, 4), (2, 1000, 512, 3), (1, 4080, 4080, 16), (1, 191, 77, 2)):
        q = torch.randn(b, sq, h, 128, device=DEV, dtype=torch.bfloat16)
        k, v = (torch.randn(b, sk, h, 128, device=DEV, dtype=torch.bfloat16) for _ in range(2))
        own = fwd(q, k, v, softmax_scale=128 ** -0.5, causal=False, return_lse=True)[0]
        ours = fwd(q, k, v, softmax_scale=128 ** -0.5, causal=False, return_lse=True, **kw)[0]
        ref = ref_attention(q.double(), k.double(), v.double(), causal=False)
        torch.testing.assert_close(ours.double(), ref, atol=2e-2, rtol=2e-2)
        assert (ours.float() - own.float()).abs().max().item() <= 2e-2, (b, sq, sk, h)


def test_cuda_host_values_move_without_a_stream_sync(cuda_portable):
    """portable.device.host_to_device (the conditioner's dropout masks, patch conditioner-dropout-mask-without-sync)
    and portable.late_read.LateRead (IterSpeed, LossLog, TrainMetricsCallback) do not synchronize the stream: under
    torch's sync debug mode "error" they run, while the pageable `.type_as` they replace raises there."""
    import importlib

    dev, late_read = cuda_portable.device, importlib.import_module(cuda_portable.__name__ + ".late_read")
    x = torch.randn(4, 8, device=DEV, dtype=torch.bfloat16)
    torch.manual_seed(0)
    mask = torch.bernoulli(0.8 * torch.ones(4))
    busy = torch.randn(4096, 4096, device=DEV)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(4):
            busy = busy @ busy / 64  # queued device work the copies must not wait for
        moved = dev.host_to_device(mask, x.device, x.dtype)
        flag = dev.host_to_device(mask[:1].bool(), x.device)
        late = late_read.LateRead(x.float().sum(), busy[0, :3])
        with pytest.raises(RuntimeError):
            mask.type_as(x)  # upstream's pageable copy: a stream sync
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert moved.dtype == x.dtype and moved.device == x.device and torch.equal(moved.cpu(), mask.to(x.dtype))
    assert flag.dtype == torch.bool and flag.item() == bool(mask[0])
    total, row = late.values()
    assert total.device.type == "cpu" and total.item() == x.float().sum().item()
    assert torch.equal(row, busy[0, :3].cpu())


if __name__ == "__main__":
    from portable_loader import load_with_device

    pkg = load_with_device("cosmos_portable_cuda_main", "cuda")
    failed = 0
    only = sys.argv[1:]  # substrings of test names to run (default: all)
    for name, fn in list(globals().items()):
        if name.startswith("test_") and callable(fn) and (not only or any(o in name for o in only)):
            try:
                fn(pkg)
                print(f"PASS {name}", flush=True)
            except pytest.skip.Exception as exc:
                print(f"SKIP {name}: {exc}", flush=True)
            except Exception as exc:  # report all, fail at the end
                failed += 1
                import traceback

                traceback.print_exc()
                print(f"FAIL {name}: {type(exc).__name__}: {exc}", flush=True)
    sys.exit(1 if failed else 0)
