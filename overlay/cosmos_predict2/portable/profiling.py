"""Named ranges for the trainer's callbacks in a profiler trace, only while a profiler records.

upstream's CallBackGroup calls every callback's hook in turn; in a torch profiler trace (train.sh --profile_steps)
their host time is anonymous unless the Python tracer runs (COSMOS_PROFILE_STACK=1), which slows the host about
threefold and so distorts a trace whose question is where the host holds the device up. `callback_range` names each
hook call `callback <Class>.<hook>` as a record_function range (a few microseconds, and only while recording), so
bench/trace_gaps.py can bill device idle time to a callback from a plain trace.
"""

from __future__ import annotations

import contextlib

import torch

_NULL = contextlib.nullcontext()


def _recording() -> bool:
    try:
        return bool(torch.autograd.profiler._is_profiler_enabled)
    except AttributeError:  # a torch without the flag: no ranges
        return False


def callback_range(callback, method_name: str):
    """A record_function range `callback <Class>.<method_name>` while a profiler records; a no-op otherwise."""
    if not _recording():
        return _NULL
    return torch.profiler.record_function(f"callback {type(callback).__name__}.{method_name}")


__all__ = ["callback_range"]
