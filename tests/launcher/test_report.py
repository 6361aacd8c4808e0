"""scripts/train_report.py on metrics lines written here, with hand-computed expectations."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from launcher_helpers import REPO

REPORT = os.path.join(REPO, "overlay/scripts/train_report.py")
GiB = 2**30


def _line(it, t, loss, peaks, rss=(100, 200), samples=4):
    return {"iteration": it, "time": 1000.0 + it, "step_time_s": t, "loss": loss, "loss_rank0": loss,
            "samples_per_step": samples, "local_batch": 1, "grad_accum": 1, "world_size": 8, "dp_size": 4,
            "cp_size": 2, "device": "npu", "peak_mem_bytes": peaks[0], "peak_mem_bytes_per_rank": list(peaks),
            "max_rss_bytes": rss[0], "max_rss_bytes_per_rank": list(rss)}


def write(path, rows, tail=""):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
        f.write(tail)


def report(metrics, *extra):
    out = metrics.replace(".metrics.jsonl", ".report.json")
    r = subprocess.run([sys.executable, REPORT, f"--metrics={metrics}", *extra], capture_output=True, text=True)
    return r, (json.load(open(out)) if os.path.exists(out) else None)


def test_steady_window_numbers(tmp_path):
    # 8 steps: warm-up min(3, 8 // 3) = 2 skipped -> steady times 1..6: median 3.5, mean 3.5
    times = [40.0, 9.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    losses = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.2]
    rows = [_line(i + 1, t, l, (GiB * (i % 3), GiB * i)) for i, (t, l) in enumerate(zip(times, losses))]
    m = str(tmp_path / "train-x.metrics.jsonl")
    write(m, rows[::-1])  # order on disk must not matter
    r, rep = report(m, "--log=/some/train-x.log", "--training-rc=0")
    assert r.returncode == 0, r.stderr
    assert rep["steps"] == 8 and rep["warmup_skipped"] == 2 and rep["steady_steps"] == 6
    assert rep["first_iteration"] == 1 and rep["last_iteration"] == 8
    assert rep["step_time_median_s"] == 3.5 and rep["step_time_mean_s"] == 3.5
    assert rep["samples_per_s_median"] == 4 / 3.5 and rep["samples_per_s_mean"] == 4 / 3.5
    assert abs(rep["loss_mean"] - sum(losses) / 8) < 1e-12
    assert rep["loss_final"] == 0.2
    assert rep["peak_mem_bytes_per_rank"] == [2 * GiB, 7 * GiB]
    assert rep["max_rss_bytes_per_rank"] == [100, 200]
    assert (rep["world_size"], rep["dp_size"], rep["cp_size"], rep["device"]) == (8, 4, 2, "npu")
    assert rep["log"] == "/some/train-x.log"
    assert "step time median 3.5000 s, mean 3.5000 s" in r.stdout
    assert "peak device memory GiB per rank: 2.00 7.00" in r.stdout


def test_median_differs_from_mean(tmp_path):
    times = [5.0, 1.0, 1.0, 1.0, 10.0, 1.0, 1.0, 1.0, 1.0]  # skip 3 -> [1, 10, 1, 1, 1, 1]
    m = str(tmp_path / "a.metrics.jsonl")
    write(m, [_line(i, t, 1.0, (0, 0)) for i, t in enumerate(times, 1)])
    r, rep = report(m, "--out=" + str(tmp_path / "a.report.json"))
    assert r.returncode == 0, r.stderr
    assert rep["warmup_skipped"] == 3
    assert rep["step_time_median_s"] == 1.0 and rep["step_time_mean_s"] == 15 / 6
    assert rep["samples_per_s_median"] == 4.0


def test_explicit_skip_and_short_runs(tmp_path):
    m = str(tmp_path / "b.metrics.jsonl")
    write(m, [_line(1, 8.0, 2.0, (1, 1)), _line(2, 2.0, 1.0, (1, 1))])  # 2 steps: skip min(3, 0) = 0
    r, rep = report(m)
    assert r.returncode == 0, r.stderr
    assert rep["warmup_skipped"] == 0 and rep["step_time_mean_s"] == 5.0
    r, rep = report(m, "--skip=1")
    assert rep["warmup_skipped"] == 1 and rep["step_time_median_s"] == 2.0 and rep["samples_per_s_mean"] == 2.0


def test_torn_last_line_is_ignored(tmp_path):
    m = str(tmp_path / "c.metrics.jsonl")
    write(m, [_line(i, 1.0, 0.5, (0, 0)) for i in (1, 2, 3)], tail='{"iteration": 4, "step_ti')
    r, rep = report(m)
    assert r.returncode == 0, r.stderr
    assert rep["steps"] == 3


def test_corrupt_middle_line_is_an_error(tmp_path):
    m = str(tmp_path / "d.metrics.jsonl")
    with open(m, "w") as f:
        f.write(json.dumps(_line(1, 1.0, 0.5, (0, 0))) + "\nnot json\n" + json.dumps(_line(2, 1.0, 0.5, (0, 0))) + "\n")
    r, rep = report(m)
    assert r.returncode == 1 and rep is None
    assert r.stderr.count("\n") == 1 and "line 2 is not a JSON line" in r.stderr


def test_missing_metrics_one_line(tmp_path):
    r, rep = report(str(tmp_path / "none.metrics.jsonl"), "--training-rc=1")
    assert r.returncode == 1 and rep is None
    assert r.stderr.count("\n") == 1 and "training failed before its first logged iteration" in r.stderr
    r, _ = report(str(tmp_path / "none.metrics.jsonl"), "--training-rc=0")
    assert "trainer.callbacks.train_metrics=L(TrainMetricsCallback)()" in r.stderr
