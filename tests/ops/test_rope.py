"""Portable RoPE on CPU against a float64 rotate-half reference (fresh random inputs each run)."""

from __future__ import annotations

import pytest
import torch


def cosmos_like_freqs(S: int, D: int) -> torch.Tensor:
    """fp32 [S, 1, 1, D] built as upstream does: half-dim angles concatenated twice (rotate-half layout)."""
    inv = 1.0 / (10000 ** (torch.arange(0, D, 2, dtype=torch.float32) / D))
    pos = torch.arange(S, dtype=torch.float32) + torch.rand(1) * 50  # random offset: fresh angles each run
    half = torch.outer(pos, inv)
    return torch.cat([half, half], dim=-1)[:, None, None, :].contiguous()


def rot_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rot_interleaved(x):
    return torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2)


def ref_rope(t, freqs, fmt, interleaved=False):
    """float64 reference; positions along dim 0 (sbhd) or 1 (bshd); channels beyond freqs' last dim pass."""
    S = t.shape[0] if fmt == "sbhd" else t.shape[1]
    f = freqs[:S].double()
    if fmt == "bshd":
        f = f.transpose(0, 1)
    d2 = f.shape[-1]
    x = t[..., :d2].double()
    rot = rot_interleaved if interleaved else rot_half
    y = x * torch.cos(f) + rot(x) * torch.sin(f)
    return torch.cat([y, t[..., d2:].double()], dim=-1)


def anchor_rope_bf16(t, freqs):
    """The Ascend adaptation's RoPE: cos/sin cast to bf16 before a bf16 multiply (bshd)."""
    f = freqs[: t.shape[1]].transpose(0, 1)
    cos, sin = torch.cos(f).to(t.dtype), torch.sin(f).to(t.dtype)
    return t * cos + rot_half(t) * sin


def te_fp32_mismatch(out, t, freqs, fmt):
    """Fraction of elements that differ from 'fp32 cos/sin and multiply, one cast' (TE's fused kernel)."""
    expected = ref_rope(t, freqs, fmt).to(t.dtype)
    return (out != expected).float().mean().item()


@pytest.mark.parametrize("fmt", ["sbhd", "bshd"])
@pytest.mark.parametrize("interleaved", [False, True])
def test_rope_fp32_matches_fp64(portable, fmt, interleaved):
    S, B, H, D = 24, 2, 3, 32
    t = torch.randn((S, B, H, D) if fmt == "sbhd" else (B, S, H, D))
    freqs = cosmos_like_freqs(S + 5, D)  # longer than S: the first S positions are used
    out = portable.rope.apply_rotary_pos_emb(t, freqs, tensor_format=fmt, interleaved=interleaved, fused=True)
    assert out.shape == t.shape and out.dtype == t.dtype
    ref = ref_rope(t, freqs, fmt, interleaved)
    torch.testing.assert_close(out.double(), ref, atol=2e-6, rtol=1e-5)
    assert (ref - ref_rope(t, freqs, fmt, not interleaved)).abs().max() > 1e-2  # the reference discriminates


def test_rope_bf16_follows_te_fp32_semantics_and_catches_anchor_defect(portable):
    B, S, H, D = 2, 256, 4, 128
    t = torch.randn(B, S, H, D).bfloat16()
    freqs = cosmos_like_freqs(S, D)
    out = portable.rope.apply_rotary_pos_emb(t, freqs, tensor_format="bshd", fused=True)
    assert out.dtype == torch.bfloat16
    ours = te_fp32_mismatch(out, t, freqs, "bshd")
    anchor = te_fp32_mismatch(anchor_rope_bf16(t, freqs), t, freqs, "bshd")
    # fp32 math with one rounding equals the correctly rounded fp64 result except at rare rounding ties
    assert ours < 0.002, ours
    # casting cos/sin to bf16 first (the anchor's defect) moves a large share of outputs: this check catches it
    assert anchor > 0.05, anchor
    err_ours = (out.double() - ref_rope(t, freqs, "bshd")).abs().mean()
    err_anchor = (anchor_rope_bf16(t, freqs).double() - ref_rope(t, freqs, "bshd")).abs().mean()
    assert err_ours < 0.7 * err_anchor


@pytest.mark.parametrize("fmt", ["sbhd", "bshd"])
def test_partial_rotary_passes_the_rest_through(portable, fmt):
    S, B, H, D, D2 = 12, 2, 2, 48, 32
    t = torch.randn((S, B, H, D) if fmt == "sbhd" else (B, S, H, D)).bfloat16()
    freqs = cosmos_like_freqs(S, D2)
    out = portable.rope.apply_rotary_pos_emb(t, freqs, tensor_format=fmt)
    assert torch.equal(out[..., D2:], t[..., D2:])
    assert te_fp32_mismatch(out, t, freqs, fmt) < 0.01


def test_rope_backward_matches_fp64(portable):
    t = torch.randn(2, 10, 2, 16, requires_grad=True)
    freqs = cosmos_like_freqs(10, 16)
    g = torch.randn(2, 10, 2, 16)
    (portable.rope.apply_rotary_pos_emb(t, freqs, "bshd") * g).sum().backward()
    td = t.detach().double().requires_grad_()
    (ref_rope(td, freqs, "bshd") * g.double()).sum().backward()
    torch.testing.assert_close(t.grad.double(), td.grad, atol=1e-6, rtol=1e-5)


def test_thd_and_start_positions(portable):
    rope = portable.rope
    H, D = 2, 16
    lens = [5, 9, 3]
    freqs = cosmos_like_freqs(20, D)
    t = torch.randn(sum(lens), H, D)
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    out = rope.apply_rotary_pos_emb(t, freqs, tensor_format="thd", cu_seqlens=cu)
    parts = [ref_rope(x.unsqueeze(1), freqs, "sbhd").squeeze(1) for x in torch.split(t, lens)]
    torch.testing.assert_close(out.double(), torch.cat(parts), atol=2e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="cu_seqlens"):
        rope.apply_rotary_pos_emb(t, freqs, tensor_format="thd")
    with pytest.raises(ValueError, match="beyond freqs length"):
        rope.apply_rotary_pos_emb(torch.randn(2, 6, H, D), freqs, "bshd", start_positions=torch.tensor([0, 17]))
    # context parallel (TE's load-balanced split): rank r holds chunks r and 2*cp-1-r of the full sequence
    full = torch.randn(1, 8, H, D)
    ref_full = ref_rope(full, freqs, "bshd")
    for r in range(2):
        idx = torch.cat([torch.arange(2 * r, 2 * r + 2), torch.arange(6 - 2 * r, 8 - 2 * r)])
        out = rope.apply_rotary_pos_emb(full[:, idx], freqs, "bshd", cp_size=2, cp_rank=r)
        torch.testing.assert_close(out.double(), ref_full[:, idx], atol=2e-6, rtol=1e-5)

    x = torch.randn(2, 6, H, D)
    starts = torch.tensor([0, 4])
    out = rope.apply_rotary_pos_emb(x, freqs, tensor_format="bshd", start_positions=starts)
    for b in range(2):
        ref = ref_rope(x[b : b + 1], freqs[int(starts[b]) :], "bshd")
        torch.testing.assert_close(out[b : b + 1].double(), ref, atol=2e-6, rtol=1e-5)


def test_rope_input_errors(portable):
    t = torch.randn(2, 8, 2, 16)
    with pytest.raises(ValueError, match="exceeds freqs length"):
        portable.rope.apply_rotary_pos_emb(t, cosmos_like_freqs(4, 16), "bshd")
    with pytest.raises(ValueError, match="tensor_format"):
        portable.rope.apply_rotary_pos_emb(t, cosmos_like_freqs(8, 16), "bhsd")


def test_cos_sin_cache_once_per_freqs_and_invalidated_by_changes(portable):
    rope = portable.rope
    rope.clear_cache()
    stats = rope.cache_stats
    B, S, H, D = 1, 16, 2, 32
    freqs = cosmos_like_freqs(S, D)
    q, k = torch.randn(B, S, H, D), torch.randn(B, S, H, D)
    c0, h0 = stats["computed"], stats["hits"]
    for _ in range(3):  # three "blocks", q and k each: one cos/sin computation for the whole forward
        rope.apply_rotary_pos_emb(q, freqs, "bshd", fused=True)
        rope.apply_rotary_pos_emb(k, freqs, "bshd", fused=True)
    assert stats["computed"] - c0 == 1 and stats["hits"] - h0 == 5

    freqs.mul_(1.5)  # in-place change bumps _version: must recompute and use the new angles
    out = rope.apply_rotary_pos_emb(q, freqs, "bshd")
    assert stats["computed"] - c0 == 2
    torch.testing.assert_close(out.double(), ref_rope(q, freqs, "bshd"), atol=2e-6, rtol=1e-5)

    freqs2 = cosmos_like_freqs(S, D)  # a new tensor (the next forward pass): recomputed
    out2 = rope.apply_rotary_pos_emb(q, freqs2, "bshd")
    assert stats["computed"] - c0 == 3
    torch.testing.assert_close(out2.double(), ref_rope(q, freqs2, "bshd"), atol=2e-6, rtol=1e-5)

    del freqs, freqs2  # freed tensors never match a new tensor that reuses their address
    for _ in range(3):
        f = cosmos_like_freqs(S, D)
        o = rope.apply_rotary_pos_emb(q, f, "bshd")
        torch.testing.assert_close(o.double(), ref_rope(q, f, "bshd"), atol=2e-6, rtol=1e-5)
        del f
    assert len(rope._cache) <= rope._CACHE_SIZE
    live = cosmos_like_freqs(S, D)
    rope.apply_rotary_pos_emb(q, live, "bshd")
    n = len(rope._cache)
    del live  # freeing the freqs tensor releases its cached cos/sin
    assert len(rope._cache) == n - 1
