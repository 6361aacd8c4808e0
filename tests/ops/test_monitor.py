"""portable.monitor: the fields upstream's DeviceMonitor logs, without NVML, on every device kind."""

import importlib

UPSTREAM_KEYS = {"peak_gpu_mem_gb", "peak_gpu_mem_reserved_gb", "nvml_used_gpu_mem_gb", "nvml_free_gpu_mem_gb",
                 "temp", "power", "util", "clock"}


def test_cpu_sample_has_upstream_columns(portable):
    monitor = importlib.import_module(portable.__name__ + ".monitor")
    sample = monitor.device_sample()
    assert set(sample) == UPSTREAM_KEYS
    assert all(isinstance(v, (int, float)) for v in sample.values())


def test_used_free_from_the_driver_and_zero_when_unavailable(portable):
    monitor = importlib.import_module(portable.__name__ + ".monitor")
    gb = 1024**3
    assert monitor._used_free(lambda: (3 * gb, 8 * gb)) == {"nvml_used_gpu_mem_gb": 5.0, "nvml_free_gpu_mem_gb": 3.0}

    def broken():
        raise RuntimeError("no driver")

    assert monitor._used_free(broken) == {"nvml_used_gpu_mem_gb": 0.0, "nvml_free_gpu_mem_gb": 0.0}
