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
    r, _ = report(str(tmp_path / "none.metrics.jsonl"))  # standalone: the callback may not be registered
    assert "trainer.callbacks.train_metrics=L(TrainMetricsCallback)()" in r.stderr


def test_resumed_run_that_trained_nothing_is_not_blamed_on_the_callback(tmp_path):
    """train.sh registers the callback itself: a run that exits 0 with no line resumed at max_iter (or ran none)."""
    r, rep = report(str(tmp_path / "none.metrics.jsonl"), "--training-rc=0", "--resumed-at=3")
    assert r.returncode == 1 and rep is None and r.stderr.count("\n") == 1
    assert "resumed at iteration 3" in r.stderr and "--fresh" in r.stderr and "TrainMetricsCallback" not in r.stderr
    r, _ = report(str(tmp_path / "none.metrics.jsonl"), "--training-rc=0", "--resumed-at=")
    assert r.stderr.count("\n") == 1 and "without running an iteration" in r.stderr
    assert "TrainMetricsCallback" not in r.stderr


def _rows(n=6, device="cpu"):
    return [{**_line(i, 2.0 + (i % 2), 1.0 / i, (0,), rss=(100,)), "device": device} for i in range(1, n + 1)]


def test_plot_next_to_the_json(tmp_path):
    import matplotlib.image as mpimg

    metrics = str(tmp_path / "run.metrics.jsonl")
    write(metrics, _rows())
    r, rep = report(metrics)
    assert r.returncode == 0, r.stderr
    png = str(tmp_path / "run.report.png")
    assert f"plot: {png}" in r.stdout.splitlines()
    img = mpimg.imread(png)
    assert img.shape[:2] == (600, 700)
    # the loss curve is drawn in matplotlib's first colour (tab:blue), the step time in tab:orange
    rgb = (img[..., :3] * 255).round()
    for colour in ((31, 119, 180), (255, 127, 14)):
        assert ((abs(rgb - colour).sum(axis=-1)) < 30).sum() > 50, colour


def test_plot_without_matplotlib_is_one_note(tmp_path):
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "matplotlib.py").write_text("raise ImportError('No module named matplotlib')\n")
    metrics = str(tmp_path / "run.metrics.jsonl")
    write(metrics, _rows())
    r = subprocess.run([sys.executable, REPORT, f"--metrics={metrics}"], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(shadow)})
    assert r.returncode == 0, r.stderr
    assert "note: matplotlib is not installed, so no plot (pip install matplotlib)." in r.stdout.splitlines()
    assert os.path.exists(tmp_path / "run.report.json") and not os.path.exists(tmp_path / "run.report.png")


def test_cpu_report_shows_no_device_memory_zeros(tmp_path):
    metrics = str(tmp_path / "run.metrics.jsonl")
    write(metrics, _rows())
    r, _ = report(metrics, "--no-plot")
    assert "peak device memory: none on cpu" in r.stdout and "peak device memory GiB" not in r.stdout
    write(metrics, _rows(device="cuda"))
    r, _ = report(metrics, "--no-plot")
    assert "peak device memory GiB per rank: 0.00" in r.stdout


def test_tensorboard_scalars_when_installed(tmp_path):
    import pytest

    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    metrics = str(tmp_path / "run.metrics.jsonl")
    write(metrics, _rows())
    r, _ = report(metrics, "--no-plot")
    logdir = str(tmp_path / "run.tensorboard")
    assert f"tensorboard: {logdir}" in r.stdout
    acc = EventAccumulator(logdir)
    acc.Reload()
    assert [e.value for e in acc.Scalars("train/loss")] == pytest.approx([1.0 / i for i in range(1, 7)])
