"""The device layer: which accelerator this process runs on, decided once at import.

`DEVICE_TYPE` is "npu" when torch_npu imports and reports a device, else "cuda" when CUDA is available, else
"cpu". `COSMOS_DEVICE=cpu|cuda|npu` forces the choice (and fails with one clear line if that device is absent).

Why NPU is checked first and why nothing below dispatches on `torch.cuda.is_available()`: torch_npu's
`transfer_to_npu` makes `torch.cuda.is_available()` return True on an Ascend host, so a "no CUDA, hence NPU"
test never picks the NPU path there. Every helper dispatches on `DEVICE_TYPE` instead.

torch_npu is only ever imported inside a try; this module imports torch and the standard library only.

This is the only detection rule of the project: `installer doctor` and `scripts/train_preflight.py` load this file by
path (they cannot import the tree's package) and read `DEVICE_TYPE` / `device_count()` from it. `env_flag` is the
one parser of boolean environment variables.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys


def _autoload_diagnosis(exc: BaseException) -> str | None:
    """autoload.diagnose, loaded by path: this file is also loaded standalone (scripts/train_preflight.py)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "autoload.py")
    if not os.path.isfile(path):
        return None
    spec = importlib.util.spec_from_file_location("_cosmos_portable_autoload", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.diagnose(exc)


def _user_error():
    """portable/user_error.py (the one user-error type), loaded by path under its package name so that a by-path
    load of this file (doctor, preflight) and a package import share one module object."""
    name = "cosmos_predict2.portable.user_error"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, os.path.join(os.path.dirname(os.path.abspath(__file__)), "user_error.py"))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


UserError, UserValueError = _user_error().UserError, _user_error().UserValueError

try:
    import torch
except RuntimeError as _exc:  # torch >= 2.5 autoloads torch_npu; without CANN sourced `import torch` raises
    _line = _autoload_diagnosis(_exc)
    if _line is None:
        raise
    raise RuntimeError(_line) from _exc

_KINDS = ("cpu", "cuda", "npu")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def env_flag(name: str, default: bool = False, environ=None) -> bool:
    """The boolean environment variable `name`: 1/true/yes/on or 0/false/no/off (any case), `default` when unset.
    Anything else is a one-line error rather than a silent guess."""
    raw = (os.environ if environ is None else environ).get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise UserValueError(
        f"{name}={raw!r} is not a boolean (environment). Use 1/0, true/false, yes/no or on/off, or unset it."
    )


class DeviceError(_user_error().UserRuntimeError):
    """COSMOS_DEVICE names no device kind. A UserError (and a RuntimeError, as callers catch) whose str is the whole
    `error: ...` line: it reaches the user as the last line of a traceback when training imports this module."""


class ForcedDeviceAbsent(DeviceError):
    """COSMOS_DEVICE names a valid kind this host does not have (`kind` says which). train_preflight's --dry-run
    accepts this one (it plans for another host), never a bad kind (DeviceError)."""

    def __init__(self, kind: str, what: str, where: str, todo: str):
        super().__init__(what, where, todo)
        self.kind = kind
_DIST_BACKENDS = {"npu": "hccl", "cuda": "nccl", "cpu": "gloo"}


_npu_import_error: list = []


def _import_torch_npu():
    try:
        import torch_npu  # noqa: F401  (optional: Ascend hosts only)
    except (ImportError, OSError) as e:  # not installed, or CANN libraries missing
        if not isinstance(e, ModuleNotFoundError) or e.name != "torch_npu":
            _npu_import_error.append(f"{type(e).__name__}: {e}")
        return None
    return torch_npu


def npu_import_error() -> str | None:
    """Why an installed torch_npu failed to import ('OSError: libhccl.so ...'); None when it imported or is absent."""
    return _npu_import_error[0] if _npu_import_error else None


def _npu_available(npu_mod) -> bool:
    if npu_mod is None or not hasattr(torch, "npu"):
        return False
    try:
        return bool(torch.npu.is_available())
    except Exception:  # a broken driver reports as "no device", not as a crash at import
        return False


def _detect() -> tuple[str, object]:
    forced = os.environ.get("COSMOS_DEVICE", "").strip().lower()
    if forced and forced not in _KINDS:
        raise DeviceError(f"COSMOS_DEVICE={forced} is not a device kind", "environment",
                          "Use one of cpu, cuda, npu, or unset it to auto-detect")
    if forced == "cpu":
        return "cpu", None
    if forced == "cuda":
        if not torch.cuda.is_available():
            raise ForcedDeviceAbsent("cuda", "COSMOS_DEVICE=cuda but torch.cuda.is_available() is False", "environment",
                                     "Install a CUDA build of torch on a GPU host, or unset COSMOS_DEVICE")
        return "cuda", None
    npu_mod = _import_torch_npu()
    if forced == "npu":
        if not _npu_available(npu_mod):
            why = "torch_npu cannot be imported" if npu_mod is None else "torch.npu.is_available() is False"
            raise ForcedDeviceAbsent("npu", f"COSMOS_DEVICE=npu but {why}", "environment",
                                     "Install torch_npu matching torch and source CANN's set_env.sh, or unset "
                                     "COSMOS_DEVICE")
        return "npu", npu_mod
    if _npu_available(npu_mod):
        return "npu", npu_mod
    if torch.cuda.is_available():
        return "cuda", None
    return "cpu", None


DEVICE_TYPE, _NPU = _detect()


def device_type() -> str:
    return DEVICE_TYPE


def npu_module():
    """torch_npu when running on NPU, else None."""
    return _NPU


def device_count() -> int:
    """Accelerators visible to this process (0 on CPU)."""
    if DEVICE_TYPE == "cpu":
        return 0
    return int(_accel().device_count())


def total_memory_gib(index: int = 0) -> float | None:
    """Memory of accelerator `index` in GiB (the card's size, not what is free); None on CPU."""
    if DEVICE_TYPE == "cpu":
        return None
    return float(_accel().get_device_properties(index).total_memory) / 2**30


# Ascend SoC names as torch.npu.get_device_name() reports them -> product line. The training kernels the portable
# ops call differ by line (torch_npu 2.7.1 _op_plugin_docs): npu_fusion_attention exists on Atlas A2 training
# parts only (A3 as its successor); on the first Atlas training series (Ascend910A/B/ProA/ProB/PremiumA)
# npu_rotary_mul runs only in 'half' mode with head_dim 128. installer/support.py holds the same table for doctor
# (tests/ops/test_npu_branches.py checks that the two agree).
NPU_PRODUCTS = (
    (r"Ascend910B\d", "Atlas A2 training"),
    (r"Ascend910_93\d*", "Atlas A3 training"),
    (r"Ascend910(A|B|ProA|ProB|PremiumA)", "Atlas training (910A)"),
)


def npu_product(soc: str | None) -> str | None:
    """'Atlas A2 training' / 'Atlas A3 training' / 'Atlas training (910A)' for a SoC name, None if unknown."""
    import re

    for pattern, product in NPU_PRODUCTS:
        if soc and re.fullmatch(pattern, soc):
            return product
    return None


_soc: list = []


def npu_soc() -> str | None:
    """The NPU's SoC name (torch.npu.get_device_name(), e.g. 'Ascend910B3'); None off NPU or if unreadable."""
    if DEVICE_TYPE != "npu":
        return None
    if not _soc:
        try:
            _soc.append(str(torch.npu.get_device_name(current_device_index())))
        except Exception:  # a driver that cannot say: the kernels' own checks decide
            _soc.append(None)
    return _soc[0]


def npu_is_910a() -> bool:
    """True on the first Atlas training series: no npu_fusion_attention, npu_rotary_mul 'half' mode only."""
    return npu_product(npu_soc()) == "Atlas training (910A)"


def is_npu() -> bool:
    return DEVICE_TYPE == "npu"


def is_cuda() -> bool:
    return DEVICE_TYPE == "cuda"


def _accel():
    """torch.cuda or torch.npu (same API surface); never called on CPU."""
    return torch.npu if DEVICE_TYPE == "npu" else torch.cuda


def dist_backend() -> str:
    return _DIST_BACKENDS[DEVICE_TYPE]


def current_device_index() -> int:
    if DEVICE_TYPE == "cpu":
        return 0
    return int(_accel().current_device())


def get_device(index: int | None = None) -> torch.device:
    if DEVICE_TYPE == "cpu":
        return torch.device("cpu")
    return torch.device(DEVICE_TYPE, current_device_index() if index is None else index)


def set_device(local_rank: int) -> None:
    if DEVICE_TYPE != "cpu":
        _accel().set_device(local_rank)


def synchronize() -> None:
    if DEVICE_TYPE != "cpu":
        _accel().synchronize()


def host_to_device(t: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """`t.to(device, dtype)` for a small host tensor made during a step, without waiting for the device.

    A copy from pageable host memory makes the host wait until everything queued on the stream has run, so a
    per-step `.to(device)` of a host tensor keeps the host from ever running ahead of the device. Staged in pinned
    memory and copied non-blocking it waits for nothing (the caching host allocator keeps the buffer until the copy
    is done). Same values; where pinning fails the plain copy (which waits)."""
    if dtype is not None:
        t = t.to(dtype=dtype)
    if torch.device(device).type == "cpu" or t.device.type != "cpu":
        return t.to(device)
    try:
        staged = t.pin_memory()
    except RuntimeError:  # no pinned memory for this accelerator
        return t.to(device)
    return staged.to(device, non_blocking=True)


def new_stream():
    """A new side stream, or None on CPU (where all work is synchronous anyway)."""
    if DEVICE_TYPE == "cpu":
        return None
    return _accel().Stream()


def current_stream():
    if DEVICE_TYPE == "cpu":
        return None
    return _accel().current_stream()


def stream(s):
    """Context manager running work on stream `s`; a no-op for None or on CPU."""
    if s is None or DEVICE_TYPE == "cpu":
        return contextlib.nullcontext()
    return _accel().stream(s)


def timing_event():
    """A device event that records a timestamp on the current stream when `.record()`ed, or None on CPU (or an
    accelerator module without timing events): callers then take host stamps after `synchronize()`, which is exact
    on CPU, where work is synchronous."""
    if DEVICE_TYPE == "cpu":
        return None
    make = getattr(_accel(), "Event", None)
    if make is None:
        return None
    try:
        return make(enable_timing=True)
    except (TypeError, RuntimeError):  # an Event without timing support
        return None


def wait_stream(s) -> None:
    """Make the current stream wait for the work queued on `s`; a no-op for None or on CPU."""
    if s is None or DEVICE_TYPE == "cpu":
        return
    _accel().current_stream().wait_stream(s)


def is_capturing() -> bool:
    """True while the current stream is being captured into a CUDA (or NPU) graph."""
    if DEVICE_TYPE == "cpu":
        return False
    fn = getattr(_accel(), "is_current_stream_capturing", None)
    try:
        return bool(fn()) if fn is not None else False
    except Exception:  # no initialised context yet: nothing can be capturing
        return False


def memory_stats() -> dict:
    """Bytes: allocated, reserved, peak (allocated), peak_reserved. Zeros on CPU."""
    if DEVICE_TYPE == "cpu":
        return {"allocated": 0, "reserved": 0, "peak": 0, "peak_reserved": 0}
    acc = _accel()
    return {
        "allocated": int(acc.memory_allocated()),
        "reserved": int(acc.memory_reserved()),
        "peak": int(acc.max_memory_allocated()),
        "peak_reserved": int(acc.max_memory_reserved()),
    }


# Peaks folded in before every reset: upstream's DeviceMonitor resets the peak counters at each of its logs, which
# would hide the run's true peak from anyone reading them later (our metrics and train.sh's report).
_folded_peaks = {"peak": 0, "peak_reserved": 0}


def reset_peak_memory_stats() -> None:
    """Reset the accelerator's peak counters (per-interval peaks); the run's peak survives in peak_memory_since_start."""
    if DEVICE_TYPE != "cpu":
        now = memory_stats()
        for k in _folded_peaks:
            _folded_peaks[k] = max(_folded_peaks[k], now[k])
        _accel().reset_peak_memory_stats()


def peak_memory_since_start() -> dict:
    """Bytes: the highest peak (allocated) and peak_reserved of the process, across reset_peak_memory_stats calls."""
    now = memory_stats()
    return {k: max(v, now[k]) for k, v in _folded_peaks.items()}


def manual_seed_all(seed: int) -> None:
    """Seed every accelerator generator (like torch.cuda.manual_seed_all); the CPU generator is torch.manual_seed's."""
    if DEVICE_TYPE != "cpu":
        _accel().manual_seed_all(seed)


def empty_cache() -> None:
    if DEVICE_TYPE != "cpu":
        _accel().empty_cache()


def compile_enabled() -> bool:
    """torch.compile is used for the small fused kernels on CUDA only, unless COSMOS_DISABLE_COMPILE=1."""
    return (
        DEVICE_TYPE == "cuda"
        and hasattr(torch, "compile")
        and not env_flag("COSMOS_DISABLE_COMPILE")
    )


# Exceptions that other PyTorch machinery raises through our functions on purpose: non-reentrant checkpointing
# stops a recomputation early by raising from a saved-tensor hook inside whatever op runs last (torch >= 2.1).
def _control_flow_exceptions() -> tuple:
    try:
        from torch.utils import checkpoint as ckpt
    except Exception:  # noqa: BLE001 (a torch without it has nothing to pass through)
        return ()
    stop = getattr(ckpt, "_StopRecomputationError", None)
    return (stop,) if isinstance(stop, type) else ()


_CONTROL_FLOW = _control_flow_exceptions()


def compiling() -> bool:
    """True while torch.compile traces the caller (a compiled DiT block): our own compiled kernels, caches and
    counters step aside so the whole block is one graph (torch.compiler.is_compiling; False on torch without it)."""
    comp = getattr(torch, "compiler", None)
    return bool(comp is not None and hasattr(comp, "is_compiling") and comp.is_compiling())


def maybe_compile(fn, what: str):
    """`fn` compiled with torch.compile on CUDA, falling back to eager (once, with a warning) if compiling or running
    the compiled version fails (no triton, unsupported compiler). Eager everywhere else."""
    state = {"compiled": None, "failed": False}

    def wrapper(*args, **kwargs):
        if compiling():  # inside a compiled block: trace the eager function into the block's graph
            return fn(*args, **kwargs)
        if state["failed"] or not compile_enabled() or not any(
            isinstance(a, torch.Tensor) and a.device.type == "cuda" for a in args
        ):
            return fn(*args, **kwargs)
        if state["compiled"] is None:
            state["compiled"] = torch.compile(fn, dynamic=False)
        try:
            return state["compiled"](*args, **kwargs)
        except _CONTROL_FLOW:  # activation checkpointing's early stop passes through; not a compile failure
            raise
        except Exception as exc:  # stay correct, just slower
            state["failed"] = True
            print(f"[cosmos-portable] warning: torch.compile of {what} failed ({type(exc).__name__}: {exc}); "
                  "using eager", flush=True)
            return fn(*args, **kwargs)

    wrapper.eager = fn
    wrapper.state = state
    return wrapper
