"""Run upstream's trainer (`torchrun -m scripts.train`) in a patched tree on CPU and read its metrics lines."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from tests import procgroup

CONFIG = "cosmos_predict2/configs/base/config.py"
METRICS = "++trainer.callbacks.train_metrics={_target_:cosmos_predict2.portable.metrics.TrainMetricsCallback}"


# A dispatch mode counting host reads of tensor values (`.item()`, `float(t)`, `bool(t)`: aten's _local_scalar_dense),
# for the callback probes that run in the patched tree as `python -c` source: pasted where their source says
# #READS_MODE#. Use `Reads.n = 0`, `with Reads(): ...`, then read `Reads.n`.
READS_MODE = """
from torch.utils._python_dispatch import TorchDispatchMode

class Reads(TorchDispatchMode):  # host reads of tensor values
    n = 0
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.__name__.startswith("_local_scalar_dense"):
            Reads.n += 1
        return func(*args, **(kwargs or {}))
"""


def with_reads_mode(source: str) -> str:
    """`source` with READS_MODE in place of its #READS_MODE# line."""
    assert source.count("#READS_MODE#\n") == 1, "the probe source has no (or several) #READS_MODE# lines"
    return source.replace("#READS_MODE#\n", READS_MODE.lstrip("\n"))


def per_iteration_seed(seed: int = 0, fixed: bool = False) -> str:
    return (
        "++trainer.callbacks.per_iteration_seed={_target_:cosmos_predict2.portable.determinism.PerIterationSeed,"
        f"seed:{seed},fixed:{str(fixed).lower()}}}"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_env(tree: Path, **extra: str) -> dict:
    env = dict(os.environ)
    env.update(
        COSMOS_DEVICE="cpu",  # the tests are about the CPU path even where an accelerator exists
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(tree),
        TORCH_DEVICE_BACKEND_AUTOLOAD="0",
    )
    env.update(extra)
    return env


def train(tree: Path, exp: str, out_root: Path, overrides: list[str], nproc: int = 1, timeout: int = 900,
          metrics: Path | None = None, env: dict | None = None) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """torchrun -m scripts.train on CPU; `env` adds to cpu_env's variables (and wins over them)."""
    metrics = metrics or out_root / f"metrics-{len(list(out_root.glob('metrics-*')))}.jsonl"
    out_root.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}",
        "-m", "scripts.train", f"--config={CONFIG}", "--", f"experiment={exp}", METRICS, *overrides,
    ]
    env = cpu_env(tree, IMAGINAIRE_OUTPUT_ROOT=str(out_root), COSMOS_TRAIN_METRICS=str(metrics), **(env or {}))
    proc = run_group(cmd, cwd=tree, env=env, timeout=timeout)
    rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    return proc, rows


def run_group(cmd: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """torchrun in its own process group, killed as a whole on timeout (tests/procgroup.py)."""
    return procgroup.run(cmd, timeout=timeout, **kwargs)


def tail(proc: subprocess.CompletedProcess, n: int = 60) -> str:
    return "\n".join((proc.stdout + proc.stderr).splitlines()[-n:])


def video_dataset_overrides(path: Path) -> list[str]:
    # upstream's experiment holds two copies of the dataset config (the loader's and the sampler's)
    return [f"dataloader_train.dataset.dataset_dir={path}", f"dataloader_train.sampler.dataset.dataset_dir={path}"]
