"""Validation and environment for train.sh: everything that must be right before torchrun starts.

    python scripts/train_preflight.py --plan-file=PLAN [train.sh flags] [-- key=value ...]

train.sh stays thin: it calls this, sources PLAN (bash assignments, every value shlex-quoted) and runs the
command it names. Every failure here is ONE line `error: <what> (<where>). <what to do>.` on stderr and exit 2,
so nothing is started, no output directory is created.

The parts, beside this file (imported by plain name: this runs as a file and is loaded by path by tests):
    train_experiments.py  EXPERIMENTS, the single table of what the launcher needs to know about each experiment
                          (tests/launcher checks it against upstream's own config objects), and the override keys
    train_checks.py       the checks (flags, parallel layout, data, checkpoints, device, memory, dtype, ports, output
                          root) and PreflightError (a UserError: cosmos_predict2/portable/user_error.py, through
                          user_errors.py, the scripts' one loader of it)
    train_plan.py         the flags (argparse), fresh/resumed run, the torchrun command and environment, the bash plan
This file is the entry point train.sh runs; its namespace re-exports the parts' public names.
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # its parts beside it, also when this file is loaded by path (tests)
    sys.path.insert(0, _HERE)

from train_checks import *  # noqa: E402,F401,F403  (the names tests and tools read from here)
from train_checks import PreflightError  # noqa: E402
from train_experiments import *  # noqa: E402,F401,F403
from train_plan import *  # noqa: E402,F401,F403
from train_plan import _parser, build_plan, describe, write_plan  # noqa: E402
from user_errors import report  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    flags = argv[: argv.index("--")] if "--" in argv else argv
    if "-h" in flags or "--help" in flags:
        _parser().print_help()
        return 0
    try:
        plan = build_plan(argv)
    except PreflightError as e:
        return report(e)  # its one line; exit 2
    if plan.dry_run:  # a real run prints the same text as the first lines of its log (TRAIN_HEADER)
        print(describe(plan), end="")
    if plan.plan_file:
        write_plan(plan, plan.plan_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
