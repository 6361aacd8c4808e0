"""The local shard of a DTensor without a dispatch: for the per-parameter loops that run every step.

`DTensor.to_local()` goes through an autograd function and the DTensor dispatcher (a view op per call), and
`p.data` of a DTensor parameter is one more DTensor op. With FSDP2 every parameter is a DTensor, so loops over all
parameters every step (the optimizer, the EMA update) pay 2-4 such dispatches per parameter: about 2,300 per step
on the 2B DiT (567 parameters), host time that lands on the step when it is launch-bound. `local_shard` returns the
DTensor's local tensor itself: the same storage as `to_local()` (in-place updates through either are the same
update), no autograd edge, no dispatch. Only for code that runs under no_grad and updates or reads shards in place.
"""

from __future__ import annotations

from typing import NamedTuple

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


def _by_device_dtype(tensors: list[torch.Tensor]) -> dict:
    """{(device, dtype): [tensors]} in first-seen order: the groups a fused foreach kernel takes."""
    groups: dict = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    return groups


def _norms(group: list[torch.Tensor]) -> list[torch.Tensor]:
    """The 2-norm of each tensor of one (device, dtype) group: one fused kernel, per tensor where the backend lacks it."""
    try:
        return list(torch._foreach_norm(group, 2.0))
    except (NotImplementedError, RuntimeError):  # a backend without the fused kernel
        return [torch.linalg.vector_norm(t, 2.0) for t in group]


def all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether every element of every tensor is finite, from one fused norm per (device, dtype) group and one host
    read, instead of one op per tensor. GradClip uses it to skip its per-gradient nan_to_num when that would change
    nothing. Answers False (the caller's per-tensor path, still correct) for DTensors (a Partial placement's pending
    sums) and when a norm of finite values overflows to inf."""
    if not tensors:
        return True
    if DTensor is not None and any(isinstance(t, DTensor) for t in tensors):
        return False
    flags = []
    for group in _by_device_dtype(tensors).values():
        flags.append(torch.isfinite(torch.stack([n.float() for n in _norms(group)]).sum()).to("cpu"))
    return bool(torch.stack(flags).all())


def _shard_groups(grads: list[torch.Tensor]):
    """(eligible, process groups to sum over) for clip_grad_norm_local: plain tensors (no group), or DTensors on one
    mesh with the same placements, each Shard or Replicate (FSDP2, and HSDP's (Replicate, Shard)): the squares of
    the local shards are summed over the Shard dimensions' groups (of more than one rank) and not over Replicate
    ones, which hold copies. Partial placements (pending sums), or mixed meshes/placements, are not eligible."""
    if DTensor is None or not any(isinstance(g, DTensor) for g in grads):
        return True, []
    if not all(isinstance(g, DTensor) for g in grads):
        return False, []
    mesh, kinds = grads[0].device_mesh, [p.is_shard() for p in grads[0].placements]
    for g in grads:
        if g.device_mesh != mesh or [p.is_shard() for p in g.placements] != kinds:
            return False, []
        if not all(p.is_shard() or p.is_replicate() for p in g.placements):
            return False, []
    return True, [mesh.get_group(d) for d, shard in enumerate(kinds) if shard and mesh.size(d) > 1]


def _local_total_norm(grads: list[torch.Tensor]):
    """(local shards, their (device, dtype) groups, a function returning the total 2-norm) for the clip functions
    below, or None when the gradients are not eligible (see _shard_groups)."""
    if not grads:
        return None
    eligible, groups_to_sum = _shard_groups(grads)
    if not eligible:
        return None
    local = [local_shard(g) for g in grads]
    groups = _by_device_dtype(local)
    dev = local[0].device

    def total_norm() -> torch.Tensor:
        norms = [n for ts in groups.values() for n in _norms(ts)]
        if any(n.device != dev for n in norms):  # else no `.to` per tensor: ~600 dispatches on the 2B net's step
            norms = [n.to(dev) for n in norms]
        stacked = torch.stack(norms)
        if not groups_to_sum:  # one process holds every element: torch's clip_grad_norm_ arithmetic
            return torch.linalg.vector_norm(stacked, 2.0)
        sq = stacked.float().pow(2).sum()
        for pg in groups_to_sum:
            torch.distributed.all_reduce(sq, group=pg)
        return sq.sqrt()

    total_norm.groups_to_sum = groups_to_sum  # the process groups a sum over the local shards is all-reduced over
    return local, groups, total_norm


def _clip_coef(total: torch.Tensor, max_norm: float) -> torch.Tensor:
    """torch's clip coefficient: both clip paths take it from here, so they scale by the same value, bitwise."""
    return torch.clamp(max_norm / (total + 1e-6), max=1.0)


def _scale(groups: dict, coef: torch.Tensor) -> None:
    for (d, _), ts in groups.items():
        torch._foreach_mul_(ts, coef.to(d))


def _scale_for(optimizer, groups: dict, coef: torch.Tensor, n_grads: int) -> None:
    """The gradients times `coef`: inside the optimizer's next update where it takes that (FusedAdam's
    scale_grads_in_next_step), else in place now."""
    in_step = getattr(optimizer, "scale_grads_in_next_step", None)
    if in_step is None or not in_step(coef, n_grads):
        _scale(groups, coef)


def clip_grad_norm_local(grads: list[torch.Tensor], max_norm: float, force_finite: bool = True):
    """GradClip's `nan_to_num` + `clip_grad_norm_` (2-norm) on the local shards: one fused norm per (device, dtype)
    group, one sum of squares (all-reduced over the shard groups when sharded), one host read (is the total finite?),
    one fused scale. Upstream runs a DTensor dispatch per gradient for the norm and the scale (host time with the
    device idle after backward) and, with force_finite, a nan_to_num launch per gradient.

    Returns the total norm (a 0-dim fp32 tensor on the gradients' device), or None when the gradients are not
    eligible (see _shard_groups): the caller keeps upstream's path. Non-finite gradients get upstream's treatment:
    NaN/inf set to 0 in place, the norm taken again. Single process, plain tensors: the same ops as torch's
    clip_grad_norm_ (stacked per-tensor norms, their 2-norm), so the same values; sharded: the sum of the local
    squares, all-reduced, then the root (fp32 rounding of that order)."""
    found = _local_total_norm(grads)
    if found is None:
        return None
    local, groups, total_norm = found
    total = total_norm()
    if force_finite and not bool(torch.isfinite(total)):  # the one host read
        for t in local:
            torch.nan_to_num(t, nan=0.0, posinf=0.0, neginf=0.0, out=t)
        total = total_norm()
    _scale(groups, _clip_coef(total, max_norm))
    return total


_unsettled = None  # the LateFiniteClip whose finite flag the host has not read yet (one trainer per process)


class _Pending(NamedTuple):
    """What settle() needs of the step clip() flagged."""

    params: list | None  # the parameters whose .grad the gradients are (None: not given)
    grads: list
    max_norm: float
    total: torch.Tensor  # the total norm, maybe not finite
    flag: torch.Tensor | None  # is it finite: a pinned host copy on CUDA (read after `event`), else the device
    # tensor; None in the on-device mode (nothing to read)
    event: object  # torch.cuda.Event recorded behind the copy, or None
    optimizer: object
    skip: torch.Tensor | None  # the device flag the optimizer and the EMA update skip on (1.0 = not finite); None
    # in the on-device mode (nothing skipped)


def unsettled_skip() -> torch.Tensor | None:
    """The device flag (0-dim float, 1 = the optimizer step was skipped: the total norm was not finite) of a step
    whose finite check is not settled yet, or None. An update that reads the parameters after the step (the EMA
    update, portable/upcast.py) skips on this flag on the device and registers its redo (redo_after_settle), or, when
    it cannot skip on the device, calls settle_unsettled() first."""
    return None if _unsettled is None else _unsettled.skip_flag()


def redo_after_settle(fn) -> None:
    """Run `fn()` when the unsettled step turns out skipped, after its redo (an update that skipped on the flag)."""
    if _unsettled is not None:
        _unsettled.redo.append(fn)


def settle_unsettled() -> None:
    """Read the unsettled step's flag now (redo the step if it was skipped); no-op when every step is settled."""
    if _unsettled is not None:
        clip = _unsettled
        clip.unclaimed = clip.settle()  # for its owner's next settle() (GradClip records and logs the norm)


class LateFiniteClip:
    """clip_grad_norm_local with force_finite, its host read moved after the optimizer step's launch.

    The read (is the total norm finite?) makes the host wait for the end of the backward before it launches the
    scale and the optimizer step; with the device then idle while the host prepares the step, and the host late for
    the next forward. On an H200 the Text2Image 2B bare step with GradClip and the EMA update spent ~8 ms more in its
    forward than without them (BENCHMARKS.md 3n). Here:
    - `clip()` scales on the device by the clip coefficient when the total is finite and by 1 when not (gradients
      left as they are): FusedAdam takes the coefficient into its step (scale_grads_in_next_step), other optimizers
      get the gradients scaled in place here. It tells the optimizer (FusedAdam.skip_next_step_if) to skip its step
      on the device when not finite; the host goes on to launch the step;
    - `settle()` reads the flag, after the step's launch and before anything reads the parameters for something
      other than the EMA update. GradClip calls it at the next step's start (on_training_step_start), and before a
      checkpoint save, a validation and the end of training; with COSMOS_CLIP_SETTLE_NEXT_STEP=0, in
      on_before_zero_grad instead (before the EMA update). Finite (the normal case): nothing more, and every value is
      the one of the check before the step, bitwise (where FusedAdam took the coefficient, the gradients themselves
      stay unscaled: only zero_grad comes after the step). Not finite: upstream's treatment then, from the untouched
      gradients (NaN/inf set to 0, the norm taken again, the scale; gradients that zero_grad set to None are put
      back for it and taken away again), the skipped step redone with its step count and learning rate, then the
      updates that skipped on the flag (the EMA update) redone: the same values as the check before the step.
    Between clip() and settle() the EMA update skips on the same device flag (unsettled_skip) or, where it cannot,
    settles first. The host's one wait is then at the next step's start, for a norm the device computed before the
    optimizer step and the EMA update: the host prepares the next batch and the step's callbacks while those run.
    Only with an optimizer that can skip on the device (FusedAdam's fused kernel, CUDA by default); elsewhere
    `clip()` answers None and the caller keeps clip_grad_norm_local. COSMOS_CLIP_LATE_CHECK=0 turns it off.
    COSMOS_CLIP_ON_DEVICE (default on; CUDA with portable/adamw_kernel.py) takes the non-finite treatment itself to
    the device instead of skipping and redoing (`_total_on_device`): no host wait at all, a non-finite step matching
    upstream to the rounding of its second norm. COSMOS_CLIP_ON_DEVICE=0 keeps the skip-and-redo mode."""

    def __init__(self) -> None:
        self._pending: _Pending | None = None  # between clip() and settle()
        self._host_flag = None  # pinned host copy of the flag (CUDA), reused every step
        self.redo: list = []  # updates to run again when the pending step turns out skipped (redo_after_settle)
        self.unclaimed = None  # the total of a settle someone else asked for (settle_unsettled)

    @staticmethod
    def enabled() -> bool:
        from . import device

        return device.env_flag("COSMOS_CLIP_LATE_CHECK", default=True)

    @staticmethod
    def on_device() -> bool:
        """COSMOS_CLIP_ON_DEVICE (default on where the optimizer can take it): the non-finite treatment on the device."""
        from . import device

        return device.env_flag("COSMOS_CLIP_ON_DEVICE", default=True)

    @staticmethod
    def settles_next_step() -> bool:
        """COSMOS_CLIP_SETTLE_NEXT_STEP (default on): settle at the next step's start rather than before zero_grad."""
        from . import device

        return device.env_flag("COSMOS_CLIP_SETTLE_NEXT_STEP", default=True)

    def skip_flag(self) -> torch.Tensor | None:
        return None if self._pending is None else self._pending.skip

    def clip(self, grads: list[torch.Tensor], max_norm: float, optimizer,
             params: list[torch.Tensor] | None = None) -> torch.Tensor | None:
        """The total norm (maybe not finite), the gradients scaled if it is; None when this path does not apply.
        `params`: the parameters whose `.grad` the gradients are (same order), so that a redo after zero_grad can
        give them back."""
        if not grads or not self.enabled():
            return None
        can_skip = getattr(optimizer, "can_skip_on_device", None)
        if can_skip is None or not can_skip(local_shard(grads[0]).device):
            return None
        found = _local_total_norm(grads)
        if found is None:
            return None
        settle_unsettled()  # a step still unsettled (no settle point ran since): its flag first
        local, groups, total_norm = found
        total = total_norm()
        finite = torch.isfinite(total)
        if self.on_device():
            used = self._total_on_device(local, groups, total_norm.groups_to_sum, total, finite, optimizer)
            if used is not None:
                # NaN/inf stay NaN/inf (or become NaN) in an in-place scale: the optimizer's sanitize takes them as 0
                _scale_for(optimizer, groups, _clip_coef(used, max_norm), len(grads))
                optimizer.sanitize_next_step()
                return self._pend(_Pending(params, grads, max_norm, used, None, None, optimizer, None))
        _scale_for(optimizer, groups, torch.where(finite, _clip_coef(total, max_norm), 1.0), len(grads))
        # The flag goes to the host right behind the norm, so settle() waits for the norm, not for the optimizer's
        # kernels queued after it (a plain bool(finite) there would wait for those too)
        flag, event = finite, None
        if finite.device.type == "cuda":
            if self._host_flag is None:
                self._host_flag = torch.empty((), dtype=torch.bool, pin_memory=True)
            flag = self._host_flag
            flag.copy_(finite, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        skip = (~finite).float()
        optimizer.skip_next_step_if(skip)
        return self._pend(_Pending(params, grads, max_norm, total, flag, event, optimizer, skip))

    def _pend(self, pending: _Pending) -> torch.Tensor:
        """`pending` is the step to settle; its total returned."""
        global _unsettled
        self._pending = pending
        self.redo = []
        _unsettled = self
        return pending.total

    @staticmethod
    def _total_on_device(local, groups, groups_to_sum, total, finite, optimizer) -> torch.Tensor | None:
        """COSMOS_CLIP_ON_DEVICE=1: upstream's treatment of a non-finite total without the host knowing. The norm
        after nan_to_num is summed on the device only when the total is not finite (adamw_kernel.sumsq_if_: a
        finite step pays one launch whose programs stop at once); the total that applies is returned, and clip()
        has the optimizer take NaN/inf gradient elements as 0 (FusedAdam.sanitize_next_step). No step is skipped,
        so nothing is redone and settle() reads nothing. A finite step is the same step bitwise; a non-finite one
        matches upstream to the rounding of its second norm (another summation order). None when this optimizer or
        these gradients cannot take it (the skip-and-redo path then runs)."""
        can = getattr(optimizer, "can_sanitize_on_device", None)
        if can is None or not can(local[0].device):
            return None
        from . import adamw_kernel

        bad = (~finite).float()
        sq = torch.zeros((), dtype=torch.float32, device=total.device)
        for (dev, _), ts in groups.items():
            if dev != total.device or not adamw_kernel.sumsq_if_(ts, bad, sq):
                return None
        for pg in groups_to_sum:
            torch.distributed.all_reduce(sq, group=pg)
        return torch.where(finite, total, sq.sqrt().to(total.dtype))  # the dtype torch's norms give (bf16: bf16)

    def settle(self) -> torch.Tensor | None:
        """After the optimizer step's launch: the step's total norm as the check before the step gives it (None when
        clip() did not run this step). Where settle_unsettled() settled the step first, its total."""
        global _unsettled
        if self._pending is None:
            total, self.unclaimed = self.unclaimed, None
            return total
        pending, self._pending = self._pending, None
        if _unsettled is self:
            _unsettled = None
        redo, self.redo = self.redo, []
        if pending.flag is None:  # on-device mode (_total_on_device): treated already, nothing to read or redo
            return pending.total
        if pending.event is not None:
            pending.event.synchronize()
        if bool(pending.flag):  # the one host read, after the step was launched
            return pending.total
        # zero_grad(set_to_none) ran since clip(): the gradients go back for the redo, and away again after it
        given_back = [(p, g) for p, g in zip(pending.params or [], pending.grads) if p.grad is None]
        for p, g in given_back:
            p.grad = g
        try:  # upstream's treatment, from gradients untouched by clip()
            total = clip_grad_norm_local(pending.grads, pending.max_norm, force_finite=True)
            pending.optimizer.redo_skipped_step()
        finally:
            for p, _ in given_back:
                p.grad = None
        for fn in redo:
            fn()
        return total
