"""Fixtures for the portable-ops tests; the loader itself lives in portable_loader.py.

Tests get the CPU instance through `portable`, the CUDA instance through `cuda_portable` (skipped without a GPU),
and NPU-branch tests a separate instance with the torch_npu test double installed (`npu_portable`).
"""

from __future__ import annotations

import sys

import pytest

from portable_loader import PKG_NAME, load_fake_torch_npu, load_portable, load_with_device, unload


@pytest.fixture(scope="session")
def portable():
    """The package with the CPU device forced (the CPU paths are what these tests check, also on a GPU host)."""
    return load_with_device(PKG_NAME, "cpu")


@pytest.fixture(scope="session")
def cuda_portable():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    return load_with_device(PKG_NAME + "_cuda", "cuda")


@pytest.fixture
def npu_portable(monkeypatch):
    """A separate instance of the portable package that detected 'npu' through the torch_npu TEST DOUBLE
    (tests/doubles/fake_torch_npu.py, which implements torch_npu's documented math on host tensors)."""
    import torch

    fake = load_fake_torch_npu()
    monkeypatch.setitem(sys.modules, "torch_npu", fake)
    monkeypatch.setattr(torch, "npu", fake.npu, raising=False)
    monkeypatch.setenv("COSMOS_DEVICE", "npu")
    monkeypatch.delenv("COSMOS_ATTN_BACKEND", raising=False)
    name = PKG_NAME + "_npu"
    pkg = load_portable(name)
    pkg.fake = fake
    yield pkg
    unload(name)
