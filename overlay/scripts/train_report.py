"""Summarise one training run from the JSON lines TrainMetricsCallback wrote.

    python scripts/train_report.py --metrics=RUN.metrics.jsonl [--out=RUN.report.json] [--log=RUN.log]
                                   [--skip=K] [--training-rc=RC]

Step time is taken over a steady window that skips warm-up (first min(3, n // 3) logged iterations unless --skip):
median and mean. Throughput (FPS) = samples per step (global: local batch x grad accumulation x data-parallel
size) / step time. Peak memory is per rank, the maximum over the run. Prints a short summary, writes JSON.
Exit status: 0 with a report, 1 when there is nothing to report (no or unreadable metrics).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys


try:  # the per-phase table (scripts/step_breakdown.py, next to this file)
    import step_breakdown
except ImportError:  # pragma: no cover - a tree without it
    step_breakdown = None


class ReportError(Exception):
    pass


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


def render(rep: dict) -> str:
    return "\n".join([
        f"steps {rep['steps']} (iterations {rep['first_iteration']}..{rep['last_iteration']}), "
        f"steady window {rep['steady_steps']} after skipping {rep['warmup_skipped']} warm-up",
        f"step time median {rep['step_time_median_s']:.4f} s, mean {rep['step_time_mean_s']:.4f} s",
        f"throughput {rep['samples_per_s_median']:.3f} samples/s at the median step time, "
        f"{rep['samples_per_s_mean']:.3f} at the mean; "
        f"{rep['samples_per_step']} samples/step on {rep['world_size']} rank(s) "
        f"(dp {rep['dp_size']}, cp {rep['cp_size']}, {rep['device']})",
        f"loss mean {rep['loss_mean']:.5f}, final {rep['loss_final']:.5f}",
        "peak device memory GiB per rank: " + " ".join(_gib(b) for b in rep["peak_mem_bytes_per_rank"]),
        "max RSS GiB per rank: " + " ".join(_gib(b) for b in rep["max_rss_bytes_per_rank"]),
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--metrics", required=True)
    p.add_argument("--out", default=None, help="report JSON (default: <metrics without .metrics.jsonl>.report.json)")
    p.add_argument("--log", default=None, help="the run's log, recorded in the report")
    p.add_argument("--skip", type=int, default=None, help="warm-up iterations to leave out of step time")
    p.add_argument("--training-rc", dest="training_rc", type=int, default=None)
    a = p.parse_args(argv)
    try:
        rows = read_metrics(a.metrics)
    except ReportError as e:
        hint = ("training failed before its first logged iteration" if a.training_rc else
                "register the callback: trainer.callbacks.train_metrics=L(TrainMetricsCallback)()")
        level = "note" if a.training_rc else "warning"  # train.sh's own line reports a failed run
        print(f"{level}: {e} ({a.metrics}); no report written: {hint}.", file=sys.stderr)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
