"""Reproducibility helpers for parity runs (CPU vs CUDA vs NPU, CP=1 vs CP=2, resumed vs uninterrupted).

- `PerIterationSeed`: a trainer callback that reseeds Python, NumPy, torch and the device RNG with
  `seed + iteration` at the start of every step, so the random draws of a step (noise, sigma, conditional frames,
  text dropout, the next batch's frame window) depend on the iteration only, not on what ran before (a resumed run
  then draws exactly what the uninterrupted run drew). Register it with
  `++trainer.callbacks.per_iteration_seed={_target_:cosmos_predict2.portable.determinism.PerIterationSeed,seed:0}`.
- `randn`: the training noise draw. With COSMOS_NOISE_ON_CPU=1 the noise comes from the CPU generator and is
  moved to the device, so different device kinds see the same noise for the same seed.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from imaginaire.utils.callback import Callback

from . import device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    device.manual_seed_all(seed)


def randn(shape, device_: torch.device | str, dtype: torch.dtype | None = None) -> torch.Tensor:
    if device.env_flag("COSMOS_NOISE_ON_CPU"):
        return torch.randn(shape, dtype=dtype).to(device_)
    return torch.randn(shape, device=device_, dtype=dtype)


class PerIterationSeed(Callback):
    """fixed=True reseeds with the same seed at every step: the same noise, sigma and masks each iteration (with
    a one-sample dataset, one fixed batch to overfit)."""

    def __init__(self, seed: int = 0, fixed: bool = False):
        super().__init__()
        self.seed = int(seed)
        self.fixed = bool(fixed)

    def on_training_step_start(self, model, data_batch, iteration: int = 0) -> None:
        seed_everything(self.seed if self.fixed else self.seed + int(iteration))
