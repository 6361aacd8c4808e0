"""Commands printed in hints, runnable as written from any directory: the installer run by the interpreter and
from the place that has it, and tree scripts run from the tree by the interpreter that runs this.

`installer` is not importable from a patched tree, and run from the overlay checkout without --target it works
on ./cosmos-predict2 there, so a hint says where and with which Python:
  - the interpreter running this has the installed package -> `PY -m cosmos_predict2_overlay ...`;
  - it is the venv of an overlay checkout (CHECKOUT/.venv, as tools/setup_venv.sh makes it)
    -> `cd CHECKOUT && PY -m installer ...`;
  - else the console script `cosmos-predict2-overlay ...` (from `pip install` of the checkout).
Every installer command gets `--target TREE` (absolute).
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import sys

TREE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _q(path: str) -> str:
    return shlex.quote(path)


def _checkout_of_interpreter() -> str | None:
    """The overlay checkout whose venv runs this, if any (…/CHECKOUT/.venv/bin/python)."""
    for venv in (os.path.dirname(os.path.dirname(sys.executable)), sys.prefix):
        checkout = os.path.dirname(os.path.abspath(venv))
        if os.path.isfile(os.path.join(checkout, "installer", "__main__.py")) and os.path.isdir(
                os.path.join(checkout, "patches")):
            return checkout
    return None


def installer(args: str, tree: str = TREE) -> str:
    """`<installer> ARGS --target TREE` as one shell command line."""
    tail = f"{args} --target {_q(os.path.abspath(tree))}"
    if importlib.util.find_spec("cosmos_predict2_overlay") is not None:
        return f"{_q(sys.executable)} -m cosmos_predict2_overlay {tail}"
    checkout = _checkout_of_interpreter()
    if checkout is not None:
        return f"cd {_q(checkout)} && {_q(sys.executable)} -m installer {tail}"
    return f"cosmos-predict2-overlay {tail}"


def in_tree(args: str, tree: str = TREE) -> str:
    """`cd TREE && PY ARGS` (ARGS such as `-m scripts.make_smoke_dataset`)."""
    return f"cd {_q(os.path.abspath(tree))} && {_q(sys.executable)} {args}"
