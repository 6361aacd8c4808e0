"""A stand-in for a jitted Triton kernel whose launch raises, for the first-launch guard's CPU tests
(portable/lerp_kernel.guarded_launch, used by lerp_kernel.py and adamw_kernel.py): the module's kernel, tables and
device context are stubbed so the guard runs on a machine without a GPU."""

from __future__ import annotations

import contextlib

import torch


class FailingKernel:
    """kernel[grid](*args, **constexprs) raises `exc`, after recording constexprs[key] in `calls`."""

    def __init__(self, exc: Exception, calls: list, key: str):
        self.exc, self.calls, self.key = exc, calls, key

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.calls.append(kwargs[self.key])
            raise self.exc
        return launch


def stub_first_launch(monkeypatch, module, exc: Exception, calls: list, key: str, tables: tuple) -> None:
    """`module` (lerp_kernel or adamw_kernel) with no variant launched yet, a kernel raising `exc`, its checked plan
    answering `tables` (or the reason once the kernel is off) and torch.cuda.device a no-op."""
    monkeypatch.setattr(module, "_kernel", FailingKernel(exc, calls, key))
    monkeypatch.setattr(module, "_unavailable", None)
    monkeypatch.setattr(module, "_launched", set())
    monkeypatch.setattr(module, "_checked_plan", lambda *lists: module._unavailable or tables)
    monkeypatch.setattr(torch.cuda, "device", lambda d: contextlib.nullcontext())
