"""The element-wise chains of the DiT block (adaLN modulation, gated residuals), one fused kernel each on CUDA.

Upstream's `Block.forward` runs, three times per block, `LayerNorm(x) * (1 + scale) + shift` (three kernels:
layer norm, multiply, add, each reading and writing the whole B*T*H*W*D activation) and `x + gate * y` (two
kernels). At 720p (84480 tokens x 2048 channels, bf16) each pass moves about 0.35 GB; in the 2B training step
these ATen kernels took 0.65 s of 12.24 s (BENCHMARKS.md section 2, profile).

On CUDA each chain is an autograd.Function whose forward and backward are each one compiled kernel
(`device.maybe_compile`; eager if compiling fails). The backward is written out rather than derived by
torch.compile's autograd: on torch 2.11 the derived backward returned the gradient of a (1, 1, 1, 1, D) scale as
(D,) (H200, 2026-12-01), and written out, the reductions over broadcast dimensions and the shapes are ours.

Everywhere else (CPU, NPU, COSMOS_DISABLE_COMPILE=1) the block runs upstream's expressions op for op, so it
computes exactly what upstream computes. Fused, the chain runs in fp32 and rounds once, so it differs from the
eager bf16 chain by bf16 rounding only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import device

ENABLED = True  # bench/bench_dit.py's "ours_unfused" variant turns the fused path off to measure its gain
# Below this many activation elements the step is bound by the host's launch rate, not by memory traffic, and
# fusing gains nothing measurable: Text2Image 2B at 768x1360 (8.4M elements) trained at 0.75-0.85 s per step fused
# or not (H200, four alternating runs, BENCHMARKS.md section 2c), so there it keeps upstream's exact eager math.
# 480p/720p Video2World (77M/173M elements) gain (720p: 12.14 -> 11.92 s per training step).
FUSE_MIN_NUMEL = 1 << 25


def modulate_reference(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, eps: float) -> torch.Tensor:
    """`LayerNorm(x) * (1 + scale) + shift`, LayerNorm without affine parameters (upstream's `_fn`)."""
    return F.layer_norm(x, (x.shape[-1],), eps=eps) * (1 + scale) + shift


def gated_residual_reference(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """`x + gate * y` (upstream's residual updates after self-attention, cross-attention and the MLP)."""
    return x + gate * y


def _broadcast_dims(small: torch.Tensor, big: torch.Tensor) -> tuple[int, ...]:
    return tuple(i for i in range(big.dim()) if small.shape[i] == 1 and big.shape[i] != 1)


def _sum_to(t: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    return t.sum(dims, keepdim=True) if dims else t  # sum(()) would reduce over every dimension


def _up(t: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 computed in fp32 (one rounding at the end); fp32/fp64 as they are."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


# -- adaLN modulation: forward saves x, mean and rstd (two floats per token); backward is the LayerNorm backward.
def _modulate_fwd(x, scale, shift, eps: float):
    xf = _up(x)
    mean = xf.mean(-1, keepdim=True)
    rstd = torch.rsqrt((xf - mean).pow(2).mean(-1, keepdim=True) + eps)
    out = (xf - mean) * rstd * (1 + _up(scale)) + _up(shift)
    return out.to(torch.result_type(x, scale)), mean, rstd


def _modulate_bwd(grad, x, scale, mean, rstd, dims: tuple[int, ...]):
    g = _up(grad)
    n = (_up(x) - mean) * rstd
    dn = g * (1 + _up(scale))
    dx = rstd * (dn - dn.mean(-1, keepdim=True) - n * (dn * n).mean(-1, keepdim=True))
    return dx.to(x.dtype), _sum_to(g * n, dims), _sum_to(g, dims)


def _gated_residual_fwd(x, gate, y):
    return x + gate * y


def _gated_residual_bwd(grad, gate, y, dims: tuple[int, ...]):
    g = _up(grad)
    return (g * _up(gate)).to(y.dtype), _sum_to(g * _up(y), dims)


_modulate_fwd_fast = device.maybe_compile(_modulate_fwd, "adaLN modulation")
_modulate_bwd_fast = device.maybe_compile(_modulate_bwd, "adaLN modulation backward")
_gated_residual_fwd_fast = device.maybe_compile(_gated_residual_fwd, "gated residual")
_gated_residual_bwd_fast = device.maybe_compile(_gated_residual_bwd, "gated residual backward")


class FusedModulate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, shift, eps):
        out, mean, rstd = _modulate_fwd_fast(x, scale, shift, eps)
        ctx.save_for_backward(x, scale, mean, rstd)
        ctx.shapes = (scale.shape, scale.dtype, shift.shape, shift.dtype)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, scale, mean, rstd = ctx.saved_tensors
        scale_shape, scale_dtype, shift_shape, shift_dtype = ctx.shapes
        dx, dscale, dshift = _modulate_bwd_fast(grad, x, scale, mean, rstd, _broadcast_dims(scale, x))
        return dx, dscale.reshape(scale_shape).to(scale_dtype), dshift.reshape(shift_shape).to(shift_dtype), None


class FusedGatedResidual(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, gate, y):
        ctx.save_for_backward(gate, y)
        ctx.x_dtype = x.dtype
        return _gated_residual_fwd_fast(x, gate, y)

    @staticmethod
    def backward(ctx, grad):
        gate, y = ctx.saved_tensors
        dy, dgate = _gated_residual_bwd_fast(grad, gate, y, _broadcast_dims(gate, y))
        return grad.to(ctx.x_dtype), dgate.reshape(gate.shape).to(gate.dtype), dy


def _fused(x: torch.Tensor, *broadcast: torch.Tensor) -> bool:
    # Inside a compiled block the reference expressions are traced and fused with the rest of the block.
    return (ENABLED and x.numel() >= FUSE_MIN_NUMEL and x.device.type == "cuda" and device.compile_enabled()
            and not device.compiling()
            and all(t.dim() == x.dim() and t.shape[-1] == x.shape[-1] and t.dtype == x.dtype for t in broadcast))


def modulate(norm: torch.nn.Module, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """`norm(x) * (1 + scale) + shift`; fused for upstream's affine-free `nn.LayerNorm` over the last dimension."""
    plain_ln = (isinstance(norm, torch.nn.LayerNorm) and norm.weight is None and norm.bias is None
                and tuple(norm.normalized_shape) == (x.shape[-1],))
    if not plain_ln:
        return norm(x) * (1 + scale) + shift
    if _fused(x, scale, shift) and scale.shape == shift.shape:
        return FusedModulate.apply(x, scale, shift, norm.eps)
    return modulate_reference(x, scale, shift, norm.eps)


def gated_residual(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if _fused(x, gate, y) and y.shape == x.shape:
        return FusedGatedResidual.apply(x, gate, y)
    return gated_residual_reference(x, gate, y)


__all__ = ["FusedGatedResidual", "FusedModulate", "gated_residual", "gated_residual_reference", "modulate",
           "modulate_reference"]
