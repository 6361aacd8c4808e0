"""Summarise one training run from the JSON lines TrainMetricsCallback wrote.

    python scripts/train_report.py --metrics=RUN.metrics.jsonl [--out=RUN.report.json] [--log=RUN.log]
                                   [--skip=K] [--training-rc=RC] [--resumed-at=N]

Step time is taken over a steady window that skips warm-up (first min(3, n // 3) logged iterations unless --skip):
median and mean. It is the same per-step time the training log prints (IterSpeed and TrainMetricsCallback read one
clock: cosmos_predict2.portable.metrics.step_clock). Throughput (FPS) = samples per step (global: local batch x grad
accumulation x data-parallel size) / step time. Peak memory is per rank, the maximum over the run (not shown on
CPU, which has no device memory counter). Prints a short summary, writes JSON, draws loss and step time per
iteration to RUN.report.png (matplotlib, headless; one note line if matplotlib is missing) and, when the
tensorboard package is installed, writes the same scalars to RUN.tensorboard/.
Exit status: 0 with a report, 1 when there is nothing to report (no or unreadable metrics).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys

from user_errors import OneLineParser, UserError  # this folder is sys.path[0] (run as a file by train.sh)

try:  # the per-phase table (scripts/step_breakdown.py, next to this file)
    import step_breakdown
except ImportError:  # pragma: no cover - a tree without it
    step_breakdown = None


class ReportError(UserError):
    """Nothing to report (no or unreadable metrics); main() prints its `what` as a warning or note line."""


def read_metrics(path: str) -> list[dict]:
    if not os.path.isfile(path):
        raise ReportError("no metrics file")
    with open(path) as f:
        lines = [(n, ln.strip()) for n, ln in enumerate(f, 1) if ln.strip()]
    rows = []
    for i, (n, line) in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # a run killed mid-write leaves a torn last line; earlier ones are corruption
                continue
            raise ReportError(f"line {n} is not a JSON line") from None
    if not rows:
        raise ReportError("the metrics file has no iterations")
    return rows


def default_skip(n: int) -> int:
    return min(3, n // 3)


def summarise(rows: list[dict], skip: int | None = None) -> dict:
    rows = sorted(rows, key=lambda r: r["iteration"])
    n = len(rows)
    k = default_skip(n) if skip is None else max(0, min(skip, n - 1))
    steady = [r for r in rows[k:] if math.isfinite(r["step_time_s"])]
    times = [r["step_time_s"] for r in steady]
    losses = [float(r["loss"]) for r in rows]
    samples = rows[-1]["samples_per_step"]
    med = statistics.median(times) if times else float("nan")
    mean = statistics.fmean(times) if times else float("nan")
    nranks = max(len(r.get("peak_mem_bytes_per_rank", [0])) for r in rows)

    def per_rank_max(key: str, scalar: str) -> list[int]:
        out = [0] * nranks
        for r in rows:
            vals = r.get(key) or [r.get(scalar, 0)]
            for i, v in enumerate(vals):
                out[i] = max(out[i], int(v))
        return out

    return {
        "steps": n,
        "first_iteration": rows[0]["iteration"],
        "last_iteration": rows[-1]["iteration"],
        "warmup_skipped": k,
        "steady_steps": len(times),
        "step_time_median_s": med,
        "step_time_mean_s": mean,
        "samples_per_step": samples,
        "samples_per_s_median": samples / med if times and med > 0 else float("nan"),
        "samples_per_s_mean": samples / mean if times and mean > 0 else float("nan"),
        "loss_mean": statistics.fmean(losses),
        "loss_final": losses[-1],
        "world_size": rows[-1].get("world_size"),
        "dp_size": rows[-1].get("dp_size"),
        "cp_size": rows[-1].get("cp_size"),
        "device": rows[-1].get("device"),
        "peak_mem_bytes_per_rank": per_rank_max("peak_mem_bytes_per_rank", "peak_mem_bytes"),
        "max_rss_bytes_per_rank": per_rank_max("max_rss_bytes_per_rank", "max_rss_bytes"),
    }


def _gib(b: int) -> str:
    return f"{b / 2**30:.2f}"


def write_plot(rows: list[dict], rep: dict, path: str) -> str:
    """Loss and step time per iteration in one PNG; returns the line to print (where it is, or why not)."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # headless: no display needed, never opens a window
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return "note: matplotlib is not installed, so no plot (pip install matplotlib)."
    rows = sorted(rows, key=lambda r: r["iteration"])
    its = [r["iteration"] for r in rows]
    fig, (ax_loss, ax_time) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    ax_loss.plot(its, [float(r["loss"]) for r in rows], marker=".", label="loss (mean over ranks)")
    ax_loss.set_ylabel("loss")
    ax_loss.legend(loc="upper right")
    ax_time.plot(its, [r["step_time_s"] for r in rows], marker=".", color="tab:orange", label="step time")
    med = rep["step_time_median_s"]
    if math.isfinite(med):
        ax_time.axhline(med, color="tab:gray", linestyle="--",
                        label=f"median {med:.3g} s (steady window, {rep['warmup_skipped']} warm-up skipped)")
    ax_time.set_ylabel("step time (s)")
    ax_time.set_xlabel("iteration")
    ax_time.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax_time.legend(loc="upper right")
    fig.suptitle(f"{rep['steps']} steps on {rep['world_size']} rank(s), {rep['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"plot: {path}"


def write_tensorboard(rows: list[dict], logdir: str) -> str | None:
    """The same scalars as TensorBoard events when the tensorboard package is installed; None otherwise."""
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:  # optional; checked first so torch is not imported for nothing
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch missing, or a tensorboard torch cannot use
        return None
    with SummaryWriter(log_dir=logdir) as w:
        for r in sorted(rows, key=lambda r: r["iteration"]):
            w.add_scalar("train/loss", float(r["loss"]), r["iteration"])
            if math.isfinite(r["step_time_s"]):
                w.add_scalar("train/step_time_s", r["step_time_s"], r["iteration"])
    return f"tensorboard: {logdir}"


def render(rep: dict) -> str:
    peaks = rep["peak_mem_bytes_per_rank"]
    # CPU has no device memory counter (always 0): a row of zeros would read as "used nothing"
    peak_line = ("peak device memory: none on cpu (host memory is the max RSS below)" if rep["device"] == "cpu"
                 else "peak device memory GiB per rank: " + " ".join(_gib(b) for b in peaks))
    return "\n".join([
        f"steps {rep['steps']} (iterations {rep['first_iteration']}..{rep['last_iteration']}), "
        f"steady window {rep['steady_steps']} after skipping {rep['warmup_skipped']} warm-up",
        f"step time median {rep['step_time_median_s']:.4f} s, mean {rep['step_time_mean_s']:.4f} s",
        f"throughput {rep['samples_per_s_median']:.3f} samples/s at the median step time, "
        f"{rep['samples_per_s_mean']:.3f} at the mean; "
        f"{rep['samples_per_step']} samples/step on {rep['world_size']} rank(s) "
        f"(dp {rep['dp_size']}, cp {rep['cp_size']}, {rep['device']})",
        f"loss mean {rep['loss_mean']:.5f}, final {rep['loss_final']:.5f}",
        peak_line,
        "max RSS GiB per rank: " + " ".join(_gib(b) for b in rep["max_rss_bytes_per_rank"]),
    ])


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(description=__doc__.splitlines()[0])
    p.add_argument("--metrics", required=True)
    p.add_argument("--out", default=None, help="report JSON (default: <metrics without .metrics.jsonl>.report.json)")
    p.add_argument("--log", default=None, help="the run's log, recorded in the report")
    p.add_argument("--skip", type=int, default=None, help="warm-up iterations to leave out of step time")
    p.add_argument("--training-rc", dest="training_rc", type=int, default=None)
    p.add_argument("--resumed-at", dest="resumed_at", default="",
                   help="iteration the run resumed from (train.sh), to explain a run that trained nothing")
    p.add_argument("--no-plot", dest="plot", action="store_false", help="do not draw RUN.report.png")
    a = p.parse_args(argv)
    try:
        rows = read_metrics(a.metrics)
    except ReportError as e:
        if a.training_rc:  # train.sh's own error line reports the failed run
            level, hint = "note", "training failed before its first logged iteration"
        elif a.training_rc == 0 and a.resumed_at:
            level, hint = "warning", (f"training ran no iteration: it resumed at iteration {a.resumed_at} and "
                                      "trainer.max_iter is not above it. Pass --fresh for a new run, or raise "
                                      "trainer.max_iter")
        elif a.training_rc == 0:  # train.sh registers the callback: no line means no iteration ran
            level, hint = "warning", "training exited 0 without running an iteration; read the log"
        else:
            level, hint = "warning", "register the callback: trainer.callbacks.train_metrics=L(TrainMetricsCallback)()"
        print(f"{level}: {e.what} ({a.metrics}); no report written: {hint}.", file=sys.stderr)
        return 1
    rep = summarise(rows, a.skip)
    breakdown = step_breakdown.summarise(rows, rep["warmup_skipped"]) if step_breakdown else None
    if breakdown:
        rep["step_breakdown"] = breakdown
    rep.update(metrics=os.path.abspath(a.metrics), log=os.path.abspath(a.log) if a.log else None,
               training_rc=a.training_rc)
    out = a.out or (a.metrics[: -len(".metrics.jsonl")] if a.metrics.endswith(".metrics.jsonl") else a.metrics) \
        + ".report.json"
    with open(out, "w") as f:  # NaN (no steady window) as null: strict JSON readers reject NaN
        json.dump({k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in rep.items()}, f,
                  indent=2)
        f.write("\n")
    print(render(rep) + ("\n" + step_breakdown.render(breakdown) if breakdown else ""))
    print(f"report: {out}")
    stem = out[: -len(".json")] if out.endswith(".json") else out
    if a.plot:
        print(write_plot(rows, rep, stem + ".png"))
    tb = write_tensorboard(rows, (stem[: -len(".report")] if stem.endswith(".report") else stem) + ".tensorboard")
    if tb:
        print(tb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
