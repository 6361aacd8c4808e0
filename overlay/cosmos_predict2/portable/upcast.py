"""fp32 copies of bf16 tensor lists in a few launches, and the EMA update built on them.

Two updates of every training step read bf16 tensors into fp32 arithmetic: FusedAdam's update of the fp32 masters
(bf16 gradients) and the EMA update (fp32 EMA from the bf16 parameters). `g.float()` per tensor, or a foreach op
whose lists mix dtypes (torch then takes its per-tensor slow path), launches one kernel per tensor: 567 per update
on the 2B DiT, 1,134 of the Text2Image 2B step's 5,125 launches on an H200 (BENCHMARKS.md 3l), in a step whose host
is behind its device. `torch._foreach_copy_` converts dtypes inside its multi-tensor kernel, so copying into views
of one fp32 buffer kept for the run takes a few launches, and the EMA update then runs as one multi-tensor lerp
(on CUDA the EMA update takes portable/lerp_kernel.py instead, which needs no copy).

CUDA and CPU only: other devices (NPU) keep the per-tensor path, which every backend supports.
"""

from __future__ import annotations

import math

import torch

from . import lerp_kernel, shards

_buffers: dict = {}  # (owner, device) -> flat fp32 buffer, grown on demand, kept for the run
_views: dict = {}  # (owner, device, shapes) -> views of that buffer, one per tensor
_MAX_VIEW_SETS = 64  # bound on cached view lists (buckets differ in shapes; a few per owner in practice)

BUCKET_NUMEL = 1 << 26  # bound of one upcast list (256 MiB of fp32): the buffer of each owner stays this size

# The owner FusedAdam's grads and the EMA update share: one 256 MiB buffer. Their uses are ordered on the device:
# the EMA update follows the optimizer step on its stream (or on ema_overlap's side stream, which waits for the
# current one first), and the next optimizer step comes after ema_overlap.wait().
STEP = "step"


def supported(dev: torch.device) -> bool:
    """Whether `upcast` may take the foreach-copy path on this device type."""
    return dev.type in ("cuda", "cpu")


def fp32_views(tensors: list[torch.Tensor], owner: str) -> list[torch.Tensor]:
    """Views of owner's fp32 buffer on the tensors' device, one per tensor with its shape. They are overwritten by
    the owner's next call: use them before then (stream order makes that so for work queued on one stream)."""
    dev = tensors[0].device
    shapes = tuple(tuple(t.shape) for t in tensors)
    key = (owner, dev, shapes)
    views = _views.get(key)
    if views is not None:
        return views
    total = sum(math.prod(s) for s in shapes)
    buf = _buffers.get((owner, dev))
    if buf is None or buf.numel() < total:
        for k in [k for k in _views if k[:2] == (owner, dev)]:
            del _views[k]  # views of the buffer being replaced
        buf = _buffers[(owner, dev)] = torch.empty(max(total, 1), dtype=torch.float32, device=dev)
    views, off = [], 0
    for s in shapes:
        n = math.prod(s)
        views.append(buf.narrow(0, off, n).view(s))
        off += n
    if len(_views) >= _MAX_VIEW_SETS:
        _views.clear()
    _views[key] = views
    return views


def upcast(tensors: list[torch.Tensor], owner: str) -> list[torch.Tensor]:
    """fp32 copies of `tensors` (one device), as views of owner's buffer (see fp32_views)."""
    if not tensors:
        return []
    if not supported(tensors[0].device):
        return [t.float() for t in tensors]
    views = fp32_views(tensors, owner)
    torch._foreach_copy_(views, tensors)
    return views


def buckets(tensors: list[torch.Tensor]):
    """Index ranges of consecutive tensors of at most BUCKET_NUMEL elements (a larger tensor alone): the lists
    FusedAdam and the EMA update upcast at a time."""
    start, filled = 0, 0
    for i, t in enumerate(tensors):
        n = t.numel()
        if i > start and filled + n > BUCKET_NUMEL:
            yield start, i
            start, filled = i, 0
        filled += n
    if start < len(tensors):
        yield start, len(tensors)


@torch.no_grad()
def ema_update_(targets: list[torch.Tensor], sources: list[torch.Tensor], beta: float) -> None:
    """targets = beta * targets + (1 - beta) * sources, in fp32 (targets are the fp32 EMA weights).

    Sources in fp32, or a device without the foreach-copy path: upstream's two foreach ops as they were. bf16 sources
    on CUDA: portable/lerp_kernel.py, one launch that reads them in registers (20 bytes per element against 36 for
    copy + lerp). Otherwise upcast per bucket, then one multi-tensor lerp (targets + (1 - beta) * (sources - targets):
    the same update to fp32 rounding, and one pass over the EMA instead of two).

    While GradClip's finite check of the step is pending (LateFiniteClip settles at the next step's start), the
    kernel skips on the step's device flag and the update is redone after the step's redo; the other paths settle
    the check first."""
    if not targets:
        return
    skip = shards.unsettled_skip()  # the step's finite check is still pending (portable/shards.py LateFiniteClip)
    plain = not supported(targets[0].device) or all(s.dtype == torch.float32 for s in sources)
    if not plain and lerp_kernel.lerp_(targets, sources, 1.0 - beta, skip=skip):  # skipped: nothing written
        if skip is not None:
            shards.redo_after_settle(lambda: ema_update_(targets, sources, beta))
        return
    if skip is not None:
        shards.settle_unsettled()  # the paths below cannot skip on the device: the step's parameters first
    if plain:
        torch._foreach_mul_(targets, beta)
        torch._foreach_add_(targets, sources, alpha=1.0 - beta)
        return
    for a, b in buckets(sources):
        torch._foreach_lerp_(targets[a:b], upcast(sources[a:b], STEP), 1.0 - beta)
