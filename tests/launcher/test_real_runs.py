"""Real training runs through the tree's own train.sh on CPU (tiny smoke experiments, 3 iterations each).

Each run checks the whole chain: exit status, the log file (and that the console got the same text: tee), the
metrics lines TrainMetricsCallback wrote, and the report recomputed here from those lines. Slow (~20-60 s a run
on 2 cores): one nproc=1 run per smoke experiment, one nproc=2 context-parallel run, one crashing run.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
import shlex
import socket
import statistics

import pytest

from launcher_helpers import SMOKE, run_train_sh

MAX_ITER = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(tree: str, out_root: str, exp: str, nproc: int, overrides: list[str], flags: tuple[str, ...] = ()):
    args = [f"--EXP={exp}", f"--nproc_per_node={nproc}", "--nnodes=1", "--node_rank=0",
            "--master_addr=127.0.0.1", f"--master_port={free_port()}", *flags, "--", *overrides]
    return run_train_sh(args, tree=tree, env={"IMAGINAIRE_OUTPUT_ROOT": out_root, "COSMOS_DEVICE": "cpu"},
                        script=os.path.join(tree, "train.sh"), timeout=900)


def one(pattern: str) -> str:
    found = glob.glob(pattern)
    assert len(found) == 1, (pattern, found)
    return found[0]


def check_run(r, tree: str, exp: str, out_root: str, job: str, world: int, cp: int) -> dict:
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    log = one(os.path.join(out_root, job, "logs", "train-*.log"))
    text = open(log).read()
    assert "Done with training." in text
    # train.sh registers the garbage-collection policy (portable/gc_policy.py) on every run
    assert "garbage collection: automatic collection off while training, one full collection every 50 steps" in text
    assert r.stdout.startswith(text), "console output differs from the log (tee)"
    head = text.splitlines()
    assert head[0] == f"run: new run in {os.path.join(out_root, job)} (no checkpoint there)"
    assert head[1] == f"cd {shlex.quote(tree)}"
    assert " -m torch.distributed.run " in head[2] and f"experiment={exp}" in head[2]
    rows = [json.loads(ln) for ln in open(log[: -len(".log")] + ".metrics.jsonl")]
    check_quiet_true_log(text, rows)
    assert [row["iteration"] for row in rows] == list(range(1, MAX_ITER + 1))
    for row in rows:
        assert math.isfinite(row["loss"]) and row["step_time_s"] > 0
        assert (row["world_size"], row["cp_size"], row["dp_size"]) == (world, cp, world // cp)
        assert row["samples_per_step"] == world // cp  # batch 1 per data-parallel rank
        assert row["device"] == "cpu" and row["peak_mem_bytes_per_rank"] == [0] * world
        assert len(row["max_rss_bytes_per_rank"]) == world and min(row["max_rss_bytes_per_rank"]) > 0
        # StepTimingCallback's phases, gathered from every rank when the line is written (one step late)
        assert row["phases_clock"] == "synchronised" and len(row["phases_s_per_rank"]) == world
        assert all(ph["step"] > 0 and ph["fwd_bwd"] > 0 for ph in row["phases_s_per_rank"])
    rep = json.load(open(log[: -len(".log")] + ".report.json"))
    # recomputed from the lines: skip min(3, n // 3) = 1 warm-up step of 3
    times = [row["step_time_s"] for row in rows][1:]
    assert rep["steps"] == MAX_ITER and rep["warmup_skipped"] == 1
    assert rep["step_time_median_s"] == pytest.approx(statistics.median(times), rel=1e-12)
    assert rep["step_time_mean_s"] == pytest.approx(statistics.fmean(times), rel=1e-12)
    assert rep["samples_per_s_mean"] == pytest.approx((world // cp) / statistics.fmean(times), rel=1e-12)
    assert rep["loss_mean"] == pytest.approx(statistics.fmean(row["loss"] for row in rows), rel=1e-12)
    assert rep["loss_final"] == rows[-1]["loss"]
    assert rep["max_rss_bytes_per_rank"] == [max(row["max_rss_bytes_per_rank"][i] for row in rows)
                                             for i in range(world)]
    assert rep["log"] == os.path.abspath(log)
    assert f"report: {log[: -len('.log')]}.report.json" in r.stdout
    return rep


def check_quiet_true_log(text: str, rows: list[dict]) -> None:
    """CPU: no device table of zeros, parameter counts with their unit, the log's step times are the metrics'."""
    for field in ("temp", "power", "util", "clock", "nvml_used_gpu_mem_gb", "peak_gpu_mem_gb"):
        assert not re.search(rf"^{field}\s", text, re.M), f"DeviceMonitor row {field} on CPU"
    assert len(re.findall(r"DeviceMonitor: host memory \d+\.\d\d GiB per rank", text)) == len(rows)
    assert "Total parameters: 0.00B" not in text
    assert re.search(r"Total parameters: \d+\.\d\d[KMBT] \([\d,]+\), Frozen", text)
    by_it = {r["iteration"]: r["step_time_s"] for r in rows}
    shown = {int(i): t for i, t in re.findall(r"Iteration (\d+): Hit counter: \d+/\d+ \| Loss: \S+ \| Time: (\S+)s",
                                              text)}
    shown.update({int(i): t for i, t in re.findall(r"(\d+) : iter_speed (\S+) seconds per iteration \(mean of the last "
                                                   r"1\)", text)})
    assert shown, "IterSpeed printed no step time"
    for it, t in shown.items():  # one clock: IterSpeed's number is the metrics line's, to its 2 decimals
        assert t == f"{by_it[it]:.2f}", (it, t, by_it[it])


@pytest.mark.parametrize("key", list(SMOKE))
def test_smoke_experiment_trains(launch_tree, tmp_path, key):
    exp = SMOKE[key]
    r = launch(launch_tree, str(tmp_path / "out"), exp, 1, [f"trainer.max_iter={MAX_ITER}"])
    task = "video2world" if key.startswith("v2w") else "text2image"
    size = key.split("_")[1]
    check_run(r, launch_tree, exp, str(tmp_path / "out"), f"posttraining/{task}_smoke/{size}_cosmos_nemo_assets_smoke",
              1, 1)


def test_two_ranks_context_parallel(launch_tree, tmp_path):
    r = launch(launch_tree, str(tmp_path / "out"), SMOKE["v2w_2b"], 2,
               [f"trainer.max_iter={MAX_ITER}", "model_parallel.context_parallel_size=2"])
    check_run(r, launch_tree, SMOKE["v2w_2b"], str(tmp_path / "out"),
              "posttraining/video2world_smoke/2b_cosmos_nemo_assets_smoke", 2, 2)


def test_crashing_training_fails_train_sh(launch_tree, tmp_path):
    """17 frames (4k+1, 5 latent frames, CP 1) pass validation; the smoke videos have 14 frames, so upstream's reader
    fails on the first batch, inside the trainer's loop: train.sh must exit non-zero with the log kept."""
    out = str(tmp_path / "out")
    r = launch(launch_tree, out, SMOKE["v2w_2b"], 1,
               [f"trainer.max_iter={MAX_ITER}", "dataloader_train.dataset.num_frames=17"])
    assert r.returncode != 0
    log = one(os.path.join(out, "posttraining/video2world_smoke/2b_cosmos_nemo_assets_smoke/logs/train-*.log"))
    text = open(log).read()
    assert "Traceback" in text and "imaginaire/trainer.py" in text  # it crashed inside the training loop
    assert "error: training exited with status" in r.stderr and log in r.stderr
    assert not glob.glob(os.path.join(os.path.dirname(log), "*.report.json"))


def _this_run(r) -> tuple[str, str, list[int]]:
    """(log text, first line, iterations in this run's metrics) from train.sh's output."""
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    log = r.stdout.split("\nlog: ", 1)[1].split("\n", 1)[0]
    text = open(log).read()
    metrics = log[: -len(".log")] + ".metrics.jsonl"
    its = [json.loads(ln)["iteration"] for ln in open(metrics)] if os.path.exists(metrics) else []
    return text, text.splitlines()[0], its


def test_rerun_resumes_fresh_starts_over_resume_picks_a_checkpoint(launch_tree, tmp_path):
    """The user's path through run management with real training (1-3 iterations per run)."""
    out = str(tmp_path / "out")
    job = os.path.join(out, "posttraining/video2world_smoke/2b_cosmos_nemo_assets_smoke")
    exp = SMOKE["v2w_2b"]
    _, first, its = _this_run(launch(launch_tree, out, exp, 1, ["trainer.max_iter=2", "checkpoint.save_iter=1"]))
    assert first == f"run: new run in {job} (no checkpoint there)" and its == [1, 2]
    # a re-run resumes, and its first line says so (it used to resume silently)
    text, first, its = _this_run(launch(launch_tree, out, exp, 1, ["trainer.max_iter=3", "checkpoint.save_iter=1"]))
    assert first.startswith(f"run: resuming {job} from iteration 2 (checkpoints/model/iter_000000002.pt; ")
    assert its == [3] and "checkpoints/model/iter_000000002.pt" in text
    # at max_iter a re-run trains nothing: refused in one line before torchrun (it used to exit 0 with no iteration)
    r = launch(launch_tree, out, exp, 1, ["trainer.max_iter=3"])
    assert r.returncode == 2 and r.stderr.startswith("error: the run already reached iteration 3 ")
    # --resume=<an earlier checkpoint>: training goes on from that iteration
    text, first, its = _this_run(launch(launch_tree, out, exp, 1, ["trainer.max_iter=2"],
                                        (f"--resume={job}/checkpoints/model/iter_000000001.pt",)))
    assert first.startswith(f"run: resuming {job} from iteration 1 ") and its == [2]
    assert re.search(r"Loading checkpoint \(local\): \S*/checkpoints/model/iter_000000001\.pt", text)
    # --fresh: a new run directory beside the old one, from iteration 1
    _, first, its = _this_run(launch(launch_tree, out, exp, 1, ["trainer.max_iter=1"], ("--fresh",)))
    assert first.startswith(f"run: new run in {job}-2 (--fresh; ") and its == [1]
    assert os.path.isfile(f"{job}-2/checkpoints/model/iter_000000001.pt")
