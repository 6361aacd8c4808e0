"""Device statistics for upstream's DeviceMonitor callback without requiring NVML.

Upstream reads temperature, power, utilisation and clocks through torch.cuda (which needs pynvml) and memory
through NVML directly, so the callback crashes on hosts without NVIDIA's library (NPU, CPU, many containers).
Here every field is filled where the device can report it and is 0 where it cannot; the keys stay the same so
upstream's table and logs keep their shape.
"""

from __future__ import annotations

from . import device

_GB = 1024**3


def _used_free(mem_get_info) -> dict:
    """Device memory in use / free as the driver sees it (what upstream read through NVML)."""
    try:
        free, total = mem_get_info()
    except Exception:
        return {"nvml_used_gpu_mem_gb": 0.0, "nvml_free_gpu_mem_gb": 0.0}
    return {"nvml_used_gpu_mem_gb": (total - free) / _GB, "nvml_free_gpu_mem_gb": free / _GB}


def _cuda_nvml_fields() -> dict:
    import torch

    out = {}
    for key, fn in (
        ("temp", torch.cuda.temperature),
        ("power", torch.cuda.power_draw),
        ("util", torch.cuda.utilization),
        ("clock", torch.cuda.clock_rate),
    ):
        try:
            out[key] = fn()
        except Exception:  # pynvml missing or unsupported (MIG, containers)
            out[key] = 0
    out.update(_used_free(torch.cuda.mem_get_info))
    return out


def _npu_fields() -> dict:
    import torch

    return {"temp": 0, "power": 0, "util": 0, "clock": 0, **_used_free(lambda: torch.npu.mem_get_info())}


def device_sample() -> dict:
    """Peak memory since the last reset plus whatever health fields this device exposes."""
    stats = device.memory_stats()
    sample = {
        "peak_gpu_mem_gb": stats.get("peak", 0) / _GB,
        "peak_gpu_mem_reserved_gb": stats.get("peak_reserved", stats.get("reserved", 0)) / _GB,
    }
    kind = device.device_type()
    if kind == "cuda":
        sample.update(_cuda_nvml_fields())
    elif kind == "npu":
        sample.update(_npu_fields())
    else:
        sample.update(temp=0, power=0, util=0, clock=0, nvml_used_gpu_mem_gb=0.0, nvml_free_gpu_mem_gb=0.0)
    return sample
