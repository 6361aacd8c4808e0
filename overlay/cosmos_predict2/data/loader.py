"""A training loader that never stalls at an epoch boundary (hooked into ImaginaireTrainer.train by patch 0029).

Upstream's loop calls iter(dataloader_train) again after every StopIteration. With persistent_workers=False (all
Cosmos configs) that shuts every worker down and starts new ones, and nothing is prefetched while it happens: on a
2-clip set at 720p that was 4.6-5.5 s of waiting on every other step. Post-training sets are small, so a real run
pays it every epoch.

`endless(loader)` returns a DataLoader over the same dataset, collate function and batching whose batch sampler
runs epoch after epoch (calling the sampler's set_epoch(e) before epoch e, as DistributedSampler expects), so the
trainer's first iterator never ends: the workers and their prefetch queue carry on across epoch boundaries. Workers
are also persistent (for any loop that calls iter() again). Their torch intra-op threads stay at PyTorch's worker
default of 1 (`COSMOS_LOADER_THREADS=N` raises it; an H200 host segfaulted a worker that raised it to 4 after the
fork, in the OpenMP runtime, so the default keeps 1). Set `COSMOS_LOADER=upstream` to keep the upstream loader.

len(loader) stays the batch count of one epoch. An IterableDataset loader is returned unchanged.
"""

from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader, IterableDataset

from ..portable.user_error import line

ENV_MODE = "COSMOS_LOADER"
ENV_THREADS = "COSMOS_LOADER_THREADS"


class EndlessBatchSampler:
    """Yields the batches of `batch_sampler` epoch after epoch, forever."""

    def __init__(self, batch_sampler, start_epoch: int = 0):
        self.batch_sampler = batch_sampler
        self.epoch = int(start_epoch)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self):
        while True:
            sampler = getattr(self.batch_sampler, "sampler", None)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(self.epoch)
            n = 0
            for batch in self.batch_sampler:
                n += 1
                yield batch
            if n == 0:
                raise RuntimeError(line("the training loader has no batch in an epoch", "dataset empty or smaller than "
                                        "the batch size with drop_last", "Add samples or lower the batch size"))
            self.epoch += 1


def worker_threads() -> int | None:
    """torch threads per loader worker: COSMOS_LOADER_THREADS, else None (PyTorch's worker default, 1)."""
    raw = os.environ.get(ENV_THREADS, "").strip()
    return int(raw) if raw.isdigit() and int(raw) > 0 else None


class _BoundedWorkerInit:
    """worker_init_fn: bound torch threads in the worker, then run the loader's own init function."""

    def __init__(self, threads: int, inner=None):
        self.threads = threads
        self.inner = inner

    def __call__(self, worker_id: int) -> None:
        torch.set_num_threads(self.threads)
        if self.inner is not None:
            self.inner(worker_id)


def endless(loader: DataLoader) -> DataLoader:
    if os.environ.get(ENV_MODE, "").strip().lower() == "upstream":
        return loader
    if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        return loader
    if isinstance(loader.batch_sampler, EndlessBatchSampler):
        return loader
    workers = int(loader.num_workers)
    kwargs = dict(
        batch_sampler=EndlessBatchSampler(loader.batch_sampler),
        num_workers=workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
        generator=loader.generator,
    )
    if workers > 0:
        kwargs.update(persistent_workers=True, prefetch_factor=loader.prefetch_factor or 2)
        if worker_threads():
            kwargs["worker_init_fn"] = _BoundedWorkerInit(worker_threads(), loader.worker_init_fn)
    if getattr(loader, "pin_memory_device", ""):
        kwargs["pin_memory_device"] = loader.pin_memory_device
    out = DataLoader(loader.dataset, **kwargs)
    try:
        from imaginaire.utils import log

        log.info(f"training loader: endless batch sampler, {workers} worker(s)"
                 + (f", persistent, prefetch {kwargs['prefetch_factor']}, {worker_threads() or 1} torch thread(s) "
                    "each" if workers else "") + f" (set {ENV_MODE}=upstream for upstream's loader)")
    except ImportError:  # pragma: no cover - outside a cosmos tree
        pass
    return out
