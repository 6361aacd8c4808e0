"""One FSDP2 unit for the whole DiT on a mesh of one device (COSMOS_FSDP_ONE_UNIT=1; train.sh sets it for the
Text2Image experiments).

Upstream wraps every DiT block, the final layer, the t-embedder (and the extra position embedder) in a fully_shard
unit of its own, then the whole net in the root unit (the pipelines' apply_fsdp). Across devices the per-block units
overlap each block's all-gather and reduce-scatter with compute and bound the unsharded memory to a few blocks. On a
mesh of one device there is nothing to gather or reduce, yet each unit's hooks still copy its parameters in before
forward and again before backward, and its gradients out after backward: on an H200 host, 0.9 + 1.1 + 2.1 ms of host
time per block per step, about 115 ms a step over the 2B net's 29 units (BENCHMARKS.md 3h). A step whose blocks are
compiled runs 0.19 s of kernels, so that host time is step time.

With one unit the parameters are the same DTensors on the same mesh (same names, same checkpoints, same optimizer
state) and the gradients the same up to the order of fp32 sums: the units' autograd nodes change the order in which
contributions to inputs shared by all blocks are added (tests/training/test_fsdp_units.py: losses and weights of
whole runs agree to fp32 rounding). The price is memory: the whole net's unsharded parameters and gradients live through forward and
backward, 4 bytes more per parameter (7.3 GiB on the 2B net; scripts/memory_estimate.py counts it). On a mesh of
more than one device the flag is ignored and upstream's units stay.
"""

from __future__ import annotations

from imaginaire.utils import log

from . import device

ENV = "COSMOS_FSDP_ONE_UNIT"


def requested(environ=None) -> bool:
    """COSMOS_FSDP_ONE_UNIT as a switch (device.env_flag: a value that is not one is a one-line error)."""
    return device.env_flag(ENV, environ=environ)


def one_unit(mesh) -> bool:
    """Whether the DiT's per-module fully_shard calls are to be left out for this mesh (the root unit then holds
    every parameter). Says which it chose, once per call, when the switch is on."""
    if not requested():
        return False
    size = mesh.size()
    if size == 1:
        log.info(f"FSDP: the whole DiT is one unit ({ENV}=1, a mesh of one device)")
        return True
    log.info(f"FSDP: per-block units kept: {ENV}=1 applies to a mesh of one device, this one has {size}")
    return False
