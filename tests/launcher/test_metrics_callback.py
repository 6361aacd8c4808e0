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
    if it == 2:  # a step's line is written at the next logged step's end: the first is in the file, the second not
        print(json.dumps([json.loads(ln)["iteration"] for ln in open(out)]), flush=True)
group.on_train_end(None, iteration=3)
"""


def test_callback_lines(launch_tree, tmp_path):
    out = str(tmp_path / "m" / "metrics.jsonl")
    env = {**os.environ, "PYTHONPATH": launch_tree, "COSMOS_DEVICE": "cpu"}
    env.pop("COSMOS_TRAIN_METRICS", None)
    r = subprocess.run([sys.executable, "-c", DRIVE, out], cwd=launch_tree, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == [1]
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


DIES = DRIVE.split("group.on_train_start")[0] + r"""
group.on_train_start(None, iteration=0)
for it in (1, 2):
    group.on_training_step_end(None, {}, {}, torch.tensor(3.0 - it), iteration=it)
raise RuntimeError("CUDA out of memory (a test: training dies after step 2)")
"""


def test_a_run_that_dies_still_writes_its_last_line(launch_tree, tmp_path):
    """Lines are written one step late; when training raises (no on_train_end) the held-back line of the last
    finished step is written at exit, and the error is what the process reports."""
    out = str(tmp_path / "metrics.jsonl")
    env = {**os.environ, "PYTHONPATH": launch_tree, "COSMOS_DEVICE": "cpu"}
    env.pop("COSMOS_TRAIN_METRICS", None)
    r = subprocess.run([sys.executable, "-c", DIES, out], cwd=launch_tree, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 1 and "training dies after step 2" in r.stderr, r.stderr[-2000:]
    rows = [json.loads(ln) for ln in open(out)]
    assert [(row["iteration"], row["loss"]) for row in rows] == [(1, 2.0), (2, 1.0)]
    assert "last metrics line was not written" not in r.stderr


SAVES = DRIVE.split("group.on_train_start")[0] + r"""
group.on_train_start(None, iteration=0)
seen = lambda: [json.loads(ln)["iteration"] for ln in open(out)] if os.path.exists(out) else []
for it in (1, 2, 3):
    group.on_training_step_end(None, {}, {}, torch.tensor(4.0 - it), iteration=it)
print(json.dumps(seen()), flush=True)  # before the save: the last step's line is still held back
group.on_save_checkpoint_start(None, iteration=3)  # the trainer's final save, as ImaginaireTrainer.train calls it
print(json.dumps(seen()), flush=True)  # written before the save's work starts
group.on_train_end(None, iteration=3)
print(json.dumps(seen()), flush=True)
"""


def test_the_last_line_is_written_before_the_final_checkpoint_save(launch_tree, tmp_path):
    """A 2B run's final save takes minutes: its last step's line is in the file as the save starts (once, not again
    at the end of training), so a run stopped or failing during the save keeps every iteration."""
    out = str(tmp_path / "metrics.jsonl")
    env = {**os.environ, "PYTHONPATH": launch_tree, "COSMOS_DEVICE": "cpu"}
    env.pop("COSMOS_TRAIN_METRICS", None)
    r = subprocess.run([sys.executable, "-c", SAVES, out], cwd=launch_tree, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    before, at_save, at_end = (json.loads(ln) for ln in r.stdout.strip().splitlines()[-3:])
    assert (before, at_save, at_end) == ([1, 2], [1, 2, 3], [1, 2, 3])
    assert [row["loss"] for row in map(json.loads, open(out))] == [3.0, 2.0, 1.0]


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
    assert [row["peak_mem_reserved_bytes"] for row in rows] == [987654321] * 3


DRIVE_EVENTS = r"""
import json, sys, time
import torch
from types import SimpleNamespace as NS
from imaginaire.lazy_config import LazyCall as L
from imaginaire.utils.callback import CallBackGroup
from cosmos_predict2.portable import device as d
from cosmos_predict2.portable.metrics import TrainMetricsCallback

# A test double of a device's timing events (CUDA/NPU semantics: record() queues a timestamp, synchronize() waits
# for it, elapsed_time() in ms). Here the "device" is the host, so a record's time is when record() runs.
log = []
class Event:
    def __init__(self, enable_timing=False):
        self.t = None
    def record(self):
        self.t = time.perf_counter(); log.append(("record", len(log)))
        self.n = sum(1 for e in log if e[0] == "record")
    def synchronize(self):
        log.append(("wait", self.n))
    def elapsed_time(self, other):
        return (other.t - self.t) * 1e3
syncs = []
d.timing_event = lambda: Event(enable_timing=True)
d.synchronize = lambda: syncs.append(len(log))

out = sys.argv[1]
cfg = NS(trainer=NS(callbacks={"train_metrics": L(TrainMetricsCallback)(path=out)}, grad_accum_iter=1),
         dataloader_train=NS(batch_size=1), model_parallel=NS(context_parallel_size=1), job=NS(path_local="/x"))
group = CallBackGroup(cfg, trainer=None)
group.on_train_start(None, iteration=0)
for it, work in enumerate((0.05, 0.15, 0.10), 1):
    time.sleep(work)
    group.on_training_step_end(None, {}, {}, torch.tensor(float(it)), iteration=it)
group.on_train_end(None, iteration=3)
print(json.dumps(dict(log=log, syncs=syncs)))
"""


def test_step_ends_do_not_wait_for_the_device(launch_tree, tmp_path):
    """With timing events (a test double of CUDA/NPU events), the clock synchronizes once, at training start; a
    step's end is an event recorded and waited for only at the next step's end, when the device is past it."""
    out = str(tmp_path / "metrics.jsonl")
    env = {**os.environ, "PYTHONPATH": launch_tree, "COSMOS_DEVICE": "cpu"}
    env.pop("COSMOS_METRICS_SYNC", None)
    r = subprocess.run([sys.executable, "-c", DRIVE_EVENTS, out], cwd=launch_tree, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["syncs"] == [0], got  # the start's synchronize, nothing per step
    records = [i for i, e in enumerate(got["log"]) if e[0] == "record"]
    waits = [(i, e[1]) for i, e in enumerate(got["log"]) if e[0] == "wait"]
    # events: 1 = start, then per step (2, 3, 4) one step-end mark; step k's mark (event k+1) is waited for after
    # step k+1's mark was recorded (the last one at training end)
    assert len(records) == 4, got
    assert [n for _, n in waits] == [2, 3, 4], got
    assert waits[0][0] > records[2] and waits[1][0] > records[3], got
    rows = [json.loads(ln) for ln in open(out)]
    assert [row["iteration"] for row in rows] == [1, 2, 3] and [row["loss"] for row in rows] == [1.0, 2.0, 3.0]
    for row, work in zip(rows, (0.05, 0.15, 0.10)):
        assert work <= row["step_time_s"] < work + 0.1, row


def test_sync_switch_brings_back_a_synchronize_per_step(launch_tree, tmp_path):
    out = str(tmp_path / "metrics.jsonl")
    env = {**os.environ, "PYTHONPATH": launch_tree, "COSMOS_DEVICE": "cpu", "COSMOS_METRICS_SYNC": "1"}
    r = subprocess.run([sys.executable, "-c", DRIVE_EVENTS, out], cwd=launch_tree, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(got["syncs"]) == 4 and not [e for e in got["log"] if e[0] == "record"], got
    assert [json.loads(ln)["iteration"] for ln in open(out)] == [1, 2, 3]
