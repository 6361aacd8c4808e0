"""Maintainer tool: turn a development clone of upstream into patches/<commit>/ (one patch per commit).

    python tools/export_series.py DEV_REPO BASE_REV [--out patches/<commit>]

DEV_REPO is a git repository whose BASE_REV holds the pristine upstream library files and whose later commits
are our changes, one concern each. Each commit becomes NNNN-<subject>.patch (or the name in its last body line
`Patch-Name: <name>`, which `python -m installer port` writes): the commit body is the header (why), then the diff
(-p1, a/ b/ prefixes, 3 lines of context, full blob ids). The series file lists them in order. The installer applies
them with zero fuzz and zero offset, so regenerate after any rebase instead of editing hunks by hand.
The default --out is patches/<BASE_REV as a full commit id>/ (the series belongs to the commit it applies to).
`python -m installer port` imports a series back into commits with the same code and checks the round trip.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from installer.errors import InstallerError  # noqa: E402
from installer.port import export_series, git  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("repo")
    p.add_argument("base")
    p.add_argument("--out", default=None, help="default: patches/<full commit id of BASE_REV>")
    a = p.parse_args(argv)
    try:
        base = git(a.repo, "rev-parse", "--verify", f"{a.base}^{{commit}}").strip()
        out = a.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "patches", base)
        names = export_series(a.repo, base, out, base)
    except InstallerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{len(names)} patches -> {os.path.normpath(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
