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
