"""Run a training command until its metrics file holds a given number of lines, then stop it.

    python3 bench/device/run_until_rows.py --metrics-dir DIR --rows N [--timeout S] [--grace S] -- CMD ...

Why: a benchmark of train.sh needs the iterations' metrics, not the final checkpoint. A 2B run's final save
(weights, fp32 masters, moments and EMA) takes longer than its 25 timed iterations, and on the lent GPU machine
every second counts. TrainMetricsCallback writes the last iteration's line before that save starts, so once the
`*.metrics.jsonl` file under DIR (searched recursively: train.sh names it after the run) has N lines, the
command's process group (train.sh, torchrun, its workers and data loader processes) is stopped: SIGTERM, then
SIGKILL after --grace seconds.

Exit status: 0 when stopped after N lines (one line on stderr says so), the command's own status when it ends
first (what it left running in its group is stopped), 124 when --timeout passes first (as timeout(1)).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def count_rows(metrics_dir: Path, pattern: str) -> int:
    """Complete lines of the first file matching `pattern` under `metrics_dir` (0 if none yet)."""
    for path in sorted(metrics_dir.rglob(pattern)):
        try:
            return path.read_bytes().count(b"\n")
        except OSError:  # written or moved as we read: count again at the next poll
            return 0
    return 0


def stop_group(proc: subprocess.Popen, grace: float) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:  # the whole group has already gone
            return
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        # the leader is gone; make sure nothing it started lingers (data loader workers hold the card's memory)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--metrics-dir", type=Path, required=True, help="where the run writes its metrics file")
    ap.add_argument("--pattern", default="*.metrics.jsonl", help="the metrics file's name (glob)")
    ap.add_argument("--rows", type=int, required=True, help="stop once the metrics file has this many lines")
    ap.add_argument("--timeout", type=float, default=0, help="stop (exit 124) after this many seconds; 0: never")
    ap.add_argument("--grace", type=float, default=10, help="seconds between SIGTERM and SIGKILL")
    ap.add_argument("--poll", type=float, default=0.5, help="seconds between looks at the metrics file")
    ap.add_argument("cmd", nargs=argparse.REMAINDER, help="-- the command")
    args = ap.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        ap.error("no command given (put it after --)")
    if args.rows < 1:
        ap.error(f"--rows must be at least 1, not {args.rows}")

    start = time.monotonic()
    proc = subprocess.Popen(cmd, start_new_session=True)  # its own process group: stopped as a whole
    try:
        while True:
            try:
                rc = proc.wait(timeout=args.poll)
            except subprocess.TimeoutExpired:
                pass
            else:  # ended by itself; anything it left running (a crashed run's workers hold GPU memory) goes too
                stop_group(proc, args.grace)
                return rc
            rows = count_rows(args.metrics_dir, args.pattern)
            if rows >= args.rows:
                print(f"run_until_rows: {rows} metrics lines under {args.metrics_dir} (wanted {args.rows}): "
                      f"stopping the run after {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
                stop_group(proc, args.grace)
                return 0
            if args.timeout and time.monotonic() - start > args.timeout:
                print(f"run_until_rows: {rows} of {args.rows} metrics lines after {args.timeout:.0f} s: "
                      "stopping the run (timed out)", file=sys.stderr, flush=True)
                stop_group(proc, args.grace)
                return 124
    except KeyboardInterrupt:
        stop_group(proc, args.grace)
        return 130


if __name__ == "__main__":
    sys.exit(main())
