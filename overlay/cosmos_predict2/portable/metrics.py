"""TrainMetricsCallback: one JSON line per training iteration, for scripts/train_report.py.

Register in an experiment (or on the command line, as train.sh does):
    trainer.callbacks.train_metrics=L(TrainMetricsCallback)()
    ++trainer.callbacks.train_metrics={_target_:cosmos_predict2.portable.metrics.TrainMetricsCallback}

Rank 0 appends to `path` (constructor), else $COSMOS_TRAIN_METRICS, else `<job.path_local>/metrics.jsonl`:
    {"iteration", "time", "step_time_s", "loss", "loss_rank0", "samples_per_step", "local_batch",
     "grad_accum", "world_size", "dp_size", "cp_size", "device",
     "peak_mem_bytes", "peak_mem_bytes_per_rank", "max_rss_bytes", "max_rss_bytes_per_rank"}
`step_time_s` is wall time from the previous step's end (or from training start) to this step's end, after one
device synchronize, so it covers data loading, forward, backward, optimizer and any checkpoint save of that step.
The ends come from `step_clock`, the one clock of the run: upstream's IterSpeed (patched) reads the same stamps, so
the log's per-iteration times and the report's are one definition. Loss and memory are gathered from every rank
with one small all_gather per logged step (all ranks call this hook).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

import torch
import torch.distributed as dist

from imaginaire.utils.callback import Callback

try:  # the device layer (same package); guarded so the callback still logs on trees that lack it
    from cosmos_predict2.portable import device as _device
except ImportError:  # pragma: no cover - only on trees without the portable device layer
    _device = None

try:  # per-rank step phases (StepTimingCallback, registered by train.sh); absent fields if it is not registered
    from cosmos_predict2.portable.step_timing import take_fields as _step_phases
except ImportError:  # pragma: no cover
    _step_phases = dict

ENV_PATH = "COSMOS_TRAIN_METRICS"


def _max_rss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # Linux reports KiB, macOS bytes


def _device_kind() -> str:
    return _device.device_type() if _device is not None else "cpu"


def _sync() -> None:
    if _device is not None:
        _device.synchronize()


def _peak_device_bytes() -> int:
    # not memory_stats()["peak"]: DeviceMonitor resets that counter at its own logs
    return int(_device.peak_memory_since_start()["peak"]) if _device is not None else 0


class StepClock:
    """The end time of each training step, stamped once by whichever callback asks first in that step.

    The first `step_end(iteration)` of an iteration synchronizes the device and records perf_counter(); later calls
    for the same iteration get the same stamp. So every callback that times steps (IterSpeed, TrainMetricsCallback)
    sees the same interval, whatever their order, and the work done after the stamp (other callbacks, logging,
    gathers) is billed to the next step: step times add up to the wall time of training.
    """

    def __init__(self) -> None:
        self._it: int | None = None
        self._now: float | None = None
        self._prev: float | None = None

    def start(self, iteration: int = 0) -> float:
        """Training (re)starts after `iteration`: the stamp the first step is measured from (shared, like ends)."""
        if self._it != iteration or self._now is None:
            _sync()
            self._it, self._now, self._prev = iteration, time.perf_counter(), None
        return self._now

    def step_end(self, iteration: int) -> float:
        if self._it != iteration or self._now is None:
            _sync()
            self._prev, self._it, self._now = self._now, iteration, time.perf_counter()
        return self._now

    def step_time(self, iteration: int) -> float:
        """Seconds from the previous stamp (step end or training start) to this iteration's end; nan if none."""
        now = self.step_end(iteration)
        return now - self._prev if self._prev is not None else float("nan")


step_clock = StepClock()


def _local_batch(config, data_batch) -> int:
    bs = None
    try:
        bs = int(config.dataloader_train.batch_size)
    except (AttributeError, TypeError, ValueError):
        pass
    if bs:
        return bs
    for v in (data_batch or {}).values():  # e.g. a loader built without batch_size in the config
        if isinstance(v, torch.Tensor) and v.dim() > 0:
            return int(v.shape[0])
    return 1


def _parallel_sizes(config) -> tuple[int, int, int]:
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    try:
        from megatron.core import parallel_state

        if parallel_state.model_parallel_is_initialized():
            return world, parallel_state.get_data_parallel_world_size(), parallel_state.get_context_parallel_world_size()
    except ImportError:
        pass
    cp = 1
    try:
        cp = int(config.model_parallel.context_parallel_size) or 1
    except (AttributeError, TypeError, ValueError):
        pass
    return world, max(world // cp, 1), cp


class TrainMetricsCallback(Callback):
    def __init__(self, path: str | None = None, every_n: int = 1, gather: bool = True):
        super().__init__()
        self.path = path
        self.every_n = max(int(every_n), 1)
        self.gather = gather
        self._last = None

    def _resolve_path(self) -> str:
        if self.path:
            return self.path
        if os.environ.get(ENV_PATH):
            return os.environ[ENV_PATH]
        return os.path.join(self.config.job.path_local, "metrics.jsonl")

    def on_train_start(self, model, iteration: int = 0) -> None:
        self._last = step_clock.start(iteration)

    def _gather(self, loss: float, peak: int, rss: int) -> tuple[list[float], list[int], list[int]]:
        if not (self.gather and dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return [loss], [peak], [rss]
        dev = _device.get_device() if _device is not None else torch.device("cpu")
        # one int64 all_gather (every backend has it): byte counts exact, the loss carried as its float64 bits
        bits = torch.tensor([loss], dtype=torch.float64).view(torch.int64)
        mine = torch.cat([bits, torch.tensor([peak, rss], dtype=torch.int64)]).to(dev)
        parts = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, mine)
        rows = torch.stack(parts).cpu()
        losses = rows[:, :1].contiguous().view(torch.float64).flatten().tolist()
        return losses, rows[:, 1].tolist(), rows[:, 2].tolist()

    def on_training_step_end(self, model, data_batch, output_batch, loss, iteration: int = 0) -> None:
        if iteration % self.every_n:
            return
        now = step_clock.step_end(iteration)  # synchronized once per step: the clock sees this step's device work
        step_time = now - self._last if self._last is not None else float("nan")
        loss_val = float(loss.detach().float().item()) if isinstance(loss, torch.Tensor) else float(loss)
        losses, peaks, rsses = self._gather(loss_val, _peak_device_bytes(), _max_rss_bytes())
        world, dp, cp = _parallel_sizes(self.config)
        local_bs = _local_batch(self.config, data_batch)
        accum = int(getattr(self.config.trainer, "grad_accum_iter", 1) or 1)
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if rank == 0:
            rec = {
                "iteration": int(iteration),
                "time": time.time(),
                "step_time_s": step_time / self.every_n if self.every_n > 1 else step_time,
                "loss": sum(losses) / len(losses),
                "loss_rank0": loss_val,
                "samples_per_step": local_bs * accum * dp,
                "local_batch": local_bs,
                "grad_accum": accum,
                "world_size": world,
                "dp_size": dp,
                "cp_size": cp,
                "device": _device_kind(),
                "peak_mem_bytes": peaks[0],
                "peak_mem_bytes_per_rank": peaks,
                "max_rss_bytes": rsses[0],
                "max_rss_bytes_per_rank": rsses,
                **_step_phases(),
            }
            path = self._resolve_path()
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            with open(path, "a") as f:
                f.write(json.dumps(rec) + "\n")
        # the next step is measured from `now`, so the gather and the write above are billed to it: the sum of
        # step times stays the true wall time of training
        self._last = now
