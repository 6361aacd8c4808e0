"""The element-wise chains of the DiT block (adaLN modulation, gated residuals), one fused kernel each on CUDA.

Upstream's `Block.forward` runs, three times per block, `LayerNorm(x) * (1 + scale) + shift` (three kernels:
layer norm, multiply, add, each reading and writing the whole B*T*H*W*D activation) and `x + gate * y` (two
kernels). At 720p (84480 tokens x 2048 channels, bf16) each pass moves about 0.35 GB; in the 2B training step
these ATen kernels took 0.65 s of 12.24 s (BENCHMARKS.md section 2, profile). Compiled (CUDA, torch.compile via
`device.maybe_compile`), each chain is one kernel reading its inputs once and writing one output, and its
backward is fused the same way.

The eager functions are upstream's expressions, op for op, so on CPU and NPU (and with COSMOS_DISABLE_COMPILE=1)
the block computes exactly what upstream computes. Compiled, the intermediate roundings to bf16 disappear (the
chain runs in fp32 and rounds once): the result differs from eager by bf16 rounding only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import device


def modulate_reference(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, eps: float) -> torch.Tensor:
    """`LayerNorm(x) * (1 + scale) + shift`, LayerNorm without affine parameters (upstream's `_fn`)."""
    return F.layer_norm(x, (x.shape[-1],), eps=eps) * (1 + scale) + shift


def gated_residual_reference(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """`x + gate * y` (upstream's residual updates after self-attention, cross-attention and the MLP)."""
    return x + gate * y


_modulate_fast = device.maybe_compile(modulate_reference, "adaLN modulation")
_gated_residual_fast = device.maybe_compile(gated_residual_reference, "gated residual")


def modulate(norm: torch.nn.Module, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """`norm(x) * (1 + scale) + shift` for upstream's affine-free `nn.LayerNorm`; any other norm runs as given."""
    if isinstance(norm, torch.nn.LayerNorm) and norm.weight is None and norm.bias is None:
        return _modulate_fast(x, scale, shift, norm.eps)
    return norm(x) * (1 + scale) + shift


def gated_residual(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return _gated_residual_fast(x, gate, y)


__all__ = ["gated_residual", "gated_residual_reference", "modulate", "modulate_reference"]
