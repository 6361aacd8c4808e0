"""Step-time breakdown table from the `phases_s_per_rank` fields of metrics.jsonl (StepTimingCallback).

    python scripts/step_breakdown.py RUN.metrics.jsonl [--skip K]     (train_report.py prints the same table)

Over the steady steps (the report's warm-up skipped): per phase the mean, median and max seconds of the slowest
rank (the rank with the highest mean step time on its own clock), and its share of the step; "other" = step - data
- vae_cond - fwd_bwd - optimizer (host-to-device copy, callbacks, checkpoint saves). Also every rank's mean step
and data wait, and max/min of the slowest rank's step times (an alternating pattern shows as a ratio well above 1).
The header says how the phase boundaries were marked (`phases_clock`): device events (the device's time between
them, nothing waits) or synchronised host stamps (lines written before that field: synchronised).
"""

from __future__ import annotations

import json
import statistics
import sys

PHASES = ("data", "vae_cond", "fwd_bwd", "optimizer")
LABELS = {"data": "data wait", "vae_cond": "VAE/conditioning", "fwd_bwd": "forward+backward",
          "optimizer": "optimizer", "other": "other", "step": "step"}


def summarise(rows: list[dict], skip: int = 0) -> dict | None:
    rows = sorted((r for r in rows if r.get("phases_s_per_rank")), key=lambda r: r["iteration"])
    if not rows:
        return None
    steady = rows[min(max(skip, 0), len(rows) - 1):]
    nranks = max(len(r["phases_s_per_rank"]) for r in steady)
    per_rank = []
    for rank in range(nranks):
        series: dict[str, list[float]] = {p: [] for p in (*PHASES, "other", "step")}
        for r in steady:
            if rank >= len(r["phases_s_per_rank"]):
                continue
            ph = r["phases_s_per_rank"][rank]
            for p in PHASES:
                series[p].append(float(ph.get(p, 0.0)))
            series["step"].append(float(ph["step"]))
            series["other"].append(max(0.0, float(ph["step"]) - sum(float(ph.get(p, 0.0)) for p in PHASES)))
        per_rank.append(series)
    means = [statistics.fmean(s["step"]) if s["step"] else 0.0 for s in per_rank]
    slow = max(range(nranks), key=lambda i: means[i])
    s = per_rank[slow]
    step_mean = statistics.fmean(s["step"])
    table = {
        p: {"mean_s": statistics.fmean(v), "median_s": statistics.median(v), "max_s": max(v),
            "share": statistics.fmean(v) / step_mean if step_mean > 0 else 0.0}
        for p, v in s.items()
    }
    return {
        "steps": len(steady), "first_iteration": steady[0]["iteration"], "ranks": nranks, "slowest_rank": slow,
        "phases": table,
        "clock": steady[-1].get("phases_clock", "synchronised"),
        "step_max_over_min": max(s["step"]) / min(s["step"]) if min(s["step"]) > 0 else None,
        "mean_step_s_per_rank": means,
        "mean_data_s_per_rank": [statistics.fmean(r["data"]) if r["data"] else 0.0 for r in per_rank],
    }


def render(bd: dict) -> str:
    lines = [f"step breakdown over {bd['steps']} steady step(s) from iteration {bd['first_iteration']}, slowest rank "
             f"{bd['slowest_rank']} of {bd['ranks']} (phase boundaries: {bd.get('clock', 'synchronised')}):",
             f"  {'phase':<18}{'mean s':>10}{'median s':>10}{'max s':>10}{'share':>8}"]
    for p in (*PHASES, "other", "step"):
        row = bd["phases"][p]
        lines.append(f"  {LABELS[p]:<18}{row['mean_s']:>10.4f}{row['median_s']:>10.4f}{row['max_s']:>10.4f}"
                     f"{row['share'] * 100:>7.1f}%")
    ratio = bd["step_max_over_min"]
    lines.append(f"  step max/min {ratio:.3f}" if ratio else "  step max/min n/a")
    if bd["ranks"] > 1:
        lines.append("  mean step s per rank: " + " ".join(f"r{i}={v:.4f}" for i, v in enumerate(bd["mean_step_s_per_rank"]))
                     + "; data wait: " + " ".join(f"r{i}={v:.4f}" for i, v in enumerate(bd["mean_data_s_per_rank"])))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import user_errors as ue  # this folder is sys.path[0] (run as a file; train_report.py imports this module)

    p = ue.OneLineParser(description=__doc__.splitlines()[0])
    p.add_argument("metrics")
    p.add_argument("--skip", type=int, default=0, help="warm-up steps to leave out")
    a = p.parse_args(argv)
    try:
        with open(a.metrics) as f:
            rows = [json.loads(ln) for ln in f if ln.strip()]
    except (OSError, json.JSONDecodeError) as e:
        err = ue.UserError(f"cannot read the metrics: {type(e).__name__}", a.metrics, "pass a metrics.jsonl file")
        err.exit_code = 2
        raise err from None
    bd = summarise(rows, a.skip)
    if bd is None:
        raise ue.UserError("no step phases in the metrics", a.metrics,
                           "run through train.sh (it registers StepTimingCallback)")
    print(render(bd))
    return 0


if __name__ == "__main__":
    import user_errors

    sys.exit(user_errors.run_main(main))
