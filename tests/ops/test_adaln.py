"""portable/adaln.py: the fused adaLN modulation and gated residual (patch 0035).

On CUDA their forward and backward are compiled kernels; the math of both directions is the same Python that
runs eagerly here, so float64 gradcheck on CPU checks the hand-written backward (LayerNorm backward, reductions
over the broadcast dimensions, shapes) that CUDA compiles. tests/ops/test_cuda.py checks the compiled kernels."""

from __future__ import annotations

import pytest
import torch

from portable_loader import load_portable


@pytest.fixture(scope="module")
def adaln():
    return load_portable().adaln


@pytest.mark.parametrize("shape,small", [((1, 2, 3, 4, 8), (1, 2, 1, 1, 8)), ((1, 1, 3, 4, 8), (1, 1, 1, 1, 8)),
                                         ((2, 3, 8), (2, 3, 8))])
def test_fused_modulate_gradcheck(adaln, shape, small):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
    scale = (0.3 * torch.randn(small, generator=g, dtype=torch.float64)).requires_grad_()
    shift = torch.randn(small, generator=g, dtype=torch.float64, requires_grad=True)
    fused = adaln.FusedModulate.apply(x, scale, shift, 1e-6)
    assert torch.allclose(fused, adaln.modulate_reference(x, scale, shift, 1e-6), atol=1e-12)
    assert torch.autograd.gradcheck(lambda *a: adaln.FusedModulate.apply(*a, 1e-6), (x, scale, shift))


@pytest.mark.parametrize("shape,small", [((1, 2, 3, 4, 8), (1, 2, 1, 1, 8)), ((1, 1, 3, 4, 8), (1, 1, 1, 1, 8))])
def test_fused_gated_residual_gradcheck(adaln, shape, small):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
    gate = torch.randn(small, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.equal(adaln.FusedGatedResidual.apply(x, gate, y), adaln.gated_residual_reference(x, gate, y))
    assert torch.autograd.gradcheck(adaln.FusedGatedResidual.apply, (x, gate, y))


def test_cpu_runs_upstream_expressions(adaln):
    """Off CUDA the public functions are upstream's eager expressions, bit for bit (bf16 included)."""
    norm = torch.nn.LayerNorm(8, elementwise_affine=False, eps=1e-6)
    x = torch.randn(1, 2, 3, 4, 8).bfloat16()
    scale, shift, gate = (torch.randn(1, 2, 1, 1, 8).bfloat16() for _ in range(3))
    assert torch.equal(adaln.modulate(norm, x, scale, shift), norm(x) * (1 + scale) + shift)
    assert torch.equal(adaln.gated_residual(x, gate, x * 2), x + gate * (x * 2))
