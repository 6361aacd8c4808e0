"""Device statistics for upstream's DeviceMonitor callback without requiring NVML.

Upstream reads temperature, power, utilisation and clocks through torch.cuda (which needs pynvml) and memory
through NVML directly, so the callback crashes on hosts without NVIDIA's library (NPU, CPU, many containers).
Here a sample holds only the fields this kind of device can report (CUDA: NVML's when pynvml imports; NPU: memory;
CPU: none), so the log never shows a row of zeros that reads like a measurement, and `render_stats` writes one line
where the table would only hold host memory (CPU). The field set depends on the device kind only, so every rank
sends the same keys.
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


def _have_nvml() -> bool:
    try:
        import pynvml  # noqa: F401  (torch.cuda.temperature & co. need it)
    except ImportError:
        return False
    return True


def _cuda_nvml_fields() -> dict:
    import torch

    out = {}
    if not _have_nvml():
        out.update(_used_free(torch.cuda.mem_get_info))  # the driver's numbers, no NVML needed
        return out
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

    return _used_free(lambda: torch.npu.mem_get_info())  # torch_npu exposes no temperature/power/clock reading


def device_sample() -> dict:
    """Peak memory since the last reset plus whatever health fields this device exposes; {} on CPU."""
    kind = device.device_type()
    if kind not in ("cuda", "npu"):
        return {}  # no device memory counter, no sensors: host memory is DeviceMonitor's own cpu_mem_gb
    stats = device.memory_stats()
    sample = {
        "peak_gpu_mem_gb": stats.get("peak", 0) / _GB,
        "peak_gpu_mem_reserved_gb": stats.get("peak_reserved", stats.get("reserved", 0)) / _GB,
    }
    sample.update(_cuda_nvml_fields() if kind == "cuda" else _npu_fields())
    return sample


def render_stats(name: str, summary) -> str:
    """DeviceMonitor's log text from its summary table (rows = fields; columns Avg, Max, Min over ranks).

    Only host memory (CPU): one line. Otherwise upstream's table."""
    rows = list(summary.index)
    if rows == ["cpu_mem_gb"]:
        avg, mx, mn = (float(summary.loc["cpu_mem_gb", c]) for c in ("Avg", "Max", "Min"))
        return f"{name}: host memory {avg:.2f} GiB per rank (max {mx:.2f}, min {mn:.2f})"
    return f"{name} Stats:\n{summary.to_string()}"


def count_with_unit(n: int) -> str:
    """A parameter count as '1.96B', '844.48K' (exact count alongside where the unit rounds)."""
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f}{unit} ({n:,})"
    return f"{n:,}"
