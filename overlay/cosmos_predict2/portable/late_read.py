"""Device values read on the host later, without making the host wait for the device.

`.item()`, `.tolist()` or `int(t)` of a device tensor waits until everything queued on the stream has run, not only
the work that made the value. Read at a step's end, that lets the device run dry while the host prepares the next
step. `LateRead(*tensors)` queues a copy of each into pinned host memory behind the work that makes them and records
an event; `values()` waits for that event alone, which the device has long passed when it is asked a step later.

On CPU the values are copied at once (work there is synchronous). Where pinned memory or events are missing it
falls back to a plain copy, which waits as before. Used by TrainMetricsCallback (the loss of each line) and by the
logging-iteration reads of IterSpeed and LossLog (patches iter-speed-logs-one-step-late, loss-log-reads-without-wait).
"""

from __future__ import annotations

import torch

from . import device


class LateRead:
    def __init__(self, *tensors: torch.Tensor) -> None:
        self._done = None
        srcs = [t.detach() for t in tensors]
        if all(t.device.type == "cpu" for t in srcs):
            self._host = [t.clone() for t in srcs]
            return
        try:
            self._host = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in srcs]
        except RuntimeError:  # no pinned memory for this accelerator: a plain copy, which waits
            self._host = [t.cpu() for t in srcs]
            return
        for buf, t in zip(self._host, srcs):
            buf.copy_(t, non_blocking=True)
        self._done = device.timing_event()
        if self._done is None:  # no events: wait here
            device.synchronize()
        else:
            self._done.record()

    def values(self) -> list[torch.Tensor]:
        """The host copies (waits only for the copies themselves, if they are not done yet)."""
        if self._done is not None:
            self._done.synchronize()
            self._done = None
        return self._host
