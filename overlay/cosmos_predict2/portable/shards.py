"""The local shard of a DTensor without a dispatch: for the per-parameter loops that run every step.

`DTensor.to_local()` goes through an autograd function and the DTensor dispatcher (a view op per call), and
`p.data` of a DTensor parameter is one more DTensor op. With FSDP2 every parameter is a DTensor, so loops over all
parameters every step (the optimizer, the EMA update) pay 2-4 such dispatches per parameter: about 2,300 per step
on the 2B DiT (567 parameters), host time that lands on the step when it is launch-bound. `local_shard` returns the
DTensor's local tensor itself: the same storage as `to_local()` (in-place updates through either are the same
update), no autograd edge, no dispatch. Only for code that runs under no_grad and updates or reads shards in place.
"""

from __future__ import annotations

import torch

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # torch builds without distributed
    DTensor = None


def local_shard(t: torch.Tensor) -> torch.Tensor:
    """`t.to_local()` for a DTensor (its local tensor, no dispatch), `t` for any other tensor."""
    if DTensor is None or not isinstance(t, DTensor):
        return t
    local = getattr(t, "_local_tensor", None)
    if local is None or type(local).__name__ == "AsyncCollectiveTensor":  # private layout changed, or comms pending
        return t.to_local()
    return local


def finite_target(grad: torch.Tensor) -> torch.Tensor:
    """Where GradClip's in-place nan_to_num of `grad` can run without a DTensor dispatch: the local shard when every
    placement is Shard or Replicate (an element-wise op on each shard is the op on the whole tensor), the DTensor
    itself when a placement is Partial (pending sums: DTensor decides how to apply a non-linear op to those)."""
    if DTensor is None or not isinstance(grad, DTensor):
        return grad
    if any(p.is_partial() for p in grad.placements):
        return grad
    return local_shard(grad)


def all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether every element of every tensor is finite, from one fused norm per (device, dtype) group and one host
    read, instead of one op per tensor. GradClip uses it to skip its per-gradient nan_to_num when that would change
    nothing. Answers False (the caller's per-tensor path, still correct) for DTensors (a Partial placement's pending
    sums) and when a norm of finite values overflows to inf."""
    if not tensors:
        return True
    if DTensor is not None and any(isinstance(t, DTensor) for t in tensors):
        return False
    groups: dict = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    flags = []
    for group in groups.values():
        try:
            norms = torch._foreach_norm(group)
        except (NotImplementedError, RuntimeError):  # a backend without the fused kernel
            norms = [torch.linalg.vector_norm(t) for t in group]
        flags.append(torch.isfinite(torch.stack([n.float() for n in norms]).sum()).to("cpu"))
    return bool(torch.stack(flags).all())
