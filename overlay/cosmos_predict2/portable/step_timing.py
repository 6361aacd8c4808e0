"""StepTimingCallback: where each training step's time goes, from synchronised timestamps at upstream's hooks.

Registered by train.sh next to the metrics callback:
    ++trainer.callbacks.step_timing={_target_:cosmos_predict2.portable.step_timing.StepTimingCallback}

Per optimizer step and per rank, in seconds (device synchronised at each boundary, so device work is billed to
the phase that queued it):
    data      waiting for the training loader (on_before_dataloading -> on_after_dataloading)
    vae_cond  the model's get_data_and_condition: normalisation, VAE encode (or the cached latent), conditioning
    fwd_bwd   forward and backward without vae_cond (on_before_forward -> on_after_backward)
    optimizer on_before_optimizer_step -> end of the trainer's training_step (grad clipping callbacks included)
    step      this rank's wall time from the previous step's end to this step's optimizer end
"other" (host-to-device copy, callbacks, checkpoint saves) is what the report derives: step - the four phases.
With gradient accumulation the phases add up over the micro-steps.

Cost: six device synchronizations per timed step (plus one at the end of the step before it). On a launch-bound
step (Text2Image 2B: the GPU waits for the host's launches) each one stops the host from running ahead.
`every_n=N` (or COSMOS_STEP_TIMING_EVERY=N; train.sh: `-- ++trainer.callbacks.step_timing.every_n=N`) times only the
iterations divisible by N and leaves the others alone: no synchronization, no gather, no `phases_s_per_rank` field
in their metrics lines (the breakdown table averages over the timed steps). Default 1: every step.
Every rank's figures are all_gathered once per step (one tiny all_gather on every rank) and handed to TrainMetricsCallback, which writes them into the step's
metrics.jsonl line as `phases_s_per_rank` (list over ranks of {data, vae_cond, fwd_bwd, optimizer, step}).

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
_pending: dict | None = None  # the last step's gathered figures, taken by TrainMetricsCallback


def take_fields() -> dict:
    """Fields for the metrics line of the step that just ended (empty if the callback is not registered)."""
    global _pending
    out, _pending = (_pending or {}), None
    return out


def _sync() -> None:
    if _device is not None:
        _device.synchronize()


def _now() -> float:
    _sync()
    return time.perf_counter()


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
        self._acc = dict.fromkeys(PHASES, 0.0)
        self._marks: dict[str, float] = {}
        self._step_start = None
        self._cond_in_micro = 0.0
        self._prof = None
        self._profiled = 0

    # -- vae/conditioning: time the model's get_data_and_condition ------------------------------------------
    def on_train_start(self, model, iteration: int = 0) -> None:
        pipe = getattr(model, "pipe", None)
        fn = getattr(pipe, "get_data_and_condition", None)
        if fn is not None and not getattr(fn, "_step_timed", False):
            def timed(*args, **kwargs):
                if not self._on:
                    return fn(*args, **kwargs)
                t = _now()
                out = fn(*args, **kwargs)
                self._cond_in_micro += _now() - t
                return out

            timed._step_timed = True
            pipe.get_data_and_condition = timed
        self._step_start = _now()

    def on_before_dataloading(self, iteration: int = 0) -> None:
        if self.profile_steps and self._prof is None and self._profiled == 0 and iteration >= self.profile_warmup:
            self._start_profiler()
        self._on = iteration % self.every_n == 0
        if not self._on:
            return
        if self._step_start is None:
            self._step_start = _now()
        self._marks["data"] = time.perf_counter()  # the device was synchronised at the previous step's end

    def on_after_dataloading(self, iteration: int = 0) -> None:
        if "data" in self._marks:
            self._acc["data"] += time.perf_counter() - self._marks.pop("data")

    def on_before_forward(self, iteration: int = 0) -> None:
        if not self._on:
            return
        self._cond_in_micro = 0.0
        self._marks["fwd"] = _now()

    def on_after_backward(self, model_ddp, iteration: int = 0) -> None:
        if "fwd" in self._marks:
            self._acc["fwd_bwd"] += _now() - self._marks.pop("fwd") - self._cond_in_micro
            self._acc["vae_cond"] += self._cond_in_micro
            self._cond_in_micro = 0.0

    def on_before_optimizer_step(self, model_ddp, optimizer, scheduler, grad_scaler, iteration: int = 0) -> None:
        if not self._on:
            self._opt_seen = True
            return
        self._marks["opt"] = _now()

    def on_training_step_batch_end(self, model, data_batch, output_batch, loss, iteration: int = 0) -> None:
        if self._opt_seen:  # an untimed step ended: if the next one is timed, it starts from here
            self._opt_seen = False
            self._step_start = _now() if (iteration + 1) % self.every_n == 0 else None
            return
        if "opt" not in self._marks:  # still accumulating gradients (or an untimed micro-step)
            return
        end = _now()
        self._acc["optimizer"] += end - self._marks.pop("opt")
        self._acc["step"] = end - (self._step_start if self._step_start is not None else end)
        self._step_start = end
        global _pending
        _pending = {"phases_s_per_rank": self._gather([self._acc[p] for p in PHASES])}
        self._acc = dict.fromkeys(PHASES, 0.0)

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
    def _gather(self, vals: list[float]) -> list[dict]:
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
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
