"""Run a function on N local ranks over a gloo process group (real torch.distributed, CPU)."""

from __future__ import annotations

import os
import tempfile

import torch.distributed as dist
import torch.multiprocessing as mp


def _entry(rank, world, init_file, fn, args):
    os.environ.pop("COSMOS_DEVICE", None)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


def run_ranks(fn, world: int, *args) -> None:
    """fn(rank, world, *args) on `world` spawned processes; raises if any rank fails."""
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "pg_init")
        mp.spawn(_entry, args=(world, init_file, fn, args), nprocs=world, join=True)
