"""portable/adamw_kernel.py (FusedAdam's one-launch update on CUDA) on CPU: the launch tables, what the kernel
refuses, that CPU never takes it, and FusedAdam's gradient scale in the step (GradClip's coefficient) against the
clip's in-place multiply before the step. The kernel itself runs on the card in tests/ops/test_cuda.py; where triton
is importable, also here under Triton's CPU interpreter (TRITON_INTERPRET=1, a subprocess)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from failing_kernel import FailingKernel, stub_first_launch
from portable_loader import PORTABLE_DIR


def _views(buf, sizes):
    out, off = [], 0
    for n in sizes:  # views at offsets that are multiples of 8 elements
        out.append(buf.narrow(0, off, n))
        off += -(-max(n, 1) // 8) * 8
    return out


def test_adamw_kernel_plan_covers_every_element_once(portable):
    ak = portable.adamw_kernel
    sizes = [1, 7, 8, 20, 0, 33]
    w, m, v = (_views(torch.zeros(1024), sizes) for _ in range(3))
    g = _views(torch.zeros(1024, dtype=torch.bfloat16), sizes)
    p = _views(torch.zeros(1024, dtype=torch.bfloat16), sizes)
    plan = ak.plan([w, g, m, v, p])
    assert not isinstance(plan, str), plan
    offsets, numel = plan
    assert numel == [n for n in sizes if n] and len(offsets) == 5 and all(o == offsets[0] for o in offsets)
    chunk_tensor, chunk_index = portable.lerp_kernel.chunk_table(numel, chunk=8)
    covered = []
    for t, c in zip(chunk_tensor.tolist(), chunk_index.tolist()):
        start = offsets[0][t] * 8 + c * 8
        covered.extend(range(start, start + min(8, numel[t] - c * 8)))
    expected = [i for t, n in zip(w, sizes) if n for i in range(t.storage_offset(), t.storage_offset() + n)]
    assert sorted(covered) == expected and len(covered) == len(set(covered))
    assert not isinstance(ak.plan([w, g, m, v]), str)  # fp32 parameters: no parameter list to write
    # what it refuses (FusedAdam then keeps torch's kernel)
    f32 = torch.zeros(64)
    bf = torch.zeros(64, dtype=torch.bfloat16)
    assert "aligned" in ak.plan([[f32[1:9]], [bf[:8]], [f32[16:24]], [f32[32:40]]])
    assert "aligned" in ak.plan([[f32[:8], f32[12:20]], [bf[:8], bf[8:16]], [f32[24:32]] * 2, [f32[40:48]] * 2])
    assert "work are torch.bfloat16" in ak.plan([[bf[:8]], [bf[8:16]], [f32[:8]], [f32[8:16]]])
    assert "params are torch.float32" in ak.plan([[f32[:8]], [bf[:8]], [f32[8:16]], [f32[16:24]], [f32[24:32]]])
    assert "dtype or device" in ak.plan([[f32[:8], f32[8:16]], [bf[:8], f32[16:24]], [f32[24:32]] * 2,
                                         [f32[32:40]] * 2])
    assert "not contiguous" in ak.plan([[torch.zeros(4, 4).t()], [torch.zeros(4, 4, dtype=torch.bfloat16)],
                                        [torch.zeros(4, 4)], [torch.zeros(4, 4)]])
    assert "different lengths" in ak.plan([[f32[:8]], [], [f32[8:16]], [f32[16:24]]])
    assert ak.why_not(w, g, m, v, p) == "device cpu (CUDA only)"


def test_adamw_kernel_tables_keep_the_parameters_part_when_gradients_move(portable, monkeypatch):
    """The device tables in two parts: masters, moments and parameters (they stay for the run) checked and uploaded
    once; gradients at new addresses (set to None between steps) cost one check and one small table, and the tables
    returned point at the new gradients. Host side on CPU (the upload is the identity here)."""
    ak = portable.adamw_kernel
    monkeypatch.setattr(ak, "_upload", lambda t, dev: t)
    monkeypatch.setattr(ak, "_plans", {})
    monkeypatch.setattr(ak, "_grad_tables", {})
    monkeypatch.setattr(ak, "STATS", dict.fromkeys(ak.STATS, 0))
    sizes = [5, 16, 9]
    w, m, v = (_views(torch.zeros(256), sizes) for _ in range(3))
    p = _views(torch.zeros(256, dtype=torch.bfloat16), sizes)
    g1 = _views(torch.zeros(256, dtype=torch.bfloat16), sizes)
    first = ak._device_plan([w, g1, m, v, p])
    assert not isinstance(first, str), first
    assert ak.STATS["offset_uploads"] == 1 and ak.STATS["grad_uploads"] == 1 and ak.STATS["tables"] == 1
    assert ak._device_plan([w, g1, m, v, p])[1] is first[1]  # same gradients: nothing new
    buf = torch.zeros(512, dtype=torch.bfloat16)
    g2 = [buf.narrow(0, 64, 5), buf.narrow(0, 8, 16), buf.narrow(0, 200, 9)]  # other addresses, other order
    second = ak._device_plan([w, g2, m, v, p])
    assert ak.STATS["offset_uploads"] == 1 and ak.STATS["grad_uploads"] == 2 and ak.STATS["tables"] == 1
    assert second[0] is first[0] and second[2:] == first[2:]
    assert second[1].tolist() == [0, -7, 17]  # offsets from the first gradient in units of 8 elements
    g3 = [buf.narrow(0, 1, 5), *g2[1:]]  # 2 bytes past an aligned start
    assert "not 16-byte aligned" in ak._device_plan([w, g3, m, v, p])
    g4 = [g2[0], buf.narrow(0, 9, 16), g2[2]]
    assert "grads[1]: storage not aligned" in ak._device_plan([w, g4, m, v, p])
    assert ak.STATS["offset_uploads"] == 1  # the parameters' part stayed
    assert "different lengths" in ak._device_plan([w, g2[:2], m, v, p])


def test_fused_adam_on_cpu_does_not_take_the_kernel(portable, monkeypatch):
    """CUDA only: on CPU FusedAdam(fused=True) never builds the kernel (it would fail without triton)."""
    monkeypatch.setattr(portable.adamw_kernel, "_build_kernel", lambda: pytest.fail("kernel built on CPU"))
    ps = [torch.nn.Parameter(torch.randn(10).bfloat16())]
    opt = portable.optim.FusedAdam(ps, lr=1e-2, master_weights=True, fused=True)
    ps[0].grad = torch.randn(10).bfloat16()
    before = ps[0].detach().clone()
    opt.step()
    assert not torch.equal(ps[0], before)


@pytest.mark.parametrize("fused", [True, False])
def test_grad_scale_in_the_step_is_the_clip_before_it(portable, fused):
    """scale_grads_in_next_step(coef): the next step's result equals an in-place multiply of the gradients by coef
    followed by the step, bitwise (parameters, masters, moments, and the gradients themselves on these paths); the
    scale is for one step only; a caller whose gradient count differs from the optimizer's is refused."""
    torch.manual_seed(5)
    start = [t.to(torch.bfloat16) for t in (torch.randn(33, 17), torch.randn(17), torch.randn(8, 4, 3))]
    grads = [[torch.randn(t.shape).to(torch.bfloat16) for t in start] for _ in range(3)]
    coefs = [torch.tensor(0.3).bfloat16(), torch.tensor(1.0).bfloat16(), torch.tensor(0.07).bfloat16()]

    def run(in_step):
        ps = [torch.nn.Parameter(t.clone()) for t in start]
        opt = portable.optim.FusedAdam(ps, lr=1e-2, weight_decay=0.1, master_weights=True, fused=fused)
        seen = []
        for gs, coef in zip(grads, coefs):
            for p, g in zip(ps, gs):
                p.grad = g.clone()
            if in_step:
                assert opt.scale_grads_in_next_step(coef, len(ps))
            else:
                torch._foreach_mul_([p.grad for p in ps], coef)
            opt.step()
            seen.append([p.grad.clone() for p in ps])
        state = [[p.detach() for p in ps], [opt._masters[p] for p in ps],
                 [opt.state[p]["exp_avg"] for p in ps], [opt.state[p]["exp_avg_sq"] for p in ps], seen[-1]]
        return state, opt, ps

    a, opt, ps = run(True)
    b, _, _ = run(False)
    for xs, ys in zip(a, b):
        assert all(torch.equal(x, y) for x, y in zip(xs, ys))
    assert opt._grad_scale is None  # consumed by the step
    assert not opt.scale_grads_in_next_step(coefs[0], len(ps) + 1) and opt._grad_scale is None


def test_adamw_kernel_that_fails_to_compile_falls_back_once(portable, monkeypatch):
    """A first launch that fails (Triton compiles there) turns the kernel off for the process with one warning
    naming the error, and FusedAdam's step then runs torch's path with the same result as without the kernel; a
    variant that launched before raises. Simulated on CPU: the device check and the tables are stubbed, the kernel
    is a stand-in that raises (the guard is lerp_kernel.guarded_launch, shared with the EMA kernel)."""
    ak = portable.adamw_kernel
    calls = []
    tables = (None,) * 6 + (torch.zeros(3, dtype=torch.int32),) * 2
    stub_first_launch(monkeypatch, ak, RuntimeError("ptxas not found\nmore"), calls, "HAS_SCALE", tables)
    torch.manual_seed(0)
    start, grad = torch.randn(10).bfloat16(), torch.randn(10).bfloat16()

    def run():
        ps = [torch.nn.Parameter(start.clone())]
        opt = portable.optim.FusedAdam(ps, lr=1e-2, master_weights=True, fused=True)
        ps[0].grad = grad.clone()
        opt.step()
        return ps[0].detach()

    with pytest.warns(RuntimeWarning, match="adamw_kernel.py: the kernel did not compile or launch .RuntimeError: "
                                            "ptxas not found.; FusedAdam keeps torch's fused kernel"):
        after = run()
    assert "ptxas not found" in ak._unavailable and calls == [False]
    assert torch.equal(run(), after) and calls == [False]  # off for the process: not tried again
    monkeypatch.setattr(ak, "_checked_plan", lambda lists: "off")
    assert torch.equal(run(), after)  # torch's path, as without the kernel
    # a variant that launched before: its failure is raised
    monkeypatch.setattr(ak, "_unavailable", None)
    monkeypatch.setattr(ak, "_checked_plan", lambda lists: tables)
    monkeypatch.setattr(ak, "_launched", {(False, False, True, True, False)})
    monkeypatch.setattr(ak, "_kernel", FailingKernel(RuntimeError("illegal memory access"), calls, "HAS_SCALE"))
    with pytest.raises(RuntimeError, match="illegal memory access"):
        run()


# the portable package as "pp" in a subprocess under TRITON_INTERPRET=1 (the scripts below start with it)
INTERPRETER_PREAMBLE = textwrap.dedent('''
    import contextlib, os, sys, types, torch
    sys.path.insert(0, os.environ["PORTABLE_PARENT"])
    pkg = types.ModuleType("pp")
    pkg.__path__ = [os.environ["PORTABLE_DIR"]]
    sys.modules["pp"] = pkg
''')


def _run_interpreted(script: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TRITON_INTERPRET="1", PORTABLE_DIR=str(PORTABLE_DIR),
               PORTABLE_PARENT=str(PORTABLE_DIR.parent))
    return subprocess.run([sys.executable, "-c", INTERPRETER_PREAMBLE + script], env=env, capture_output=True,
                          text=True, timeout=600)


INTERPRETED = textwrap.dedent('''
    from pp import adamw_triton as at, adamw_kernel as ak
    from pp.lerp_kernel import chunk_table
    torch.manual_seed(0)
    C = 64
    sizes = [1, 7, C - 1, C, C + 1, 3 * C + 5, 200, 33]
    T = lambda x: torch.tensor(x, dtype=torch.int64)
    lr, b1, b2, eps, step = 1e-2, 0.9, 0.99, 1e-8, 3
    bc1, bc2 = 1 - b1 ** step, 1 - b2 ** step
    worst = 0.0
    for adamw, wd, scale, inf in ((True, 0.1, 0.37, None), (False, 0.1, None, 0.0), (True, 0.0, 0.5, 1.0)):
        w = [torch.randn(n) for n in sizes]
        g = [torch.randn(n) for n in sizes]
        m = [torch.randn(n) * 0.1 for n in sizes]
        v = [torch.rand(n) * 0.01 for n in sizes]
        p = [torch.zeros(n, dtype=torch.bfloat16) for n in sizes]
        ref = [[t.clone() for t in lst] for lst in (w, m, v)]
        p0 = [t.clone() for t in p]
        offs, numel = ak.plan([w, g, m, v, p])
        ct, ci = chunk_table(numel, C)
        at.adam_chunks[(ct.numel(),)](
            w[0], g[0], m[0], v[0], p[0], *[T(o) for o in offs], T(numel), ct, ci,
            torch.tensor(scale if scale is not None else 1.0), torch.tensor(inf if inf is not None else 0.0),
            lr * wd, wd, b1, b2, eps, lr / bc1, bc2 ** 0.5, HAS_SCALE=scale is not None, HAS_INF=inf is not None,
            ADAMW=adamw, WRITE_P=True, CHUNK=C, BLOCK=16)
        if inf == 1.0:  # nothing written
            assert all(torch.equal(a, b) for A, B in zip((w, m, v, p), ref + [p0]) for a, b in zip(A, B))
            continue
        rg = [x * scale for x in g] if scale is not None else g
        kernel = torch._fused_adamw_ if adamw else torch._fused_adam_
        kernel(ref[0], rg, ref[1], ref[2], [], [torch.tensor(float(step))] * len(sizes), lr=lr, beta1=b1,
               beta2=b2, weight_decay=wd, eps=eps, amsgrad=False, maximize=False)
        for A, B in zip((w, m, v), ref):
            for a, b in zip(A, B):
                worst = max(worst, ((a - b).abs() / b.abs().max()).max().item())
        # the interpreter rounds to bf16 toward zero (the GPU to nearest even): within one bf16 step of the master
        for a, b in zip(p, w):
            assert ((a.float() - b).abs() <= b.abs() * 2 ** -7 + 1e-30).all()
    print("WORST", worst)

    # FusedAdam end to end through adamw_kernel.step_ (its tables, their order, the two dtype sets), the interpreter
    # standing in for the GPU: against the same optimizer on torch's CPU fused kernel
    from pp import optim
    ak._upload = lambda t, dev: t
    ak._checked_plan = lambda lists: ak._device_plan(lists) if ak.enabled() else "COSMOS_ADAM_KERNEL=0"
    ak._kernel = at.adam_chunks
    torch.cuda.device = lambda d: contextlib.nullcontext()
    start = [torch.randn(n).bfloat16() for n in sizes] + [torch.randn(70), torch.randn(3, 5)]
    grads = [[torch.randn(t.shape).to(t.dtype) for t in start] for _ in range(3)]
    runs = []
    for kernel in (True, False):
        os.environ["COSMOS_ADAM_KERNEL"] = "1" if kernel else "0"
        ps = [torch.nn.Parameter(t.clone()) for t in start]
        opt = optim.FusedAdam(ps, lr=1e-2, weight_decay=0.1, master_weights=True, fused=True)
        before = ak.STATS["launches"]
        for it, gs in enumerate(grads):
            for p_, g_ in zip(ps, gs):
                p_.grad = g_.clone()
            if it == 1:
                assert opt.scale_grads_in_next_step(torch.tensor(0.25).bfloat16(), len(ps))
            opt.step()
        runs.append((ps, opt, ak.STATS["launches"] - before))
    (pa, oa, na), (pb, ob, nb) = runs
    assert na == 6 and nb == 0, (na, nb)  # two dtype sets, three steps
    worst2 = 0.0
    for x, y in zip(pa, pb):
        pairs = [(oa.state[x][k], ob.state[y][k]) for k in ("exp_avg", "exp_avg_sq")]
        pairs.append((oa._masters[x], ob._masters[y]) if x.dtype == torch.bfloat16 else (x.detach(), y.detach()))
        for a, b in pairs:
            worst2 = max(worst2, ((a - b).abs() / b.abs().max()).max().item())
        if x.dtype == torch.bfloat16:  # written by the kernel from its master (the interpreter truncates)
            w_ = oa._masters[x]
            assert ((x.detach().float() - w_).abs() <= w_.abs() * 2 ** -7 + 1e-30).all()
    print("WORST2", worst2)
''')


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed (CPU wheels lack it)")
def test_adamw_kernel_under_the_triton_interpreter():
    """The Triton kernel's arithmetic against torch's fused Adam(W) on CPU, run by Triton's interpreter: fp32
    gradients with and without a scale, AdamW and L2 modes, tails and sizes around the chunk, and found_inf=1
    writing nothing, within fp32 rounding (torch computes a few products in double); then FusedAdam through
    adamw_kernel.step_ (tables, the bf16-with-master and fp32 sets, a scaled step) against FusedAdam on torch's CPU
    kernel over three steps."""
    out = _run_interpreted(INTERPRETED)
    assert out.returncode == 0, out.stderr[-3000:]
    worst = float(out.stdout.split("WORST ")[1].split()[0])
    worst2 = float(out.stdout.split("WORST2 ")[1].split()[0])
    assert worst < 1e-6 and worst2 < 1e-5, (worst, worst2)


CLIP_ON_DEVICE = textwrap.dedent('''
    from pp import adamw_triton as at, adamw_kernel as ak, optim, shards
    from pp.lerp_kernel import chunk_table
    torch.manual_seed(0)
    C = 64
    T = lambda x: torch.tensor(x, dtype=torch.int64)
    sizes = [1, 7, C - 1, C, C + 1, 3 * C + 5, 200]

    # 1. SANITIZE: NaN/inf gradient elements as 0 before the scale, finite ones untouched (bitwise)
    def launch(g, sanitize, scale=0.37):
        w = [torch.linspace(-1, 1, n) for n in sizes]
        m = [torch.full((n,), 0.01) for n in sizes]
        v = [torch.full((n,), 0.001) for n in sizes]
        p = [torch.zeros(n, dtype=torch.bfloat16) for n in sizes]
        offs, numel = ak.plan([w, g, m, v, p])
        ct, ci = chunk_table(numel, C)
        at.adam_chunks[(ct.numel(),)](w[0], g[0], m[0], v[0], p[0], *[T(o) for o in offs], T(numel), ct, ci,
                                      torch.tensor(scale), torch.tensor(0.0), 1e-3, 0.1, 0.9, 0.99, 1e-8, 0.1, 0.3,
                                      HAS_SCALE=True, HAS_INF=False, ADAMW=True, WRITE_P=True, CHUNK=C, BLOCK=16,
                                      SANITIZE=sanitize)
        return [t for lst in (w, m, v, p) for t in lst]

    buf = torch.randn(sum(-(-n // 8) * 8 for n in sizes)).bfloat16()
    g, off = [], 0
    for n in sizes:
        g.append(buf.narrow(0, off, n))
        off += -(-n // 8) * 8
    same = all(torch.equal(a, b) for a, b in zip(launch(g, True), launch(g, False)))
    bad = [t.clone() for t in g]
    bad[2][5], bad[4][0], bad[5][-1] = float("nan"), float("inf"), -float("inf")
    bad_buf = torch.cat([torch.nn.functional.pad(t, (0, -(-t.numel() // 8) * 8 - t.numel())) for t in bad])
    gb, gz, off = [], [], 0
    zero_buf = torch.nan_to_num(bad_buf, nan=0.0, posinf=0.0, neginf=0.0)
    for n in sizes:
        gb.append(bad_buf.narrow(0, off, n)); gz.append(zero_buf.narrow(0, off, n))
        off += -(-n // 8) * 8
    sanitized = all(torch.equal(a, b) for a, b in zip(launch(gb, True), launch(gz, False)))
    print("SANITIZE", same, sanitized)

    # 2. sumsq_if_chunks: nothing when the flag is 0; the sum of squares with NaN/inf as 0 when it is 1
    numel = [n for n in sizes]
    ct, ci = chunk_table(numel, C)
    offs = ak._list_offsets("grads", gb, [t.shape for t in gb])
    sums = []
    for flag in (0.0, 1.0):
        out = torch.zeros(())
        at.sumsq_if_chunks[(ct.numel(),)](gb[0], T(offs), T(numel), ct, ci, torch.tensor(flag), out, CHUNK=C,
                                          BLOCK=16)
        sums.append(out.item())
    ref = sum(t.float().pow(2).sum().item() for t in gz)
    print("SUMSQ", sums[0], abs(sums[1] - ref) / ref)

    # 3. GradClip's clip in the on-device mode (COSMOS_CLIP_ON_DEVICE=1) with FusedAdam through the kernel, the
    # interpreter standing in for the GPU, against upstream's treatment done on the host (nan_to_num in place, the
    # norm taken again) with the clip's scale in the step as well (the interpreter rounds the kernel's bf16 scale
    # toward zero, torch's in-place multiply to nearest even: tests/ops/test_cuda.py compares those on the card):
    # three steps, the second with NaN/inf gradients
    ak._upload = lambda t, dev: t
    ak._checked_plan = lambda lists: ak._device_plan(lists)
    ak._sumsq_plan = lambda grads: ak._sumsq_device_plan(grads)
    ak._kernel = at.adam_chunks
    ak._sumsq_kernel = lambda: at.sumsq_if_chunks
    torch.cuda.device = lambda d: contextlib.nullcontext()
    optim.FusedAdam.can_sanitize_on_device = lambda self, dev: self.can_skip_on_device(dev)
    os.environ["COSMOS_CLIP_ON_DEVICE"] = "1"
    start = [torch.randn(n).bfloat16() for n in sizes]
    grads = [[torch.randn(t.shape).bfloat16() for t in start] for _ in range(3)]
    grads[1][3][2], grads[1][5][0], grads[1][6][9] = float("nan"), float("inf"), -float("inf")
    runs = []
    for on_device in (True, False):
        ps = [torch.nn.Parameter(t.clone()) for t in start]
        opt = optim.FusedAdam(ps, lr=1e-2, weight_decay=0.1, master_weights=True, fused=True)
        clip = shards.LateFiniteClip()
        norms, launches = [], ak.STATS["launches"]
        for gs in grads:
            for p_, g_ in zip(ps, gs):
                p_.grad = g_.clone()
            if on_device:
                total = clip.clip([p_.grad for p_ in ps], 0.05, opt, params=ps)
                opt.step()
                assert clip.settle() is total  # nothing to read or redo
            else:  # upstream's treatment (nan_to_num in place, the norm of what is left) with the scale in the step
                gl = [p_.grad for p_ in ps]
                for g_ in gl:
                    torch.nan_to_num(g_, nan=0.0, posinf=0.0, neginf=0.0, out=g_)
                total = shards._local_total_norm(gl)[2]()
                assert opt.scale_grads_in_next_step(shards._clip_coef(total, 0.05), len(gl))
                opt.step()
            norms.append(float(total))
        runs.append((ps, opt, norms, ak.STATS["launches"] - launches))
    (pa, oa, na, la), (pb, ob, nb, lb) = runs
    worst = 0.0
    for x, y in zip(pa, pb):
        for a, b in [(oa.state[x][k], ob.state[y][k]) for k in ("exp_avg", "exp_avg_sq")] + [(oa._masters[x], ob._masters[y])]:
            worst = max(worst, ((a - b).abs() / b.abs().max()).max().item())
    print("CLIP", la, lb, worst, max(abs(a - b) / b for a, b in zip(na, nb)))
''')


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed (CPU wheels lack it)")
def test_clip_on_device_under_the_triton_interpreter():
    """COSMOS_CLIP_ON_DEVICE's parts under Triton's interpreter: the kernel's SANITIZE variant takes NaN/inf gradient
    elements as 0 before the scale and leaves finite gradients' steps bitwise as they were; sumsq_if_chunks does
    nothing on a 0 flag and gives the sum of squares with NaN/inf as 0 on a 1; LateFiniteClip's on-device mode with
    FusedAdam through the kernel matches upstream's treatment done on the host (the norm after nan_to_num) over
    three steps, the second non-finite, with nothing to settle."""
    out = _run_interpreted(CLIP_ON_DEVICE)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = {ln.split()[0]: ln.split()[1:] for ln in out.stdout.splitlines() if ln.split()}
    assert lines["SANITIZE"] == ["True", "True"], out.stdout
    assert float(lines["SUMSQ"][0]) == 0.0 and float(lines["SUMSQ"][1]) < 1e-5, out.stdout
    launches_on, launches_ref, worst, norm_rel = lines["CLIP"]
    assert int(launches_on) == 3 + 3 and int(launches_ref) == 3, out.stdout  # sumsq + step per step: all kernel
    # bitwise here: the sanitized sum of squares rounds to the same bf16 norm as torch's norms for these gradients
    # (another summation order, so in general to the norm's rounding)
    assert float(worst) == 0.0 and float(norm_rel) == 0.0, out.stdout
