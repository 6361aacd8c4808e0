"""TrainMetricsCallback: one JSON line per training iteration, for scripts/train_report.py.

Register in an experiment (or on the command line, as train.sh does):
    trainer.callbacks.train_metrics=L(TrainMetricsCallback)()
    ++trainer.callbacks.train_metrics={_target_:cosmos_predict2.portable.metrics.TrainMetricsCallback}

Rank 0 appends to `path` (constructor), else $COSMOS_TRAIN_METRICS, else `<job.path_local>/metrics.jsonl`:
    {"iteration", "time", "step_time_s", "loss", "loss_rank0", "samples_per_step", "local_batch",
     "grad_accum", "world_size", "dp_size", "cp_size", "device",
     "peak_mem_bytes", "peak_mem_bytes_per_rank", "peak_mem_reserved_bytes", "max_rss_bytes",
     "max_rss_bytes_per_rank"}
`step_time_s` is wall time from the previous step's end (or from training start) to this step's end, as the device
saw it (a timing event at each step end; a host stamp on CPU), so it covers data loading, forward, backward,
optimizer, any checkpoint save of that step and any time the device waited for the host. The ends come from
`step_clock`, the one clock of the run: upstream's IterSpeed (patched) reads the same stamps, so the log's
per-iteration times and the report's are one definition. A step's line is written at the end of the next logged
step (the last before the final checkpoint save, else at the end of training), so that no step end waits for
the device. Loss and memory are gathered from every rank with one small all_gather per logged step (all ranks
call this hook).
"""

from __future__ import annotations

import atexit
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

try:  # host reads of device values without a wait (same package)
    from cosmos_predict2.portable.late_read import LateRead
except ImportError:  # pragma: no cover - only on trees without the portable layer: the loss is read at once
    LateRead = None

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


def _peak_device_bytes() -> dict[str, int]:
    """{"peak", "peak_reserved"}: the allocator's host-side counts (no device read), one memory_stats() call.
    Not memory_stats()["peak"]: DeviceMonitor resets that counter at its own logs."""
    if _device is None:
        return {"peak": 0, "peak_reserved": 0}
    return {k: int(v) for k, v in _device.peak_memory_since_start().items()}


ENV_SYNC = "COSMOS_METRICS_SYNC"
_START = "start"  # the key of the clock's start stamp
_KEEP_MARKS = 16  # marks kept for late readers (a callback reads one step late; IterSpeed at once)


def _event():
    return _device.timing_event() if _device is not None else None


class StepClock:
    """The end time of each training step, one definition for every callback that times steps.

    `mark(iteration)` records the step's end without waiting for the device: on CUDA/NPU a timing event on the
    current stream (its time is when the device reaches it, so the step's device work and any idle time are in
    it), on CPU a host stamp (work there is synchronous). `stamp(iteration)` waits for that mark and returns its
    time in perf_counter seconds; TrainMetricsCallback asks one step late, when the device is already past it.
    `step_end(iteration)` is mark and stamp at once (IterSpeed, which logs at once, every N steps). The first mark of
    an iteration counts, whoever takes it, so every callback sees the same interval, and the intervals add up to the
    wall time of training (work done after a mark is billed to the next step).

    The clock used to synchronize the device at every step end: the device then ran dry while the host did the
    step-end callbacks, the next batch, its conditioning and the first launches of the next forward, all of which
    the host otherwise does while the device still runs the step. COSMOS_METRICS_SYNC=1 brings that back (a
    synchronize and a host stamp at every mark), to compare or to time the host's view of each step.
    """

    def __init__(self) -> None:
        self._clear()

    def _clear(self) -> None:
        self._started = None  # the iteration the clock (re)started at
        self._t0: float | None = None  # perf_counter at start, right after a synchronize
        self._ev0 = None  # the device event recorded at start; None: marks are host stamps
        self._marks: dict = {}  # key -> device event, or perf_counter seconds once known; oldest first
        self._prev: dict = {}  # iteration -> the key marked before it (None: no start to measure from)
        self._last = None
        self._sync_marks = False

    def start(self, iteration: int = 0) -> float:
        """Training (re)starts after `iteration`: the stamp the first step is measured from (shared, like marks)."""
        if self._started != iteration or self._t0 is None:
            self._clear()
            _sync()
            self._started, self._t0, self._last = iteration, time.perf_counter(), _START
            self._marks[_START] = self._t0
            self._sync_marks = _device is not None and _device.env_flag(ENV_SYNC, default=False)
            self._ev0 = None if self._sync_marks else _event()
            if self._ev0 is not None:
                self._ev0.record()
        return self._t0

    def mark(self, iteration: int) -> None:
        """Record the end of `iteration` (once; later calls for it do nothing). Does not wait for the device."""
        if iteration in self._marks:
            return
        if self._ev0 is not None:
            ev = _event()
            ev.record()
        else:
            if self._sync_marks or _device_kind() != "cpu":  # on CPU the work is done: nothing to wait for
                _sync()
            ev = time.perf_counter()
        self._marks[iteration], self._prev[iteration], self._last = ev, self._last, iteration
        while len(self._marks) > _KEEP_MARKS:
            old = next(iter(self._marks))
            del self._marks[old]
            self._prev.pop(old, None)

    def stamp(self, key) -> float:
        """perf_counter seconds of a mark (waits until the device reached it); nan for a key no longer kept."""
        v = self._marks.get(key)
        if v is None:
            return float("nan")
        if not isinstance(v, float):
            v.synchronize()
            v = self._marks[key] = self._t0 + self._ev0.elapsed_time(v) / 1e3
        return v

    def step_end(self, iteration: int) -> float:
        self.mark(iteration)
        return self.stamp(iteration)

    def step_time(self, iteration: int) -> float:
        """Seconds from the previous mark (a step end or training start) to this iteration's end; nan if none."""
        now = self.step_end(iteration)
        prev = self._prev.get(iteration)
        return now - self.stamp(prev) if prev is not None else float("nan")


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


class _Pending:
    """What a metrics line needs, taken at the step's end without waiting for the device; written one step later."""

    def __init__(self, iteration: int, loss, fields: dict) -> None:
        self.iteration, self.loss, self.fields = iteration, loss, fields

    def loss_value(self) -> float:
        return float(self.loss) if isinstance(self.loss, float) else float(self.loss.values()[0])


def _host_copy(loss):
    """The loss as a float, or a LateRead of it: on a device the copy is queued behind the step into pinned memory,
    and reading it a step later is a host read, not a device synchronization."""
    if not isinstance(loss, torch.Tensor) or LateRead is None:
        return float(loss)
    return LateRead(loss.detach().reshape(()).to(torch.float64))


class TrainMetricsCallback(Callback):
    """One line per `every_n`-th iteration. The line of iteration i is written at the end of the next logged
    iteration (or at the end of training), when the device is past iteration i: the loss is copied to the host
    and the step's end marked (StepClock) without waiting, so the device keeps working through the step end
    while the host goes on to the next batch. With several ranks the loss and memory are all-gathered then (a
    device collective: it waits for the device)."""

    def __init__(self, path: str | None = None, every_n: int = 1, gather: bool = True):
        super().__init__()
        self.path = path
        self.every_n = max(int(every_n), 1)
        self.gather = gather
        self._last = None  # stamp of the previous written line (or training start)
        self._pending: list[_Pending] = []

    def _resolve_path(self) -> str:
        if self.path:
            return self.path
        if os.environ.get(ENV_PATH):
            return os.environ[ENV_PATH]
        return os.path.join(self.config.job.path_local, "metrics.jsonl")

    def on_train_start(self, model, iteration: int = 0) -> None:
        self._pending = []
        self._last = step_clock.start(iteration)
        atexit.register(self._flush_at_exit)  # a run that dies before on_train_end still writes its last line

    def _flush_at_exit(self) -> None:
        """The line still held back when the process exits without on_train_end (training raised): written
        without the all-gather (other ranks may be gone), best effort (the device may be what failed)."""
        gather, self.gather = self.gather, False
        try:
            self._write_pending()
        except Exception as exc:  # noqa: BLE001 - at exit: report, never mask the error that ended the run
            print(f"warning: the last metrics line was not written ({type(exc).__name__}: {exc}) "
                  "(portable.metrics)", file=sys.stderr)
        finally:
            self.gather = gather

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
        host_loss = _host_copy(loss)
        step_clock.mark(iteration)
        world, dp, cp = _parallel_sizes(self.config)
        local_bs = _local_batch(self.config, data_batch)
        accum = int(getattr(self.config.trainer, "grad_accum_iter", 1) or 1)
        fields = {
            "samples_per_step": local_bs * accum * dp,
            "local_batch": local_bs,
            "grad_accum": accum,
            "world_size": world,
            "dp_size": dp,
            "cp_size": cp,
            "device": _device_kind(),
            **_peak_device_bytes(),  # "peak", "peak_reserved"
            "rss": _max_rss_bytes(),
            "phases": _step_phases(),  # StepTimingCallback's fields of this step (its marks, read when the line is written)
        }
        self._pending.append(_Pending(int(iteration), host_loss, fields))
        while len(self._pending) > 1:
            self._write(self._pending.pop(0))

    def on_save_checkpoint_start(self, model, iteration: int = 0) -> None:
        """The held-back line is written before a checkpoint save: the final save of a 2B run takes minutes, and a
        run's last line is then in the file while it writes (or if the save fails). A save waits for the device
        anyway; every rank calls this hook, as the line's all-gather needs."""
        self._write_pending()

    def on_train_end(self, model, iteration: int = 0) -> None:
        atexit.unregister(self._flush_at_exit)
        self._write_pending()

    def _write_pending(self) -> None:
        while self._pending:
            self._write(self._pending.pop(0))

    def _write(self, p: _Pending) -> None:
        now = step_clock.stamp(p.iteration)  # the device is past this step: usually no wait
        step_time = now - self._last if self._last is not None else float("nan")
        self._last = now
        loss_val = p.loss_value()
        f = p.fields
        losses, peaks, rsses = self._gather(loss_val, f["peak"], f["rss"])
        phases = dict(f["phases"])  # StepTimingCallback's: its figures are read (and gathered) now, one step late
        if callable(phases.get("phases_s_per_rank")):
            phases["phases_s_per_rank"] = phases["phases_s_per_rank"](gather=self.gather)
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if rank != 0:
            return
        rec = {
            "iteration": p.iteration,
            "time": time.time() - (time.perf_counter() - now),  # wall time of the step's end
            "step_time_s": step_time / self.every_n if self.every_n > 1 else step_time,
            "loss": sum(losses) / len(losses),
            "loss_rank0": loss_val,
            **{k: f[k] for k in ("samples_per_step", "local_batch", "grad_accum", "world_size", "dp_size",
                                 "cp_size", "device")},
            "peak_mem_bytes": peaks[0],
            "peak_mem_bytes_per_rank": peaks,
            "peak_mem_reserved_bytes": f["peak_reserved"],  # rank 0's: what the allocator held from the card
            "max_rss_bytes": rsses[0],
            "max_rss_bytes_per_rank": rsses,
            **phases,
        }
        path = self._resolve_path()
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
