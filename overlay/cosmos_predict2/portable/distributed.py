"""Process-group start-up for every device kind (upstream's imaginaire.utils.distributed.init is CUDA-only).

Upstream pins CPU affinity through NVML, sets the CUDA device, starts NCCL and raises the CUDA L2 fetch
granularity through libcudart. Here each of those steps is done only where it means something: NVML affinity and
the L2 tweak on CUDA (and skipped with a warning if NVML or libcudart is missing), set_device on CUDA/NPU, and the
backend the device layer names (nccl / hccl / gloo).
"""

from __future__ import annotations

import ctypes
import os
from datetime import timedelta

import torch.distributed as dist

from . import device

_LOG_PREFIX = "[cosmos-portable]"


def _log(msg: str) -> None:
    if int(os.getenv("RANK", "0")) == 0 or device.env_flag("COSMOS_LOG_ALL_RANKS"):
        print(f"{_LOG_PREFIX} {msg}", flush=True)


def _set_cuda_cpu_affinity(local_rank: int) -> None:
    from imaginaire.utils.device import Device, pynvml  # pynvml is None where NVML is not installed

    if pynvml is None:
        return
    try:
        pynvml.nvmlInit()
        os.sched_setaffinity(0, Device(local_rank).get_cpu_affinity())
    except Exception as e:  # NVML unsupported (containers, MIG): affinity is an optimisation only
        _log(f"warning: CPU affinity not set ({e})")


def _raise_cuda_l2_fetch_granularity() -> None:
    try:
        libcudart = ctypes.CDLL("libcudart.so")
    except OSError:
        return  # torch wheels ship a versioned libcudart only; the tweak is an optimisation
    libcudart.cudaDeviceSetLimit(ctypes.c_int(0x05), ctypes.c_int(128))


def init_process_group() -> None:
    """Start the default process group from torchrun's environment on the detected device."""
    local_rank = int(os.getenv("LOCAL_RANK", "0"))
    kind = device.device_type()
    if kind == "cuda":
        _set_cuda_cpu_affinity(local_rank)
        os.environ.setdefault("TORCH_NCCL_BLOCKING_WAIT", "0")
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    device.set_device(local_rank)
    timeout = timedelta(seconds=int(os.getenv("TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC", "1800")))
    backend = device.dist_backend()
    dist.init_process_group(backend=backend, init_method="env://", timeout=timeout)
    if kind == "cuda":
        _raise_cuda_l2_fetch_granularity()
    _log(f"process group up: backend={backend} device={kind} world_size={dist.get_world_size()}")
