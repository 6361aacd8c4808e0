"""GarbageCollectionCallback: Python's cyclic garbage collector on a schedule instead of on allocation counts.

Registered by train.sh next to the metrics callback:
    ++trainer.callbacks.gc_policy={_target_:cosmos_predict2.portable.gc_policy.GarbageCollectionCallback}

Why: a training step allocates tens of thousands of Python objects (autograd nodes, the checkpointing modes'
caches, compiled-region guards), so the automatic collector runs dozens of young-generation passes per step and,
every few dozen steps, a full pass over every object the process holds (upstream's imports alone are ~0.5 M). On a
launch-bound step (Text2Image 2B: the device waits for the host) that host time is step time: on a 2-core CPU the
28-block Text2Image net spent ~8 ms per step in young passes and 420-470 ms in each full pass (one every ~13 steps).

What it does (close to torchtitan's policy, which collects generation 1 every N steps): at train start, one full
collection, then `gc.freeze()` (everything alive after setup is moved out of the collector's view) and
`gc.disable()`; every `every_n` optimizer steps one full collection, cheap because the frozen setup objects are
skipped. At train end automatic collection comes back.
Reference cycles made during training are still freed, at most `every_n` steps late.

every_n (or COSMOS_GC_EVERY; train.sh: `-- ++trainer.callbacks.gc_policy.every_n=N`): default 50. 0 leaves Python's
automatic collector exactly as it was (upstream's behaviour).
"""

from __future__ import annotations

import gc
import os

from imaginaire.utils import log
from imaginaire.utils.callback import Callback

DEFAULT_EVERY = 50
ENV_EVERY = "COSMOS_GC_EVERY"


def every_from(every_n: int | None, env=os.environ) -> int:
    """The period in steps: the callback's every_n if given, else COSMOS_GC_EVERY, else 50; 0 means off."""
    name = ENV_EVERY if every_n is None else "gc_policy.every_n"
    raw = every_n if every_n is not None else env.get(ENV_EVERY, DEFAULT_EVERY)
    try:
        value = int(raw)
    except (TypeError, ValueError):
        value = None
    if value is None or value < 0:
        raise ValueError(f"{name}={raw} is not a step count (gc_policy). Pass N >= 1 (a full collection every N "
                         "steps) or 0 (Python's automatic garbage collection)")
    return value


class Schedule:
    """The policy itself: the callback runs it in the trainer, the benchmarks (bench/) around their bare steps."""

    def __init__(self, every_n: int):
        self.every_n = every_n
        self.active = False
        self.collections = 0  # scheduled collections run (tests read it)

    def start(self) -> bool:
        """Freeze what is alive and turn automatic collection off; False when every_n is 0 or already started."""
        if not self.every_n or self.active:
            return False
        gc.collect()
        gc.freeze()
        gc.disable()
        self.active = True
        return True

    def after_step(self, step: int) -> None:
        """After optimizer step `step` (counted from 1): a full collection every every_n steps."""
        if self.active and step % self.every_n == 0:
            gc.collect()
            self.collections += 1

    def stop(self) -> None:
        if self.active:
            gc.unfreeze()
            gc.enable()
            self.active = False


class GarbageCollectionCallback(Callback):
    def __init__(self, every_n: int | None = None):
        super().__init__()
        self.schedule = Schedule(every_from(every_n))

    def on_train_start(self, model, iteration: int = 0) -> None:
        if self.schedule.start():
            log.info(f"garbage collection: automatic collection off while training, one full collection every "
                     f"{self.schedule.every_n} steps ({ENV_EVERY}=0 keeps Python's automatic collection)")

    def on_training_step_end(self, model, data_batch, output_batch, loss, iteration: int = 0) -> None:
        self.schedule.after_step(iteration)

    def on_train_end(self, model, iteration: int = 0) -> None:
        self.schedule.stop()
