"""Whether the trainer wraps the DiT in FSDP2: decided here once, for the models and for the checkpointer.

Upstream wraps whenever `fsdp_shard_size != 0` and a process group exists, a single process included. On one
device there is nothing to shard and nothing to reduce, yet FSDP2's per-module hooks and DTensor parameters cost
host time every step. On an H200 the bare Text2Image 2B step ran 0.18 s as a plain module and 0.30 s in FSDP2 on a
one-device mesh (BENCHMARKS 3i), and train.sh's step there is host-bound. So a one-process run trains the plain
module. `COSMOS_FSDP_ONE_DEVICE=1` wraps it anyway (the former behaviour, kept for comparison).

Checkpoints do not depend on the choice: the models save full tensors, and the checkpointer saves the optimizer
state by parameter name on both paths, so a one-device run resumes on several devices and back.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .device import env_flag

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # torch builds without distributed
    DTensor = None

ENV = "COSMOS_FSDP_ONE_DEVICE"


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 0


def wanted(fsdp_shard_size: int) -> bool:
    """Upstream's test (a shard size and a process group), less the one-process case unless COSMOS_FSDP_ONE_DEVICE."""
    world = _world()
    if fsdp_shard_size == 0 or world == 0:
        return False
    return world > 1 or env_flag(ENV)


def why_not(fsdp_shard_size: int) -> str:
    """The log line for a run that `wanted` leaves unwrapped."""
    if fsdp_shard_size != 0 and _world() == 1:
        return f"FSDP2 left out: one process, nothing to shard (plain module; {ENV}=1 wraps it anyway)."
    return "FSDP (Fully Sharded Data Parallel) is disabled."


def is_sharded(module: torch.nn.Module) -> bool:
    """What the module really is, for the checkpointer: any DTensor parameter means FSDP2 wrapped it."""
    return DTensor is not None and any(isinstance(p, DTensor) for p in module.parameters())


def saved_by_name(optim_state: dict) -> bool:
    """An optimizer state dict keyed by parameter name (get_optimizer_state_dict), not by index (upstream's plain
    `optimizer.state_dict()`, which only a module with the same parameter order can take)."""
    groups = optim_state.get("param_groups") or []
    return any(isinstance(p, str) for g in groups for p in g.get("params", []))
