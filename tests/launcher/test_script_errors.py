"""The helper scripts' bad input is one line through the shared formatter (portable/user_error.py), with the exit
status of a usage error: make_smoke_dataset.py, step_breakdown.py and tiny_pipelines.py, run from the overlay as a
user runs them (`python -m scripts.make_smoke_dataset` in a tree, or by path; step_breakdown.py as a file, as its
docstring says)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "overlay" / "scripts"


def _one_line(args, cwd=None, module=False):
    cmd = [sys.executable, "-m", f"scripts.{args[0]}", *args[1:]] if module else \
        [sys.executable, str(SCRIPTS / f"{args[0]}.py"), *args[1:]]
    r = subprocess.run(cmd, cwd=cwd or SCRIPTS.parent, capture_output=True, text=True, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and lines[0].endswith("."), r.stderr[-2000:]
    return r.returncode, lines[0]


@pytest.mark.parametrize("module", [True, False])
@pytest.mark.parametrize("args, where, todo", [
    (["--size", "30"], "(--size)", "Pass a multiple of 16"),
    (["--size", "64", "--width", "100"], "(--width)", "Pass a multiple of 16"),
    (["--frames", "3"], "(--frames)", "Pass --frames 13 or more"),
    (["--videos", "0"], "(--videos)", "Pass 1 or more"),
    (["--bogus"], "(make_smoke_dataset.py)", "Run 'make_smoke_dataset.py --help'"),
])
def test_make_smoke_dataset_bad_flags(tmp_path, module, args, where, todo):
    rc, line = _one_line(["make_smoke_dataset", "--root", str(tmp_path / "out"), *args], module=module)
    assert rc == 2 and where in line and todo in line, line
    assert not (tmp_path / "out").exists()  # nothing written


def test_step_breakdown_unreadable_and_phaseless_metrics(tmp_path):
    rc, line = _one_line(["step_breakdown", str(tmp_path / "missing.jsonl")])
    assert rc == 2 and "cannot read the metrics: FileNotFoundError" in line and "Pass a metrics.jsonl file" in line
    (tmp_path / "m.jsonl").write_text('{"iteration": 1, "loss": 0.5}\n')
    rc, line = _one_line(["step_breakdown", str(tmp_path / "m.jsonl")])
    assert rc == 1 and "no step phases in the metrics" in line and "Run through train.sh" in line


def test_tiny_pipelines_usage():
    rc, line = _one_line(["tiny_pipelines", "imageworld"])
    assert rc == 2 and "(command line)" in line and "text2image|video2world DIR" in line
