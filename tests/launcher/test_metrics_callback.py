"""TrainMetricsCallback driven through upstream's own CallBackGroup (the trainer's dispatcher), in a patched tree.

Single process, no process group: the hooks are called exactly as ImaginaireTrainer.train calls them
(on_train_start, then on_training_step_end with the incremented iteration), with real sleeps as step work.
The real-run tests cover the same callback inside torchrun with 1 and 2 ranks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

DRIVE = r"""
import json, os, sys, time
import torch
from types import SimpleNamespace as NS
from imaginaire.lazy_config import LazyCall as L
from imaginaire.utils.callback import CallBackGroup
from cosmos_predict2.portable.metrics import TrainMetricsCallback

out = sys.argv[1]
cfg = NS(
    trainer=NS(callbacks={"train_metrics": L(TrainMetricsCallback)(path=out)}, grad_accum_iter=2),
    dataloader_train=NS(batch_size=3),
    model_parallel=NS(context_parallel_size=1),
    job=NS(path_local="/nonexistent"),
)
if len(sys.argv) > 2:  # the run's peak must come from peak_memory_since_start, not the resettable counter
    from cosmos_predict2.portable import device as d
    d.memory_stats = lambda: {"allocated": 1, "reserved": 2, "peak": 3, "peak_reserved": 4}
    d.peak_memory_since_start = lambda: {"peak": int(sys.argv[2]), "peak_reserved": int(sys.argv[2])}
group = CallBackGroup(cfg, trainer=None)
group.on_train_start(None, iteration=0)
for it, (work, loss) in enumerate([(0.05, 2.0), (0.20, 1.5), (0.10, 1.25)], 1):
    time.sleep(work)
    group.on_training_step_end(None, {}, {}, torch.tensor(loss, dtype=torch.bfloat16), iteration=it)
"""


def test_callback_lines(launch_tree, tmp_path):
    out = str(tmp_path / "m" / "metrics.jsonl")
    env = {**os.environ, "PYTHONPATH": launch_tree, "COSMOS_DEVICE": "cpu"}
    env.pop("COSMOS_TRAIN_METRICS", None)
    r = subprocess.run([sys.executable, "-c", DRIVE, out], cwd=launch_tree, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(ln) for ln in open(out)]
    assert [row["iteration"] for row in rows] == [1, 2, 3]
    assert [row["loss"] for row in rows] == [2.0, 1.5, 1.25]
    for row, work in zip(rows, (0.05, 0.20, 0.10)):
        assert work <= row["step_time_s"] < work + 0.15, row["step_time_s"]  # sleep + bookkeeping
        # 3 samples per rank x 2 accumulation steps x 1 data-parallel rank
        assert (row["samples_per_step"], row["local_batch"], row["grad_accum"]) == (6, 3, 2)
        assert (row["world_size"], row["dp_size"], row["cp_size"], row["device"]) == (1, 1, 1, "cpu")
        assert row["peak_mem_bytes"] == 0 and row["max_rss_bytes"] > 10 * 2**20
        assert row["max_rss_bytes_per_rank"] == [row["max_rss_bytes"]]


def test_callback_reports_run_peak_not_interval_peak(launch_tree, tmp_path):
    """DeviceMonitor resets the device's peak counter at its logs; the metrics must report the run's peak."""
    out = str(tmp_path / "m" / "metrics.jsonl")
    env = {**os.environ, "PYTHONPATH": launch_tree, "COSMOS_DEVICE": "cpu"}
    env.pop("COSMOS_TRAIN_METRICS", None)
    r = subprocess.run([sys.executable, "-c", DRIVE, out, "987654321"], cwd=launch_tree, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(ln) for ln in open(out)]
    assert [row["peak_mem_bytes"] for row in rows] == [987654321] * 3
