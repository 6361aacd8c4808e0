"""The compute-dtype policy: which floating-point dtype the models compute in, decided once per process.

NPU and CUDA: bfloat16 (upstream's choice; unchanged). CPU: bfloat16 only where the CPU runs it natively, else
float32. A CPU without bf16 hardware runs bf16 matmul/convolution on emulation paths that are 100-200x slower than
fp32 (a 3-iteration smoke run took about an hour instead of seconds), so there fp32 is both faster and exact.

"Native" means:
- x86-64: the CPU has AVX512-BF16 or AMX-BF16, ATen dispatches its AVX512 kernels
  (`torch.backends.cpu.get_cpu_capability()`; `ATEN_CPU_CAPABILITY=avx2` lowers it) and oneDNN is not capped
  below AVX512_CORE_BF16 (`ONEDNN_MAX_CPU_ISA` / `DNNL_MAX_CPU_ISA`).
- aarch64: the CPU reports the `bf16` feature (Armv8.6 BF16 instructions).
- anything else: no.

`COSMOS_CPU_DTYPE=auto|fp32|bf16` overrides the choice on CPU (train.sh: `--cpu_dtype=`); it is ignored on NPU/CUDA.

Consumers: the `_smoke` experiments (model and pipeline precision), upstream's VAE default dtype, the inference
scripts' default `--dtype`, train.sh's log header and `python -m installer doctor`. `decide()` and
`bf16_native()` are pure functions of their inputs (tested on given capabilities); `probe()` reads this host.
This file imports only torch and the standard library and can be loaded on its own by file path (the launcher and
the doctor do that; hence NamedTuples, which need no sys.modules entry, not dataclasses); only `policy()` reaches
for the device layer of its package.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import NamedTuple

import torch

try:
    from .user_error import UserRuntimeError, UserValueError
except ImportError:  # loaded by file path (scripts/train_checks.py, installer doctor): user_error.py beside it
    import importlib.util

    _name = "cosmos_predict2.portable.user_error"  # one module object per process, however it is loaded
    if _name not in sys.modules:
        _spec = importlib.util.spec_from_file_location(
            _name, os.path.join(os.path.dirname(os.path.abspath(__file__)), "user_error.py"))
        sys.modules[_name] = importlib.util.module_from_spec(_spec)
        _spec.loader.exec_module(sys.modules[_name])
    UserRuntimeError, UserValueError = sys.modules[_name].UserRuntimeError, sys.modules[_name].UserValueError

ENV = "COSMOS_CPU_DTYPE"
_CHOICES = {"": "auto", "auto": "auto", "fp32": "float32", "float32": "float32", "bf16": "bfloat16",
            "bfloat16": "bfloat16"}
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

# oneDNN's x86 ISA names in rising order (docs: "CPU ISA hints"); a cap below AVX512_CORE_BF16 means no native bf16.
_ONEDNN_BELOW_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")
_X86 = ("x86_64", "amd64", "i386", "i686", "x86")
_ARM = ("aarch64", "arm64", "armv8l", "armv9l")
_X86_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


class CpuInfo(NamedTuple):
    machine: str  # platform.machine(), lower case
    capability: str  # torch.backends.cpu.get_cpu_capability(): "AVX512", "AVX2", "DEFAULT", "SVE256", ...
    flags: frozenset  # lower-case CPU feature names (hardware), e.g. {"avx2", "avx512_bf16"} or {"bf16"} on arm
    onednn_max_isa: str  # ONEDNN_MAX_CPU_ISA (or DNNL_MAX_CPU_ISA), "" if unset
    model: str = ""  # CPU model name, for reports


class Decision(NamedTuple):
    device: str  # "cpu" | "cuda" | "npu"
    dtype_name: str  # "bfloat16" | "float32" (upstream's config strings)
    native_bf16: bool | None  # CPU only; None on accelerators
    why: str  # one short clause
    source: str  # "auto" | "COSMOS_CPU_DTYPE=fp32" | ... | "device default"
    cpu: CpuInfo | None = None

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype_name]

    def line(self) -> str:
        """One line for logs: `compute dtype float32 (cpu AMD EPYC, capability AVX2, bf16 native: no - ...; auto)`."""
        if self.device != "cpu":
            return f"compute dtype {self.dtype_name} ({self.device}: {self.why}; {self.source})"
        c = self.cpu
        model = f"cpu {c.model}, " if c and c.model else ""
        cap = c.capability if c else "?"
        return (f"compute dtype {self.dtype_name} ({model}capability {cap}, bf16 native: "
                f"{'yes' if self.native_bf16 else 'no'} - {self.why}; {self.source})")


def _onednn_capped(isa: str) -> bool:
    return isa.strip().upper() in _ONEDNN_BELOW_BF16


def bf16_native(cpu: CpuInfo) -> tuple[bool, str]:
    """(native, why) for bf16 compute on this CPU description."""
    machine = cpu.machine.lower()
    if machine in _X86:
        have = [f for f in _X86_BF16_FLAGS if f in cpu.flags]
        if not have:
            return False, "no avx512_bf16/amx_bf16 in the CPU flags"
        if not cpu.capability.upper().startswith("AVX512"):
            return False, f"{'/'.join(have)} present but ATen runs {cpu.capability} kernels (ATEN_CPU_CAPABILITY)"
        if _onednn_capped(cpu.onednn_max_isa):
            return False, f"oneDNN capped at {cpu.onednn_max_isa.strip().upper()} (ONEDNN_MAX_CPU_ISA)"
        return True, f"{'/'.join(have)} with {cpu.capability} kernels"
    if machine in _ARM:
        if "bf16" in cpu.flags:
            return True, "aarch64 with the bf16 feature"
        return False, "aarch64 without the bf16 feature"
    return False, f"no native bf16 path known for {machine or 'this architecture'}"


def parse_choice(raw: str | None) -> str:
    """'auto' | 'float32' | 'bfloat16' from COSMOS_CPU_DTYPE's value; raises ValueError (one line) if unknown."""
    key = (raw or "").strip().lower()
    if key not in _CHOICES:
        raise UserValueError(f"{ENV}={raw!r} is not a CPU dtype choice (environment or --cpu_dtype). "
                             "Use auto, fp32 or bf16.")
    return _CHOICES[key]


def decide(device: str, cpu: CpuInfo | None = None, choice: str | None = None) -> Decision:
    """The policy. `choice` is COSMOS_CPU_DTYPE's raw value (None/"" = auto); `cpu` is needed on CPU only."""
    if device != "cpu":
        return Decision(device, "bfloat16", None, "accelerator default", "device default")
    want = parse_choice(choice)
    cpu = cpu if cpu is not None else probe()
    native, why = bf16_native(cpu)
    if want == "auto":
        return Decision("cpu", "bfloat16" if native else "float32", native, why, "auto", cpu)
    return Decision("cpu", want, native, why, f"{ENV}={(choice or '').strip()}", cpu)


# ---------------------------------------------------------------------------------------------- this host


def _proc_cpuinfo() -> tuple[set, str]:
    flags, model = set(), ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, val = line.partition(":")
                key = key.strip().lower()
                if key in ("flags", "features") and not flags:
                    flags = set(val.lower().split())
                elif key in ("model name", "cpu model", "hardware") and not model:
                    model = val.strip()
                if flags and model:
                    break
    except OSError:
        pass
    return flags, model


def _torch_flags() -> tuple[set, str]:
    """Hardware features as torch's cpuinfo sees them: a dict in newer torch, `_is_*_supported()` in older."""
    flags, model = set(), ""
    cpu_mod = getattr(torch._C, "_cpu", None)
    if cpu_mod is None:
        return flags, model
    get = getattr(cpu_mod, "_get_cpu_capability", None)
    if callable(get):
        try:
            info = get()
        except Exception:  # noqa: BLE001 - a probe, never a crash
            info = None
        if isinstance(info, dict):
            flags |= {str(k).lower() for k, v in info.items() if v is True}
            model = str(info.get("cpu_name") or "")
    for flag in _X86_BF16_FLAGS:  # torch 2.7-2.9: torch._C._cpu._is_avx512_bf16_supported() etc.
        name = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_bf16": "_is_amx_tile_supported"}[flag]
        fn = getattr(cpu_mod, name, None)
        if callable(fn):
            try:
                if fn():
                    flags.add(flag)
            except Exception:  # noqa: BLE001
                pass
    return flags, model


def _capability() -> str:
    fn = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
    if callable(fn):
        try:
            return str(fn())
        except Exception:  # noqa: BLE001
            pass
    for line in torch.__config__.show().splitlines():  # "  - CPU capability usage: AVX512"
        if "CPU capability usage:" in line:
            return line.split(":", 1)[1].strip()
    return "unknown"


def probe() -> CpuInfo:
    """This host's CPU as the policy needs it (hardware flags from /proc/cpuinfo and torch's cpuinfo)."""
    pflags, pmodel = _proc_cpuinfo()
    tflags, tmodel = _torch_flags()
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or ""
    return CpuInfo(
        machine=platform.machine().lower(),
        capability=_capability(),
        flags=frozenset(pflags | tflags),
        onednn_max_isa=isa,
        model=pmodel or tmodel or platform.processor(),
    )


_POLICY: Decision | None = None


def policy() -> Decision:
    """This process's decision, made once (device from the device layer, COSMOS_CPU_DTYPE from the environment)."""
    global _POLICY
    if _POLICY is None:
        from . import device

        try:
            _POLICY = decide(device.device_type(), choice=os.environ.get(ENV))
        except ValueError as e:
            raise UserRuntimeError(str(e).removeprefix("error: ")) from None
    return _POLICY


def compute_dtype() -> torch.dtype:
    """torch.bfloat16 or torch.float32: what the DiT, the VAE and the text path compute in."""
    return policy().dtype


def precision_name() -> str:
    """The same as upstream's config string: "bfloat16" or "float32"."""
    return policy().dtype_name
