"""Portable RMSNorm (TE module semantics) on CPU against a float64 reference (fresh random inputs each run)."""

from __future__ import annotations

import pytest
import torch


def ref_rmsnorm(x, w, eps):
    x = x.double()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w.double()


def test_init_ones_and_reset_parameters(portable):
    norm = portable.rmsnorm.RMSNorm(64, eps=1e-6)
    assert torch.equal(norm.weight.detach(), torch.ones(64))
    with torch.no_grad():
        norm.weight.normal_()
    norm.reset_parameters()
    assert torch.equal(norm.weight.detach(), torch.ones(64))  # the anchor's reset gave zeros
    zc = portable.rmsnorm.RMSNorm(8, zero_centered_gamma=True)
    assert torch.equal(zc.weight.detach(), torch.zeros(8))
    x = torch.randn(3, 8)
    torch.testing.assert_close(zc(x).double(), ref_rmsnorm(x, torch.ones(8), 1e-6), atol=1e-6, rtol=1e-5)


def test_te_compat_namespace(portable):
    norm = portable.te_compat.pytorch.RMSNorm(16, eps=1e-6)
    assert isinstance(norm, portable.rmsnorm.RMSNorm) and norm.eps == 1e-6


@pytest.mark.parametrize("eps", [1e-6, 1e-2])
def test_fp32_matches_fp64(portable, eps):
    norm = portable.rmsnorm.RMSNorm(96, eps=eps)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(96))
    x = torch.randn(4, 7, 96) * 3
    out = norm(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref_rmsnorm(x, norm.weight, eps), atol=1e-5, rtol=1e-5)


def test_dtype_semantics(portable):
    # bf16 weight: input cast to bf16, fp32 math, bf16 output == fp32-math result rounded once
    norm = portable.rmsnorm.RMSNorm(128, params_dtype=torch.bfloat16)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(128))
    x = torch.randn(5, 128)  # fp32 input into a bf16-weight norm
    out = norm(x)
    assert out.dtype == torch.bfloat16
    expected = ref_rmsnorm(x.bfloat16(), norm.weight, 1e-6).to(torch.bfloat16)
    assert (out != expected).float().mean() < 0.01
    # fp32 weight with bf16 input: output in the weight dtype (fp32)
    norm32 = portable.rmsnorm.RMSNorm(128)
    xb = torch.randn(5, 128).bfloat16()
    out32 = norm32(xb)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), ref_rmsnorm(xb, norm32.weight, 1e-6), atol=1e-5, rtol=1e-5)


def test_backward(portable):
    norm = portable.rmsnorm.RMSNorm(32)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(32))
    x = torch.randn(6, 32, requires_grad=True)
    g = torch.randn(6, 32)
    (norm(x) * g).sum().backward()
    xd = x.detach().double().requires_grad_()
    wd = norm.weight.detach().double().requires_grad_()
    (ref_rmsnorm(xd, wd, 1e-6) * g.double()).sum().backward()
    torch.testing.assert_close(x.grad.double(), xd.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(norm.weight.grad.double(), wd.grad, atol=1e-5, rtol=1e-4)


def test_extra_state_round_trip_and_strict_te_checkpoint_load(portable):
    model = torch.nn.Sequential(portable.rmsnorm.RMSNorm(16), portable.rmsnorm.RMSNorm(16))
    sd = model.state_dict()
    assert set(sd) == {"0.weight", "0._extra_state", "1.weight", "1._extra_state"}
    # a TE-made checkpoint: weights plus an _extra_state blob per module (bytes-like or tensor)
    te_sd = {
        "0.weight": torch.randn(16),
        "0._extra_state": torch.tensor([7, 1, 2], dtype=torch.uint8),
        "1.weight": torch.randn(16),
        "1._extra_state": None,
    }
    model.load_state_dict(te_sd, strict=True)
    assert torch.equal(model[0].weight.detach(), te_sd["0.weight"])
    missing = {k: v for k, v in te_sd.items() if k != "1._extra_state"}
    with pytest.raises(RuntimeError, match="_extra_state"):
        model.load_state_dict(missing, strict=True)  # strictness is kept: the entry is really expected


def test_meta_init_then_assign_load(portable):
    with torch.device("meta"):
        norm = portable.rmsnorm.RMSNorm(8)
    assert norm.weight.is_meta
    norm.load_state_dict({"weight": torch.randn(8), "_extra_state": torch.empty(0, dtype=torch.uint8)}, assign=True)
    assert not norm.weight.is_meta
