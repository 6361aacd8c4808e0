"""portable/ema_overlap.py off CUDA: the EMA update stays in line (nothing pending, nothing to wait for), and a bad
COSMOS_EMA_OVERLAP is a one-line error. The side stream itself is checked on a GPU (tests/ops/test_cuda.py)."""

from __future__ import annotations

import pytest
import torch


def test_in_line_on_cpu(portable, monkeypatch):
    eo = portable.ema_overlap
    monkeypatch.delenv("COSMOS_EMA_OVERLAP", raising=False)
    ema, src = torch.ones(8), torch.full((8,), 3.0).bfloat16()
    with eo.side_stream(ema.device):
        ema.mul_(0.5).add_(src, alpha=0.5)
    assert eo.pending() == 0 and not eo.enabled(ema.device)
    eo.wait()  # no-op
    assert torch.equal(ema, torch.full((8,), 2.0))
    assert not eo.enabled(torch.device("cuda"))  # off by default
    monkeypatch.setenv("COSMOS_EMA_OVERLAP", "1")
    assert eo.enabled(torch.device("cuda")) and not eo.enabled(torch.device("cpu"))
    monkeypatch.setenv("COSMOS_EMA_OVERLAP", "later")
    with pytest.raises(ValueError, match="COSMOS_EMA_OVERLAP='later' is not a boolean"):
        eo.enabled(torch.device("cuda"))
