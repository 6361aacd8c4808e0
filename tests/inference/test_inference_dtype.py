"""The inference scripts' default dtype comes from the compute-dtype policy: float32 on a CPU without native bf16
(emulated bf16 is 100-200x slower there), bfloat16 where the policy says so; `--dtype` still wins."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "dataprep"))
from dataprep_helpers import assert_one_error_line, build_tiny_t5, make_script_tree, run_script  # noqa: E402
from tiny_cosmos import save_tiny_pipeline  # noqa: E402

SMALL = ("--height", "64", "--width", "96", "--steps", "1", "-v")
AVX2_CLASS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "COSMOS_DEVICE": "cpu"}


@pytest.fixture(scope="module")
def t2i(tmp_path_factory):
    base = tmp_path_factory.mktemp("models")
    return save_tiny_pipeline("text2image", base / "t2i", build_tiny_t5(base / "t5"))


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_script_tree(tmp_path_factory.mktemp("tree") / "tree")


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                    reason="ATEN_CPU_CAPABILITY=avx2 names an x86 kernel class")
def test_default_dtype_follows_policy(tree, t2i, tmp_path):
    r = run_script(tree, "hf_text2image", str(tmp_path / "a"), "--prompt", "a robot", "--model", str(t2i), *SMALL,
                   **AVX2_CLASS)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "dtype: float32" in r.stdout, r.stdout
    assert (tmp_path / "a" / "output.png").is_file()
    r = run_script(tree, "hf_text2image", str(tmp_path / "b"), "--prompt", "a robot", "--model", str(t2i), *SMALL,
                   COSMOS_CPU_DTYPE="bf16", **AVX2_CLASS)  # the override reaches the scripts too
    assert r.returncode == 0, r.stderr[-3000:]
    assert "dtype: bfloat16" in r.stdout, r.stdout


def test_bad_override_is_one_error_line(tree, t2i, tmp_path):
    r = run_script(tree, "hf_text2image", str(tmp_path / "c"), "--prompt", "a robot", "--model", str(t2i), *SMALL,
                   COSMOS_CPU_DTYPE="half", COSMOS_DEVICE="cpu")
    line = assert_one_error_line(r)
    assert line.startswith("error: COSMOS_CPU_DTYPE='half' is not a CPU dtype choice"), line
