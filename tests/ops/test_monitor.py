"""portable.monitor: the fields upstream's DeviceMonitor logs, without NVML, only where the device measures them."""

import importlib

import pandas as pd


def test_cpu_sample_has_no_fields_it_cannot_measure(portable):
    """CPU has no device memory counter and no sensors: no 0 standing in for a measurement."""
    monitor = importlib.import_module(portable.__name__ + ".monitor")
    assert monitor.device_sample() == {}


def test_render_one_line_for_host_memory_only_table_otherwise(portable):
    monitor = importlib.import_module(portable.__name__ + ".monitor")
    host = pd.DataFrame({"Avg": {"cpu_mem_gb": 1.5}, "Max": {"cpu_mem_gb": 2.0}, "Min": {"cpu_mem_gb": 1.0}})
    assert monitor.render_stats("DeviceMonitor", host) == \
        "DeviceMonitor: host memory 1.50 GiB per rank (max 2.00, min 1.00)"
    dev = pd.DataFrame({c: {"cpu_mem_gb": 1.0, "peak_gpu_mem_gb": 3.0} for c in ("Avg", "Max", "Min")})
    assert monitor.render_stats("DeviceMonitor", dev) == f"DeviceMonitor Stats:\n{dev.to_string()}"


def test_parameter_count_with_unit(portable):
    monitor = importlib.import_module(portable.__name__ + ".monitor")
    assert monitor.count_with_unit(1_688_960) == "1.69M (1,688,960)"
    assert monitor.count_with_unit(1_956_000_000) == "1.96B (1,956,000,000)"
    assert monitor.count_with_unit(844_480) == "844.48K (844,480)"
    assert monitor.count_with_unit(12) == "12"


def test_used_free_from_the_driver_and_zero_when_unavailable(portable):
    monitor = importlib.import_module(portable.__name__ + ".monitor")
    gb = 1024**3
    assert monitor._used_free(lambda: (3 * gb, 8 * gb)) == {"nvml_used_gpu_mem_gb": 5.0, "nvml_free_gpu_mem_gb": 3.0}

    def broken():
        raise RuntimeError("no driver")

    assert monitor._used_free(broken) == {"nvml_used_gpu_mem_gb": 0.0, "nvml_free_gpu_mem_gb": 0.0}
