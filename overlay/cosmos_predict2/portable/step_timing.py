"""StepTimingCallback: where each training step's time goes, from synchronised timestamps at upstream's hooks.

Registered by train.sh next to the metrics callback:
    ++trainer.callbacks.step_timing={_target_:cosmos_predict2.portable.step_timing.StepTimingCallback}

Per optimizer step and per rank, in seconds, each phase between two marks at its boundaries:
    data      waiting for the training loader (on_before_dataloading -> on_after_dataloading)
    vae_cond  the model's get_data_and_condition: normalisation, VAE encode (or the cached latent), conditioning
    fwd_bwd   forward and backward without vae_cond (on_before_forward -> on_after_backward)
    optimizer on_before_optimizer_step -> end of the trainer's training_step (grad clipping callbacks included)
    step      this rank's time from the previous step's end to this step's optimizer end
"other" (host-to-device copy, callbacks, checkpoint saves) is what the report derives: step - the four phases.
With gradient accumulation the phases add up over the micro-steps.

The marks (`phases_clock` in the metrics line):
- "device events" (CUDA; NPU where torch_npu has timing events): a timing event recorded on the current stream at
  each boundary, read one step later; nothing waits. A phase is the device's time between its two marks: the work
  queued in it plus any time the device waited for the host there. So a phase that stalls the device shows, and
  host work hidden behind queued device work (a loader wait while the device still runs the last step) costs the
  step nothing and shows as about 0. The phases and `step` are on the same clock as `step_time_s`.
- "synchronised" (CPU, where work is synchronous; or COSMOS_METRICS_SYNC=1): a device synchronize and a host stamp at
  each boundary, the host's view of each phase. On a launch-bound step (Text2Image 2B: the GPU waits for the
  host's launches) the six synchronizations per step cost step time; the events do not.
`every_n=N` (or COSMOS_STEP_TIMING_EVERY=N; train.sh: `-- ++trainer.callbacks.step_timing.every_n=N`) times only the
iterations divisible by N: no marks, no gather, no `phases_s_per_rank` field in the other lines (the breakdown table
averages over the timed steps). Default 1: every step.
TrainMetricsCallback writes them into the step's metrics.jsonl line, one step later, as `phases_s_per_rank` (list over
ranks of {data, vae_cond, fwd_bwd, optimizer, step}); with several ranks they are all_gathered then (one tiny
all_gather on every rank, next to the metrics' own).

Profiling: with COSMOS_PROFILE_STEPS=N (train.sh --profile_steps=N) rank r writes a torch profiler trace of N steps
after COSMOS_PROFILE_WARMUP (default 2) warm-up steps to COSMOS_PROFILE_TRACE (default
<job>/profile/trace) + `-rank<r>.json` (Chrome trace format; open in chrome://tracing or Perfetto).
"""

from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist

from imaginaire.utils import log
from imaginaire.utils.callback import Callback

try:
    from cosmos_predict2.portable import device as _device
except ImportError:  # pragma: no cover - only on trees without the device layer
    _device = None

PHASES = ("data", "vae_cond", "fwd_bwd", "optimizer", "step")
ENV_SYNC = "COSMOS_METRICS_SYNC"  # the metrics' switch: synchronise at every mark (portable/metrics.py)
CLOCK_EVENTS, CLOCK_SYNC = "device events", "synchronised"
_pending: dict | None = None  # the last timed step's fields, taken by TrainMetricsCallback


def take_fields() -> dict:
    """Fields for the metrics line of the step that just ended (empty if the callback is not registered or the step
    was not timed). `phases_s_per_rank` is a function (gather: bool) -> list over ranks, called when the line is
    written, one step later: the events are read then, when the device is past them."""
    global _pending
    out, _pending = (_pending or {}), None
    return out


def _sync() -> None:
    if _device is not None:
        _device.synchronize()


def _now() -> float:
    _sync()
    return time.perf_counter()


def _seconds(a, b) -> float:
    """Seconds from mark a to mark b: host stamps (floats), or two timing events of one stream."""
    if isinstance(a, float):
        return b - a
    b.synchronize()  # read one step late: the device is normally past it already
    return a.elapsed_time(b) / 1e3


class _Step:
    """The marks of one timed step: [start, end] pairs per phase (several with gradient accumulation)."""

    __slots__ = ("start", "end", "data", "cond", "fwd", "opt")

    def __init__(self, start) -> None:
        self.start, self.end = start, None
        self.data, self.cond, self.fwd, self.opt = [], [], [], []

    def seconds(self) -> list[float]:
        def total(pairs):
            return sum(_seconds(x, y) for x, y in pairs if y is not None)

        cond = total(self.cond)
        step = _seconds(self.start, self.end) if self.start is not None else 0.0
        return [total(self.data), cond, total(self.fwd) - cond, total(self.opt), step]


class StepTimingCallback(Callback):
    def __init__(self, profile_steps: int | None = None, profile_warmup: int | None = None,
                 trace_path: str | None = None, every_n: int | None = None):
        super().__init__()
        env = os.environ
        self.every_n = max(1, int(every_n if every_n is not None else env.get("COSMOS_STEP_TIMING_EVERY", 1) or 1))
        self._on = True  # this step is timed
        self._opt_seen = False
        self.profile_steps = int(profile_steps if profile_steps is not None else env.get("COSMOS_PROFILE_STEPS", 0) or 0)
        self.profile_warmup = int(profile_warmup if profile_warmup is not None
                                  else env.get("COSMOS_PROFILE_WARMUP", 2) or 0)
        self.trace_path = trace_path or env.get("COSMOS_PROFILE_TRACE")
        self._events = False  # marks are device timing events (decided at train start)
        self._prev_end = None  # the mark the next timed step starts from (the last step's end, or train start)
        self._cur: _Step | None = None
        self._prof = None
        self._profiled = 0

    def _mark(self):
        """A timing event recorded on the current stream (no wait), or a host stamp after a synchronize."""
        ev = _device.timing_event() if self._events else None
        if ev is None:
            return _now()
        ev.record()
        return ev

    def _loader_mark(self):
        """A mark around the loader wait. The loader queues no device work and the device was synchronised at the
        previous step's end, so without events a host stamp is enough (no synchronize)."""
        return self._mark() if self._events else time.perf_counter()

    @staticmethod
    def _open(pairs: list, mark) -> None:
        pairs.append([mark, None])

    @staticmethod
    def _close(pairs: list, mark) -> None:
        if pairs and pairs[-1][1] is None:
            pairs[-1][1] = mark

    # -- vae/conditioning: time the model's get_data_and_condition ------------------------------------------
    def on_train_start(self, model, iteration: int = 0) -> None:
        pipe = getattr(model, "pipe", None)
        fn = getattr(pipe, "get_data_and_condition", None)
        if fn is not None and not getattr(fn, "_step_timed", False):
            def timed(*args, **kwargs):
                cur = self._cur if self._on else None
                if cur is None:
                    return fn(*args, **kwargs)
                self._open(cur.cond, self._mark())
                out = fn(*args, **kwargs)
                self._close(cur.cond, self._mark())
                return out

            timed._step_timed = True
            pipe.get_data_and_condition = timed
        sync = _device.env_flag(ENV_SYNC, default=False) if _device is not None else True
        self._events = not sync and _device is not None and _device.timing_event() is not None
        self._prev_end = self._mark()

    def on_before_dataloading(self, iteration: int = 0) -> None:
        if self.profile_steps and self._prof is None and self._profiled == 0 and iteration >= self.profile_warmup:
            self._start_profiler()
        self._on = iteration % self.every_n == 0
        if not self._on:
            return
        if self._cur is None:  # a new optimizer step (with accumulation the micro-steps share one)
            self._cur = _Step(self._prev_end if self._prev_end is not None else self._mark())
        self._open(self._cur.data, self._loader_mark())

    def on_after_dataloading(self, iteration: int = 0) -> None:
        if self._on and self._cur is not None:
            self._close(self._cur.data, self._loader_mark())

    def on_before_forward(self, iteration: int = 0) -> None:
        if self._on and self._cur is not None:
            self._open(self._cur.fwd, self._mark())

    def on_after_backward(self, model_ddp, iteration: int = 0) -> None:
        if self._on and self._cur is not None:
            self._close(self._cur.fwd, self._mark())

    def on_before_optimizer_step(self, model_ddp, optimizer, scheduler, grad_scaler, iteration: int = 0) -> None:
        if not (self._on and self._cur is not None):
            self._opt_seen = True
            return
        self._open(self._cur.opt, self._mark())

    def on_training_step_batch_end(self, model, data_batch, output_batch, loss, iteration: int = 0) -> None:
        if self._opt_seen:  # an untimed step ended: if the next one is timed, it starts from here
            self._opt_seen = False
            self._prev_end = self._mark() if (iteration + 1) % self.every_n == 0 else None
            return
        cur = self._cur
        if cur is None or not cur.opt:  # still accumulating gradients (or an untimed micro-step)
            return
        end = self._mark()
        self._close(cur.opt, end)
        cur.end, self._prev_end, self._cur = end, end, None
        global _pending
        _pending = {"phases_s_per_rank": lambda gather=True: self._gather(cur.seconds(), gather),
                    "phases_clock": CLOCK_EVENTS if self._events else CLOCK_SYNC}

    def on_training_step_end(self, model, data_batch, output_batch, loss, iteration: int = 0) -> None:
        if self._prof is not None:
            self._profiled += 1
            if self._profiled >= self.profile_steps:
                self._stop_profiler()  # closes the last ProfilerStep# range
            else:
                self._prof.step()

    def on_train_end(self, model, iteration: int = 0) -> None:
        if self._prof is not None:
            self._stop_profiler()

    # -- helpers ---------------------------------------------------------------------------------------------
    def _gather(self, vals: list[float], gather: bool = True) -> list[dict]:
        if gather and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dev = _device.get_device() if _device is not None else torch.device("cpu")
            mine = torch.tensor(vals, dtype=torch.float64, device=dev)
            parts = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
            dist.all_gather(parts, mine)
            rows = torch.stack(parts).cpu().tolist()
        else:
            rows = [vals]
        return [{p: round(float(v), 6) for p, v in zip(PHASES, row)} for row in rows]

    def _trace_file(self) -> str:
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        base = self.trace_path or os.path.join(self.config.job.path_local, "profile", "trace")
        return f"{base}-rank{rank}.json"

    def _start_profiler(self) -> None:
        from torch.profiler import ProfilerAction, ProfilerActivity, profile

        acts = [ProfilerActivity.CPU]
        if _device is not None and _device.device_type() == "cuda":
            acts.append(ProfilerActivity.CUDA)
        # COSMOS_PROFILE_STACK=1: Python frames in the trace (which callback held the host while the device
        # idled; bench/trace_gaps.py reads them); off by default, the Python tracer slows the profiled steps.
        stack = _device.env_flag("COSMOS_PROFILE_STACK") if _device is not None else False
        # A schedule that always records: without one, torch writes no ProfilerStep#N ranges into the trace.
        self._prof = profile(activities=acts, record_shapes=False, with_stack=stack,
                             schedule=lambda _step: ProfilerAction.RECORD)
        self._prof.__enter__()  # opens ProfilerStep#0; each step end opens the next (bench/trace_gaps.py)
        log.info(f"profiling {self.profile_steps} step(s) ({', '.join(a.name for a in acts)}) -> {self._trace_file()}",
                 rank0_only=False)

    def _stop_profiler(self) -> None:
        prof, self._prof = self._prof, None
        prof.__exit__(None, None, None)
        path = self._trace_file()
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        prof.export_chrome_trace(path)
        log.info(f"profiler trace: {path}", rank0_only=False)
        self._profiled = max(self._profiled, self.profile_steps)
