"""train.sh's step against the bare step, from one gpu_suite call's results.jsonl (stage t2i_ratio).

    python3 bench/device/ratio_rows.py RESULTS.jsonl --e2e-prefix t2i_ratio_e2e [--e2e-prefix ...]
        [--bare-variant ours_cb]

Each train.sh row (bench "e2e", name starting with a prefix) is paired with the last bare-step row before it
(bench "dit", mode fwd+bwd+opt, the variant given): rounds alternate the two so that each pair saw the same card
state. Prints one JSON row (bench "t2i_ratio") per prefix: per round the bare step's mean and median, train.sh's
mean and median over its steady steps (after its first `--skip`), and the ratio of train.sh's mean to the bare
mean; then the same over all rounds pooled. Exit 1 with one line if a train.sh row has no bare row before it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys


def _steady(row: dict, skip: int) -> list[float]:
    steps = [s for s in row.get("step_s_all") or [] if s is not None and s == s]
    return steps[skip:] or steps


def pair_rounds(rows: list[dict], e2e_prefix: str, bare_variant: str, skip: int = 5) -> dict:
    """The t2i_ratio row of the train.sh runs named `e2e_prefix`*, each against the last bare step before it."""
    rounds, bare = [], None
    for row in rows:
        if row.get("bench") == "dit" and row.get("mode") == "fwd+bwd+opt" and row.get("variant") == bare_variant:
            bare = row
        elif row.get("bench") == "e2e" and str(row.get("name", "")).startswith(e2e_prefix):
            if bare is None:
                raise ValueError(f"train.sh run {row['name']} has no bare-step row ({bare_variant}) before it")
            b, e = bare.get("step_s_all") or [bare["step_s"]], _steady(row, skip)
            if not e:
                raise ValueError(f"train.sh run {row['name']} has no step times (rc {row.get('rc')})")
            rounds.append(dict(name=row["name"], rc=row.get("rc"), bare_mean_s=statistics.mean(b),
                               bare_median_s=statistics.median(b), e2e_mean_s=statistics.mean(e),
                               e2e_median_s=statistics.median(e), e2e_steps=len(e),
                               e2e_max_over_min=max(e) / min(e),
                               ratio_mean=statistics.mean(e) / statistics.mean(b)))
    if not rounds:
        raise ValueError(f"no train.sh rows named {e2e_prefix}*")
    pooled_bare = statistics.mean(r["bare_mean_s"] for r in rounds)
    pooled_e2e = statistics.mean(r["e2e_mean_s"] for r in rounds)
    return dict(bench="t2i_ratio", e2e_prefix=e2e_prefix, bare_variant=bare_variant, skip=skip, rounds=rounds,
                ratio_mean_pooled=pooled_e2e / pooled_bare, ratio_mean_min=min(r["ratio_mean"] for r in rounds),
                ratio_mean_max=max(r["ratio_mean"] for r in rounds), target=1.04)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", help="a gpu_suite results.jsonl")
    ap.add_argument("--e2e-prefix", required=True, action="append", help="names of the train.sh rows to pair")
    ap.add_argument("--bare-variant", default="ours_cb", help="bench_dit's variant of the bare step")
    ap.add_argument("--skip", type=int, default=5, help="train.sh's first steps left out (warm-up)")
    args = ap.parse_args(argv)
    rows = []
    with open(args.results) as fh:
        for line in fh:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    try:
        out = [pair_rounds(rows, prefix, args.bare_variant, args.skip) for prefix in args.e2e_prefix]
    except ValueError as exc:
        print(f"error: {exc} in {args.results} (ratio_rows.py)", file=sys.stderr)
        return 1
    for row in out:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
