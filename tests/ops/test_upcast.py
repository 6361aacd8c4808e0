"""portable/upcast.py: fp32 copies of bf16 lists through one buffer, and the EMA update built on them (CPU).

What makes the CUDA path fast is that every foreach op it issues has lists of one dtype (torch's multi-tensor
fast path; mixed dtypes fall back to one kernel per tensor) or is the foreach copy, which converts dtypes itself.
These tests record the aten ops with a TorchDispatchMode and check that, besides the values.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from failing_kernel import FailingKernel, stub_first_launch


class _Ops(TorchDispatchMode):
    """Records (op name, dtypes of each tensor-list argument) of every aten op dispatched."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        lists = [tuple(sorted({t.dtype for t in a}, key=str)) for a in args
                 if isinstance(a, (list, tuple)) and a and all(isinstance(t, torch.Tensor) for t in a)]
        self.ops.append((func.overloadpacket.__name__, lists))
        return func(*args, **(kwargs or {}))


def _mixed_foreach(ops):
    """foreach ops (other than the converting copy) whose tensor lists mix dtypes."""
    return [o for o in ops if o[0].startswith("_foreach_") and o[0] != "_foreach_copy_"
            and len({d for lst in o[1] for d in lst}) > 1]


def test_upcast_copies_into_one_reused_buffer(portable):
    up = portable.upcast
    ts = [torch.randn(s).to(torch.bfloat16) for s in [(3, 4), (5,), (2, 2, 2)]]
    a = up.upcast(ts, "t1")
    assert [x.dtype for x in a] == [torch.float32] * 3 and all(torch.equal(x, t.float()) for x, t in zip(a, ts))
    base = up._buffers[("t1", ts[0].device)]
    assert all(x.untyped_storage().data_ptr() == base.untyped_storage().data_ptr() for x in a)
    # the next call with the same shapes reuses the views (no allocation, no view ops) and overwrites them
    ts2 = [torch.randn_like(t) for t in ts]
    with _Ops() as rec:
        b = up.upcast(ts2, "t1")
    assert [o[0] for o in rec.ops] == ["_foreach_copy_"]
    assert all(x is y for x, y in zip(a, b)) and all(torch.equal(x, t.float()) for x, t in zip(b, ts2))
    # a larger list grows the buffer; another owner has its own
    src_big = torch.randn(100).to(torch.bfloat16)
    big = up.upcast([src_big], "t1")
    assert up._buffers[("t1", ts[0].device)].numel() >= 100 and torch.equal(big[0], src_big.float())
    c = up.upcast(ts, "t2")
    assert c[0].untyped_storage().data_ptr() != up._buffers[("t1", ts[0].device)].untyped_storage().data_ptr()
    assert up.upcast([], "t1") == []


@pytest.mark.parametrize("bucket,n_buckets", [(1 << 26, 1), (12, 3)])
def test_ema_update_matches_upstreams_two_foreach_ops(portable, monkeypatch, bucket, n_buckets):
    """bf16 sources: the same EMA as upstream's _foreach_mul_ + _foreach_add_ to fp32 rounding over 50 updates,
    also in buckets (12 elements: (12), (2, 9), (9)), and no foreach op of ours mixes dtypes."""
    up = portable.upcast
    monkeypatch.setattr(up, "BUCKET_NUMEL", bucket)
    torch.manual_seed(0)
    shapes = [(4, 3), (2,), (9,), (3, 3)]
    ema = [torch.randn(s) for s in shapes]
    ref = [t.clone() for t in ema]
    ops = []
    for step in range(50):
        src = [torch.randn(s).to(torch.bfloat16) for s in shapes]
        beta = 0.999 if step % 2 else 0.9
        with _Ops() as rec:
            up.ema_update_(ema, src, beta)
        ops += rec.ops
        torch._foreach_mul_(ref, beta)  # upstream's update
        torch._foreach_add_(ref, src, alpha=1.0 - beta)
    for a, b in zip(ema, ref):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert not _mixed_foreach(ops), _mixed_foreach(ops)[:3]
    names = [o[0] for o in ops]
    assert names.count("_foreach_lerp_") == names.count("_foreach_copy_") == 50 * n_buckets
    assert "_to_copy" not in names  # no per-tensor conversion


def test_ema_update_fp32_sources_keep_upstreams_ops(portable):
    """fp32 sources (an fp32 run): upstream's two foreach ops, bitwise upstream's result."""
    up = portable.upcast
    ema = [torch.randn(5), torch.randn(2, 3)]
    src = [torch.randn(5), torch.randn(2, 3)]
    ref = [t.clone() for t in ema]
    with _Ops() as rec:
        up.ema_update_(ema, src, 0.99)
    torch._foreach_mul_(ref, 0.99)
    torch._foreach_add_(ref, src, alpha=1.0 - 0.99)
    assert [o[0] for o in rec.ops] == ["_foreach_mul_", "_foreach_add_"]
    assert all(torch.equal(a, b) for a, b in zip(ema, ref))


def test_other_devices_keep_per_tensor_conversion(portable, monkeypatch):
    """A device without the foreach-copy path (supported() False, as for NPU) gets .float() per tensor and
    upstream's two foreach ops."""
    up = portable.upcast
    monkeypatch.setattr(up, "supported", lambda dev: False)
    ts = [torch.randn(3).to(torch.bfloat16)]
    ema = [torch.zeros(3)]
    with _Ops() as rec:
        out = up.upcast(ts, "npu_like")
        up.ema_update_(ema, ts, 0.5)
    assert [o[0] for o in rec.ops] == ["_to_copy", "_foreach_mul_", "_foreach_add_"]
    assert torch.equal(out[0], ts[0].float())


def test_fused_adam_bf16_grads_upcast_without_a_kernel_per_parameter(portable):
    """FusedAdam with bf16 parameters and fp32 masters: its grads reach the update through one foreach copy per
    bucket (no .float() per parameter), every foreach op has lists of one dtype, and the result is the one of
    per-parameter fp32 grads (the former path, computed here by hand with fp32 parameters and the same grads)."""
    torch.manual_seed(1)
    shapes = [(8, 4), (4,), (3, 3)]
    start = [torch.randn(s).to(torch.bfloat16) for s in shapes]
    ours = [torch.nn.Parameter(t.clone()) for t in start]
    ref = [torch.nn.Parameter(t.float()) for t in start]  # fp32 params = the masters' arithmetic
    opt = portable.optim.FusedAdam(ours, lr=1e-2, weight_decay=0.1, master_weights=True)
    ref_opt = portable.optim.FusedAdam(ref, lr=1e-2, weight_decay=0.1)
    ops = []
    for step in range(5):
        grads = [torch.randn(s).to(torch.bfloat16) for s in shapes]
        for p, r, g in zip(ours, ref, grads):
            p.grad, r.grad = g.clone(), g.float()
        with _Ops() as rec:
            opt.step()
        if step:  # the first step also builds the masters and moments
            ops += rec.ops
        ref_opt.step()
    names = [o[0] for o in ops]
    assert "_to_copy" not in names and names.count("_foreach_copy_") == 4 * 2  # grads in, masters back
    assert not _mixed_foreach(ops), _mixed_foreach(ops)[:3]
    for p, r in zip(ours, ref):
        assert torch.equal(opt._master_for(p), r.detach())
        assert torch.equal(p.detach(), r.detach().to(torch.bfloat16))


_UPDATERS = r"""
import sys, torch
from torch.utils._python_dispatch import TorchDispatchMode
from imaginaire.utils.ema import FastEmaModelUpdater
from cosmos_predict2.utils.dtensor_helper import DTensorFastEmaModelUpdater

class Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__(); self.names = []
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.overloadpacket.__name__); return func(*args, **(kwargs or {}))

torch.manual_seed(0)
for cls in (FastEmaModelUpdater, DTensorFastEmaModelUpdater):
    net = torch.nn.Sequential(*[torch.nn.Linear(8, 8) for _ in range(6)]).to(torch.bfloat16)
    ema = torch.nn.Sequential(*[torch.nn.Linear(8, 8) for _ in range(6)])
    ref = [p.detach().clone() for p in ema.parameters()]
    upd = cls()
    with torch.no_grad():
        upd.update_average(net, ema, beta=0.9)  # the first update also builds the fp32 buffer's views
        with Ops() as rec:
            upd.update_average(net, ema, beta=0.9)
    for _ in range(2):
        for r, p in zip(ref, net.parameters()):
            r.mul_(0.9).add_(p.detach().float(), alpha=0.1)
    err = max((a.detach() - b).abs().max().item() for a, b in zip(ema.parameters(), ref))
    work = [n for n in rec.names if n not in ("detach", "alias")]  # the DTensor updater's .data of plain params
    print(cls.__name__, sorted(set(work)), work.count("_to_copy"), len(work), err)
"""


def test_tree_ema_updaters_upcast_in_one_copy(applied_tree):
    """Patch 0051 in the applied tree: both EMA updaters (plain and DTensor) update 12 bf16 parameters with a
    foreach copy and a foreach lerp from the second update on (no per-parameter op), to upstream's values."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, COSMOS_DEVICE="cpu", PYTHONPATH=str(applied_tree), TORCH_DEVICE_BACKEND_AUTOLOAD="0")
    r = subprocess.run([sys.executable, "-c", _UPDATERS], cwd=applied_tree, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [ln.split(" ", 1) for ln in r.stdout.strip().splitlines()]
    assert [n for n, _ in lines] == ["FastEmaModelUpdater", "DTensorFastEmaModelUpdater"]
    for _, rest in lines:
        ops, to_copy, total, err = eval(rest.rsplit(" ", 3)[0]), *map(float, rest.rsplit(" ", 3)[1:])
        assert ops == ["_foreach_copy_", "_foreach_lerp_"], ops
        assert to_copy == 0 and total == 2 and err <= 1e-6, (to_copy, total, err)


def test_lerp_kernel_plan_covers_every_element_once(portable):
    """portable/lerp_kernel.py's launch tables (the host side; the kernel itself runs in tests/ops/test_cuda.py):
    offsets in units of 8 elements from the first tensor, chunks of CHUNK elements, every element of every tensor
    in exactly one chunk, empty tensors skipped; lists it cannot take are named, not taken."""
    lk = portable.lerp_kernel
    sizes = [1, 7, 8, 20, 0, 33]
    tgt_buf = torch.zeros(1024)
    src_buf = torch.zeros(1024, dtype=torch.bfloat16)
    tgts, srcs, off = [], [], 0
    for n in sizes:  # views at offsets that are multiples of 8 elements
        tgts.append(tgt_buf.narrow(0, off, n))
        srcs.append(src_buf.narrow(0, off, n))
        off += -(-max(n, 1) // 8) * 8
    p = lk.plan(tgts, srcs)
    assert not isinstance(p, str), p
    tgt_off, src_off, numel = p
    assert numel == [n for n in sizes if n] and src_off == tgt_off
    chunk_tensor, chunk_index = lk.chunk_table(numel, chunk=8)
    assert chunk_tensor.dtype == chunk_index.dtype == torch.int32
    covered = []
    for t, c in zip(chunk_tensor.tolist(), chunk_index.tolist()):
        start = tgt_off[t] * 8 + c * 8
        covered.extend(range(start, start + min(8, numel[t] - c * 8)))
    expected = [i for t, n in zip(tgts, sizes) if n for i in range(t.storage_offset(), t.storage_offset() + n)]
    assert sorted(covered) == expected and len(covered) == len(set(covered))
    assert chunk_tensor.tolist() == [0, 1, 2, 3, 3, 3, 4, 4, 4, 4, 4]
    assert chunk_index.tolist() == [0, 0, 0, 0, 1, 2, 0, 1, 2, 3, 4]
    # what it refuses
    assert "aligned" in lk.plan([tgt_buf[1:9]], [src_buf[:8]])
    assert "aligned" in lk.plan([tgt_buf[:8], tgt_buf[12:20]], [src_buf[:8], src_buf[8:16]])
    assert "dtypes" in lk.plan([tgt_buf[:8]], [tgt_buf[8:16]])
    assert "contiguous" in lk.plan([torch.zeros(4, 4).t()], [torch.zeros(4, 4, dtype=torch.bfloat16)])
    assert "different lengths" in lk.plan([tgt_buf[:8]], [])
    assert lk.why_not(tgts, srcs) == "device cpu (CUDA only)"

def test_ema_update_on_cpu_does_not_take_the_kernel(portable, monkeypatch):
    """The kernel is CUDA-only: on CPU ema_update_ never launches it (it would fail without triton)."""
    monkeypatch.setattr(portable.lerp_kernel, "_build_kernel", lambda: pytest.fail("kernel built on CPU"))
    ema = [torch.randn(10)]
    src = [torch.randn(10).to(torch.bfloat16)]
    ref = ema[0] + 0.25 * (src[0].float() - ema[0])
    portable.upcast.ema_update_(ema, src, 0.75)
    torch.testing.assert_close(ema[0], ref)


def test_lerp_kernel_that_fails_to_compile_falls_back_once(portable, monkeypatch):
    """A kernel whose first launch fails (no ptxas, an unsupported GPU: Triton compiles at the first launch) turns
    the kernel off for the process with one warning naming the error, and lerp_ answers False so the caller runs its
    foreach path; a failure of a variant that launched before is raised (a real error). Simulated on CPU: the
    device check and the tables are stubbed, the kernel is a stand-in that raises."""
    lk = portable.lerp_kernel
    calls = []
    stub_first_launch(monkeypatch, lk, RuntimeError("ptxas not found\nmore"), calls, "HAS_SKIP",
                      (None,) * 3 + (torch.zeros(3, dtype=torch.int32),) * 2)
    ema, src = [torch.zeros(8)], [torch.ones(8, dtype=torch.bfloat16)]
    with pytest.warns(RuntimeWarning, match="did not compile or launch .RuntimeError: ptxas not found."):
        assert lk.lerp_(ema, src, 1e-3) is False
    assert "ptxas not found" in lk._unavailable and calls == [False]
    assert lk.lerp_(ema, src, 1e-3) is False and calls == [False]  # off for the process: not tried again
    assert torch.equal(ema[0], torch.zeros(8))
    # a variant that launched before: its failure is raised
    monkeypatch.setattr(lk, "_unavailable", None)
    monkeypatch.setattr(lk, "_launched", {(False,)})  # (HAS_SKIP,)
    monkeypatch.setattr(lk, "_kernel", FailingKernel(RuntimeError("illegal memory access"), calls, "HAS_SKIP"))
    with pytest.raises(RuntimeError, match="illegal memory access"):
        lk.lerp_(ema, src, 1e-3)


LERP_INTERPRETED = '''
import os, sys, types, torch
pkg = types.ModuleType("pp")
pkg.__path__ = [os.environ["PORTABLE_DIR"]]
sys.modules["pp"] = pkg
from pp import lerp_kernel as lk
k = lk._build_kernel()
assert k is not None, lk._unavailable
torch.manual_seed(0)
C = 64
sizes = [1, 7, C - 1, C, C + 1, 3 * C + 5, 33]
T = lambda x: torch.tensor(x, dtype=torch.int64)
for weight in (1e-3, 0.75):
    start = [torch.randn(n) for n in sizes]
    src = [torch.randn(n).bfloat16() for n in sizes]
    plain = None
    for skip in (None, 0.0, 1.0):
        ema = [t.clone() for t in start]
        tgt_off, src_off, numel = lk.plan(ema, src)
        ct, ci = lk.chunk_table(numel, C)
        flag = torch.tensor(skip if skip is not None else 0.0)
        k[(ct.numel(),)](ema[0], src[0], T(tgt_off), T(src_off), T(numel), ct, ci, weight, flag,
                         HAS_SKIP=skip is not None, CHUNK=C, BLOCK=16)
        if skip is None:  # torch.lerp's values to fp32 rounding (CPU torch may contract to an FMA)
            plain = ema
            for a, e, s in zip(ema, start, src):
                ref = torch.lerp(e, s.float(), weight)
                assert ((a - ref).abs() <= ref.abs() * 2 ** -22 + 1e-30).all(), (weight, (a - ref).abs().max())
        else:  # flag 0: the unflagged launch's values, bitwise; flag 1: nothing written
            for a, b in zip(ema, plain if skip == 0.0 else start):
                assert torch.equal(a, b), (weight, skip, (a - b).abs().max().item())
print("LERP OK")
'''


@pytest.mark.skipif(__import__("importlib").util.find_spec("triton") is None,
                    reason="triton not installed (CPU wheels lack it)")
def test_lerp_kernel_skip_flag_under_the_triton_interpreter():
    """portable/lerp_kernel.py's kernel run by Triton's CPU interpreter (TRITON_INTERPRET=1, a subprocess): torch.lerp's
    values for both weight formulas over tails and sizes around the chunk (to fp32 rounding); with the skip flag 0
    the same values bitwise, with 1 nothing written (the EMA update of an optimizer step skipped on the device, settled later)."""
    import os
    import subprocess
    import sys

    from portable_loader import PORTABLE_DIR

    env = dict(os.environ, TRITON_INTERPRET="1", PORTABLE_DIR=str(PORTABLE_DIR))
    out = subprocess.run([sys.executable, "-c", LERP_INTERPRETED], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "LERP OK" in out.stdout
