"""RMSNorm with TransformerEngine's module semantics, on NPU, CUDA and CPU.

As `transformer_engine.pytorch.RMSNorm` is used by upstream's DiT (q/k norms, t-embedding norm):
- weight initialised to ONES (`reset_parameters()` too; zero_centered_gamma=False). With
  zero_centered_gamma=True the weight starts at zeros and the scale is (1 + weight), as in TE.
- the input is cast to the weight dtype, normalised and scaled in fp32, and the output is in the weight dtype.
- the module emits an `_extra_state` entry in `state_dict()` and accepts any `_extra_state` on load, so strict
  loads of checkpoints written with TE work, and checkpoints written here load into TE.
Kernels: NPU torch_npu.npu_rms_norm (gamma and x in the same dtype, output [0]); CUDA torch.compile'd (eager
fallback); CPU eager.
"""

from __future__ import annotations

import torch
from torch import nn

from . import device


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float, zero_centered_gamma: bool = False):
    """Eager fp32 math: x cast to weight dtype, fp32 normalise and scale, result in the weight dtype."""
    x32 = x.to(weight.dtype).float()
    w32 = weight.float()
    if zero_centered_gamma:
        w32 = w32 + 1.0
    y = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + eps)
    return (y * w32).to(weight.dtype)


_rms_norm_fast = device.maybe_compile(rms_norm_reference, "RMSNorm")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, zero_centered_gamma: bool = False) -> torch.Tensor:
    if device.DEVICE_TYPE == "npu" and not zero_centered_gamma:  # dispatch on the detected device, not x.device
        npu = device.npu_module()
        # npu_rms_norm requires gamma and x in the same dtype; TE semantics cast x to the weight dtype.
        return npu.npu_rms_norm(x.to(weight.dtype), weight, epsilon=eps)[0]
    return _rms_norm_fast(x, weight, eps, zero_centered_gamma)


class RMSNorm(nn.Module):
    def __init__(
        self,
        hidden_size: int,
        eps: float = 1e-6,
        sequence_parallel: bool | None = None,
        params_dtype: torch.dtype | None = None,
        zero_centered_gamma: bool = False,
        device: torch.device | str | None = None,
        **unused,
    ) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.eps = eps
        self.zero_centered_gamma = zero_centered_gamma
        self.sequence_parallel = sequence_parallel
        self.weight = nn.Parameter(
            torch.empty(hidden_size, dtype=params_dtype or torch.get_default_dtype(), device=device)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # TE: ones (or zeros when zero-centred). The anchor's zeros made q = k = 0 after any random init.
        with torch.no_grad():
            if self.zero_centered_gamma:
                nn.init.zeros_(self.weight)
            else:
                nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps, self.zero_centered_gamma)

    def extra_repr(self) -> str:
        return f"{self.hidden_size}, eps={self.eps}, zero_centered_gamma={self.zero_centered_gamma}"

    def get_extra_state(self) -> torch.Tensor:
        return torch.empty(0, dtype=torch.uint8)

    def set_extra_state(self, state) -> None:
        return None  # TE's FP8 metadata has no meaning here
