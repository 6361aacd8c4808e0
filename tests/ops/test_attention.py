"""Portable attention on CPU against a float64 reference (fresh random inputs each run)."""

from __future__ import annotations

import math

import pytest
import torch

from _dist_helpers import run_ranks


def ref_attention(q, k, v, scale=None, causal=False):
    """float64 softmax(q k^T * scale) v in bshd, with SDPA's top-left causal alignment."""
    q, k, v = (x.double() for x in (q, k, v))
    if k.shape[2] != q.shape[2]:
        rep = q.shape[2] // k.shape[2]
        k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    if causal:
        i = torch.arange(q.shape[1], device=q.device)[:, None]
        j = torch.arange(k.shape[1], device=q.device)[None, :]
        s = s.masked_fill(j > i, float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", torch.softmax(s, dim=-1), v)


def rand(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("softmax_scale", [None, 0.37])
@pytest.mark.parametrize("q_scale", [None, 0.5])
def test_attention_matches_fp64_reference(portable, causal, softmax_scale, q_scale):
    B, S, H, D = 2, 37, 3, 16
    q, k, v = rand(B, S, H, D), rand(B, S, H, D), rand(B, S, H, D)
    out = portable.attention.attention(q, k, v, softmax_scale=softmax_scale, q_scale=q_scale, causal=causal)
    assert out.shape == (B, S, H, D) and out.dtype == torch.float32  # fp32 stays fp32 (dtype=None)
    qq = q * q_scale if q_scale is not None else q
    ref = ref_attention(qq, k, v, softmax_scale, causal)
    torch.testing.assert_close(out.double(), ref, atol=2e-6, rtol=2e-5)
    # the reference is sensitive to the options (guards against a test that cannot fail)
    other = ref_attention(qq, k, v, softmax_scale, not causal)
    assert (other - ref).abs().max() > 1e-2


def test_cross_attention_and_gqa(portable):
    q, k, v = rand(2, 11, 4, 8), rand(2, 29, 2, 8), rand(2, 29, 2, 8)
    out = portable.attention.attention(q, k, v)
    torch.testing.assert_close(out.double(), ref_attention(q, k, v), atol=2e-6, rtol=2e-5)


def test_dtype_semantics(portable):
    q, k, v = rand(1, 16, 2, 32), rand(1, 16, 2, 32), rand(1, 16, 2, 32)
    ref = ref_attention(q, k, v)
    out_bf16 = portable.attention.attention(q, k, v, dtype=torch.bfloat16)
    assert out_bf16.dtype == torch.bfloat16
    torch.testing.assert_close(out_bf16.double(), ref, atol=3e-2, rtol=3e-2)
    out_in = portable.attention.attention(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert out_in.dtype == torch.bfloat16
    with pytest.raises(NotImplementedError, match="dtype"):
        portable.attention.attention(q, k, v, dtype=torch.float64)


def test_backward_matches_reference(portable):
    q, k, v = (rand(1, 9, 2, 8).requires_grad_() for _ in range(3))
    portable.attention.attention(q, k, v, causal=True).square().sum().backward()
    qd, kd, vd = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref_attention(qd, kd, vd, causal=True).square().sum().backward()
    for a, b in ((q, qd), (k, kd), (v, vd)):
        torch.testing.assert_close(a.grad.double(), b.grad, atol=1e-5, rtol=1e-4)


def test_backend_selection_and_forcing(portable, monkeypatch):
    att = portable.attention
    q, k, v = rand(1, 8, 2, 8), rand(1, 8, 2, 8), rand(1, 8, 2, 8)
    p = att.AttnParams(scale=0.3, causal=False, dropout_p=0.0, deterministic=False)
    assert att.select_backend(q, k, v, p) == "sdpa_cpu"
    assert att.select_backend(q, k, v, att.AttnParams(0.3, False, 0.0, True)) == "math"
    assert "needs device npu" in att.BACKENDS["npu_fusion"].supports(q, k, v, p)
    assert "needs device cuda" in att.BACKENDS["cudnn"].supports(q, k, v, p)
    assert "4-D" in att.BACKENDS["math"].supports(q[0], k, v, p)
    ref = ref_attention(q, k, v)
    monkeypatch.setenv("COSMOS_ATTN_BACKEND", "math")
    torch.testing.assert_close(att.attention(q, k, v).double(), ref, atol=2e-6, rtol=2e-5)
    monkeypatch.setenv("COSMOS_ATTN_BACKEND", "flash")
    with pytest.raises(RuntimeError, match="'flash' forced by COSMOS_ATTN_BACKEND cannot run this call: needs dev"):
        att.attention(q, k, v)
    monkeypatch.setenv("COSMOS_ATTN_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="not an attention backend"):
        att.attention(q, k, v)


def test_varlen_is_refused_not_ignored(portable):
    q = rand(1, 4, 1, 8)
    with pytest.raises(NotImplementedError, match="q_lens"):
        portable.attention.attention(q, q, q, q_lens=torch.tensor([2]))


@pytest.mark.parametrize("fmt", ["bshd", "sbhd"])
def test_dot_product_attention_shapes(portable, fmt):
    B, S, H, D = 2, 10, 4, 8
    dpa = portable.attention.DotProductAttention(H, D, num_gqa_groups=H, attention_dropout=0, qkv_format=fmt,
                                                 attn_mask_type="no_mask")
    q, k, v = rand(B, S, H, D), rand(B, S, H, D), rand(B, S, H, D)
    if fmt == "sbhd":
        out = dpa(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1))
        assert out.shape == (S, B, H * D)
        out = out.transpose(0, 1)
    else:
        out = dpa(q, k, v)
        assert out.shape == (B, S, H * D)
    torch.testing.assert_close(out.double(), ref_attention(q, k, v).reshape(B, S, H * D), atol=2e-6, rtol=2e-5)
    causal = dpa(q, k, v, attn_mask_type="causal") if fmt == "bshd" else None
    if causal is not None:
        ref_c = ref_attention(q, k, v, causal=True).reshape(B, S, H * D)
        torch.testing.assert_close(causal.double(), ref_c, atol=2e-6, rtol=2e-5)
    with pytest.raises(NotImplementedError, match="cu_seqlens_q"):
        dpa(q, k, v, cu_seqlens_q=torch.tensor([0, S]))
    sd = dpa.state_dict()
    assert "_extra_state" in sd
    dpa.load_state_dict({"_extra_state": torch.tensor([1, 2, 3], dtype=torch.uint8)}, strict=True)


def _cp_worker(rank, world):
    import torch.distributed as dist
    from portable_loader import load_portable

    pkg = load_portable("cosmos_portable_cp_worker")
    dpa = pkg.attention.DotProductAttention(2, 8, qkv_format="bshd", attn_mask_type="no_mask")
    dpa.set_context_parallel_group(None, None, None)  # disable_context_parallel path: allowed
    singles = [dist.new_group([r]) for r in range(world)]
    dpa.set_context_parallel_group(singles[rank], [rank], None)  # a 1-rank group is no parallelism: allowed
    group = dist.new_group(list(range(world)))
    try:
        dpa.set_context_parallel_group(group, list(range(world)), None)
    except RuntimeError as exc:
        assert "context parallelism over 2 ranks is not supported" in str(exc), str(exc)
    else:
        raise AssertionError("a 2-rank context-parallel group was silently accepted")


def test_dot_product_attention_refuses_context_parallel(portable):
    run_ranks(_cp_worker, 2)


def test_flash_cute_backend_refused_off_cuda_and_saved_by_sac(portable, monkeypatch):
    """FlashAttention-4 (CuTe) backend: not in the CPU auto order, refused off CUDA with the reason (forced: one
    line), and its forward is the op SAC saves (a custom op; FA4's own kernels are invisible to a checkpoint policy).
    Its auto-selection for long sequences on sm90/sm100 is checked on the GPU (tests/ops/test_cuda.py)."""
    att, sac, fc = portable.attention, portable.sac, portable.flash_cute
    q = rand(1, 8, 2, 8)
    p = att.AttnParams(scale=0.3, causal=False, dropout_p=0.0, deterministic=False)
    assert "flash_cute" in att.BACKENDS
    assert "flash_cute" not in att.auto_order(q)
    assert "needs device cuda" in att.BACKENDS["flash_cute"].supports(q, q, q, p)
    monkeypatch.setenv("COSMOS_ATTN_BACKEND", "flash_cute")
    with pytest.raises(RuntimeError, match="'flash_cute' forced by COSMOS_ATTN_BACKEND cannot run this call"):
        att.attention(q, q, q)
    if not fc.available():  # the CI venv: the check names the missing package
        assert fc.import_error() == "flash_attn.cute is not installed (pip package flash-attn-4)"
    fwd, bwd = fc._define()
    assert fc._define()[0] is fwd  # defined once per process, whatever the package name it was loaded under
    assert sac.is_attention_op(fwd.default) and not sac.is_attention_op(bwd.default)
    assert not sac.is_attention_op(torch.ops.aten.mm.default)
    # Shapes without the kernels (fake tensors): out like q with v's head_dim, lse [B, H, S] in fp32.
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        qf, kf, vf = torch.empty(2, 40, 4, 64), torch.empty(2, 24, 4, 64), torch.empty(2, 24, 4, 32)
        out, lse = fwd(qf.bfloat16(), kf.bfloat16(), vf.bfloat16(), 0.125, False)
        assert tuple(out.shape) == (2, 40, 4, 32) and out.dtype == torch.bfloat16
        assert tuple(lse.shape) == (2, 4, 40) and lse.dtype == torch.float32


def test_flash_cute_forward_config(portable, monkeypatch):
    """FA4's forward tiling: COSMOS_FLASH_CUTE_FWD_TILE is parsed into `_flash_attn_fwd`'s keyword arguments (a bad
    value is one line naming the variable), read once per (device, head_dim, causal); without it the measured table
    FWD_CONFIGS (or FA4's own choice) applies. The kernels themselves run in tests/ops/test_cuda.py."""
    fc = portable.flash_cute
    assert fc.parse_fwd_config("128x176") == {"tile_mn": (128, 176)}
    assert fc.parse_fwd_config("192x128, rs=0, overlap=1, threads=512") == {
        "tile_mn": (192, 128), "mma_pv_is_rs": False, "intra_wg_overlap": True, "num_threads": 512}
    for bad in ("128", "128x", "axb", "128x128,fast=1", "128x128,rs"):
        with pytest.raises(ValueError) as exc:
            fc.parse_fwd_config(bad)
        assert str(exc.value).startswith("error: bad flash_cute forward config") and "\n" not in str(exc.value)
        assert "(COSMOS_FLASH_CUTE_FWD_TILE)" in str(exc.value)
    q = rand(1, 8, 2, 64)
    monkeypatch.setattr(fc, "_FWD_KW", {})
    monkeypatch.setenv("COSMOS_FLASH_CUTE_FWD_TILE", "128x160,rs=0")
    assert fc.fwd_kwargs(q, False) == {"tile_mn": (128, 160), "mma_pv_is_rs": False}
    monkeypatch.setenv("COSMOS_FLASH_CUTE_FWD_TILE", "64x64")  # decided once per key: a later change is not seen
    assert fc.fwd_kwargs(q, False)["tile_mn"] == (128, 160)
    monkeypatch.setattr(fc, "_FWD_KW", {})
    monkeypatch.delenv("COSMOS_FLASH_CUTE_FWD_TILE")
    monkeypatch.setitem(fc.FWD_CONFIGS, (0, 64, True), {"tile_mn": (64, 64)})  # key: (cc major; 0 off CUDA, hd, causal)
    assert fc.fwd_kwargs(q, False) == {} and fc.fwd_kwargs(q, True) == {"tile_mn": (64, 64)}
