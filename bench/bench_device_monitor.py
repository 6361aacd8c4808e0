#!/usr/bin/env python3
"""Host time of one DeviceMonitor sample (upstream's callback, every logging iteration) on this machine's device.

Run from the root of a patched tree on a GPU machine (on CPU the device fields are empty and it times psutil and
the table alone):

    python /path/to/bench/bench_device_monitor.py [--reps 50]

Times, in ms per sample: the NVML fields as torch.cuda.temperature / power_draw / utilization / clock_rate read them
(each initialises NVML and looks the device up again), portable/monitor.py's whole device sample (those fields, the
allocator's peaks, the driver's free memory), the host memory of the process tree (psutil), and upstream's pandas
summary table with its text. Prints one JSON line, with whether pynvml imports and how CUDA_VISIBLE_DEVICES names
the devices (as UUIDs, torch lists every device's UUID at each reading).
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=50)
    a = ap.parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_dit

    if not bench_dit.require_tree("bench_device_monitor.py", "cosmos_predict2/portable/monitor.py"):
        return 2
    import psutil
    import torch

    from cosmos_predict2.callbacks.device_monitor import log_prof_data
    from cosmos_predict2.portable import device, monitor

    try:
        import pynvml  # noqa: F401
        have_nvml = True
    except ImportError:
        have_nvml = False
    row = dict(bench="device_monitor", device=device.device_type(), torch=torch.__version__, pynvml=have_nvml,
               visible_devices=("uuids" if os.environ.get("CUDA_VISIBLE_DEVICES", "").startswith(("GPU-", "MIG-"))
                                else "indices" if os.environ.get("CUDA_VISIBLE_DEVICES") else "unset"),
               reps=a.reps)
    if device.device_type() == "cuda":
        keep = torch.empty(1 << 28, device="cuda")  # a live context with memory in use, as in training
        row["torch_readers_ms"] = round(bench_dit.host_ms(monitor._cuda_nvml_fields, a.reps), 3)
        row["device_sample_ms"] = round(bench_dit.host_ms(monitor.device_sample, a.reps), 3)
        del keep
    proc = psutil.Process(os.getpid())
    row["psutil_ms"] = round(bench_dit.host_ms(
        lambda: sum(p.memory_info().rss for p in [proc] + proc.children(recursive=True)), a.reps), 3)
    sample = {"cpu_mem_gb": 1.0, **monitor.device_sample()}
    row["table_ms"] = round(bench_dit.host_ms(
        lambda: monitor.render_stats("DeviceMonitor", log_prof_data([sample], 10)[1]), a.reps), 3)
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
