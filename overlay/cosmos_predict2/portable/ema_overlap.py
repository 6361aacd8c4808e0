"""The one-device EMA update on a side stream, overlapped with the next step's forward (CUDA).

Upstream's FastEmaModelUpdater.update_average (fp32 EMA = beta * EMA + (1 - beta) * bf16 parameters) reads every
parameter and reads and writes the fp32 EMA after the optimizer step: on the Text2Image 2B step that is ~8 ms of
memory traffic on the critical path (GradClip and the EMA update together 12 ms of 0.168 s on an H200,
BENCHMARKS.md 3j). Nothing in the next step's forward needs it, so with COSMOS_EMA_OVERLAP=1 on CUDA it runs on a
side stream:
- `side_stream()` makes the side stream wait for the current one (the optimizer's writes to the parameters), runs
  the update there and records an event;
- `wait()` makes the current stream wait for that event. Patch 0049 calls it wherever the parameters are written
  or the EMA is read or written next: at the end of the model's training_step (after the forward, before the
  backward and the optimizer step), in the model's state_dict/load_state_dict, and first thing in the updater's
  copy_to/cache/restore (EMA scope, validation). Forward kernels and the update only read the parameters.
Tensors touched on the side stream are parameters, EMA weights and the fp32 buffer the update copies the parameters
into (portable/upcast.py), which all live for the whole run, so the caching allocator needs no record_stream.

Off by default (upstream's in-line update): two rounds on an H200 disagreed (train.sh 0.169 against 0.183 s in line,
then 0.194 against 0.185 s; the bare step with clip and EMA 0.172 against 0.168 s, BENCHMARKS.md 3j). Other
devices (NPU, CPU) always update in line.
The result is the same arithmetic on the same values (tests/ops/test_cuda.py checks it and that the wait is needed).
"""

from __future__ import annotations

import contextlib

import torch

from . import device

_streams: dict = {}  # device -> side stream
_pending: list = []  # events of updates not yet waited for


def enabled(dev: torch.device) -> bool:
    return dev.type == "cuda" and device.env_flag("COSMOS_EMA_OVERLAP", default=False)


@contextlib.contextmanager
def side_stream(dev: torch.device):
    """Run the block on `dev`'s side stream, ordered after the current stream's work so far (CUDA and
    COSMOS_EMA_OVERLAP=1); in line otherwise."""
    if not enabled(dev):
        yield
        return
    current = torch.cuda.current_stream(dev)
    stream = _streams.get(dev)
    if stream is None:
        stream = _streams[dev] = torch.cuda.Stream(dev)
    stream.wait_stream(current)
    with torch.cuda.stream(stream):
        yield
    event = torch.cuda.Event()
    event.record(stream)
    _pending.append(event)


def wait() -> None:
    """Order the current stream after every update launched on a side stream (no-op when none is pending)."""
    while _pending:
        torch.cuda.current_stream().wait_event(_pending.pop())


def pending() -> int:
    return len(_pending)
