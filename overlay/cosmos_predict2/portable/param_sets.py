"""The net's parameters that hold a gradient, for GradClip at every step, and a module's parameters, for the EMA
update at every step, without walking the module tree each time.

GradClip clips the gradients of the net's parameters when those are all the gradients the model has. Finding them
took two walks per step: `net.parameters()` and `model.parameters()` (which also holds the EMA copy of the net).
`nn.Module.parameters()` recurses through every submodule. The 2B Text2Image model has ~2,300 modules, and the walks
took ~8 ms of host time per step on a 2-core CPU (bench/bench_grad_clip_host.py). They run between the backward and
the optimizer step, where the device has nothing queued: in an H200 trace of the Text2Image 2B step, GradClip's
host time before its first kernel was 12.7 ms of device idle (BENCHMARKS 3s).

Here the two walks' lists are kept for one (model, net) and used until a module or a parameter is registered
anywhere in the process. torch's global registration hooks bump a counter then: `module.x = nn.Parameter(...)`,
`add_module`, a LoRA adapter set up later. Which parameters hold a gradient is still read at every step, from the kept lists (~0.1
ms), so `requires_grad` changes and gradients set to None are seen as before.
`parameters(module)` keeps `list(module.parameters())` the same way, per module, dropped with the module: the EMA
update walked the net and the EMA net at every step (4.5 ms on the same CPU, bench/bench_grad_clip_host.py).
Not seen (the cache is not dropped): a parameter put straight into `module._parameters` (FSDP2 does so to swap
sharded and unsharded views of the same parameters, which does not change the set), and a submodule deleted without
replacement; `forget()` drops the cache for such cases.
"""

from __future__ import annotations

import weakref

import torch

_version = 0  # bumped by every module or parameter registration in the process
_hooked = False
_cache: dict = {}  # "entry": (version, weakref(model), weakref(net), net's parameters, model's parameters)
_module_params: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # module -> (version, its parameters)


def _bump(*_args) -> None:
    global _version
    _version += 1


def _ensure_hooks() -> None:
    global _hooked
    if not _hooked:
        torch.nn.modules.module.register_module_parameter_registration_hook(_bump)
        torch.nn.modules.module.register_module_module_registration_hook(_bump)
        _hooked = True


def forget(_ref=None) -> None:
    """Drop the kept walks: the next calls walk the modules again. Also the weak references' callback (`_ref`)."""
    _cache.clear()
    _module_params.clear()


def net_grad_params(model: torch.nn.Module, net: torch.nn.Module) -> list[torch.Tensor] | None:
    """The parameters of `net` whose `.grad` is set, in `net.parameters()` order, when they are as many as the
    parameters of `model` with a gradient (all of them: `net` is one of its submodules); else None. The same answer
    as walking both modules now."""
    _ensure_hooks()
    entry = _cache.get("entry")
    if entry is None or entry[0] != _version or entry[1]() is not model or entry[2]() is not net:
        # the lists hold the parameters: dropped with the model or the net, so a deleted model's memory is freed
        entry = (_version, weakref.ref(model, forget), weakref.ref(net, forget), list(net.parameters()),
                 list(model.parameters()))
        _cache["entry"] = entry
    params = [p for p in entry[3] if p.grad is not None]
    if len(params) != sum(p.grad is not None for p in entry[4]):
        return None
    return params


def parameters(module: torch.nn.Module) -> list[torch.Tensor]:
    """`list(module.parameters())`, kept until a module or parameter is registered anywhere in the process. The
    caller must not change the list."""
    _ensure_hooks()
    try:
        entry = _module_params.get(module)
    except TypeError:  # not weak-referenceable or not hashable (an object that only has .parameters()): walked
        return list(module.parameters())
    if entry is None or entry[0] != _version:
        entry = (_version, list(module.parameters()))
        _module_params[module] = entry
    return entry[1]
