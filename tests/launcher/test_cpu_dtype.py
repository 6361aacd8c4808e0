"""train.sh reports the compute-dtype decision in its header and passes `--cpu_dtype` on as COSMOS_CPU_DTYPE."""

from __future__ import annotations

import os
import platform
import shutil

import pytest

from launcher_helpers import REPO, SMOKE, make_real_dataset, run_train_sh, touch

PRECISION = os.path.join(REPO, "overlay/cosmos_predict2/portable/precision.py")
CPU_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "COSMOS_CPU_DTYPE", "COSMOS_DEVICE",
           "IMAGINAIRE_OUTPUT_ROOT")
AVX2_CLASS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
x86_only = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                              reason="ATEN_CPU_CAPABILITY=avx2 names an x86 kernel class")


@pytest.fixture
def tree(skeleton_tree):
    shutil.copy(PRECISION, os.path.join(skeleton_tree, "cosmos_predict2/portable/precision.py"))
    return skeleton_tree


def dry(tree: str, args: list[str], **env: str):
    e = {k: v for k, v in os.environ.items() if k not in CPU_ENV}
    e.update(COSMOS_DEVICE="cpu", **env)
    return run_train_sh([f"--EXP={SMOKE['v2w_2b']}", "--dry-run", *args], tree=tree, env=e)


def note(stdout: str) -> str:
    (line,) = [ln.strip() for ln in stdout.splitlines() if ln.strip().startswith("compute dtype")]
    return line


@x86_only
def test_header_on_avx2_class_says_fp32(tree):
    r = dry(tree, [], **AVX2_CLASS)
    assert r.returncode == 0, r.stderr
    line = note(r.stdout)
    assert line.startswith("compute dtype float32 (") and "capability AVX2" in line and "bf16 native: no" in line
    assert line.endswith("; auto)"), line


@x86_only
def test_cpu_dtype_flag_is_exported_and_reported(tree):
    r = dry(tree, ["--cpu_dtype=bf16"], **AVX2_CLASS)
    assert r.returncode == 0, r.stderr
    assert "  COSMOS_CPU_DTYPE=bf16\n" in r.stdout.split("notes:")[0]
    assert note(r.stdout).startswith("compute dtype bfloat16 (") and "COSMOS_CPU_DTYPE=bf16)" in note(r.stdout)
    r = dry(tree, ["--cpu_dtype=fp32", "--", "model.config.precision=bfloat16"], COSMOS_CPU_DTYPE="bf16")
    assert r.returncode == 0, r.stderr
    line = note(r.stdout)  # the flag wins over the environment; an explicit config override is named
    assert line.startswith("compute dtype float32 (") and line.endswith(
        "overridden after --: model.config.precision=bfloat16"), line


def test_bad_choices_fail_in_one_line(tree):
    r = dry(tree, ["--cpu_dtype=fp16"])
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "invalid choice: 'fp16'" in r.stderr, r.stderr
    r = dry(tree, [], COSMOS_CPU_DTYPE="half")
    assert r.returncode == 2 and r.stderr.startswith("error: COSMOS_CPU_DTYPE='half' is not a CPU dtype choice")
    assert r.stderr.count("\n") == 1, r.stderr


def test_seed_experiment_on_cpu_keeps_its_bf16(tree):
    make_real_dataset(tree, "text2image")
    for f in ("model.pt", "tokenizer/tokenizer.pth"):
        touch(f"{tree}/checkpoints/nvidia/Cosmos-Predict2-2B-Text2Image/{f}")
    e = {k: v for k, v in os.environ.items() if k not in CPU_ENV}
    e.update(COSMOS_DEVICE="cpu", **AVX2_CLASS)
    r = run_train_sh(["--EXP=predict2_text2image_training_2b_cosmos_nemo_assets", "--dry-run"], tree=tree, env=e)
    assert r.returncode == 0, r.stderr
    assert note(r.stdout).startswith("compute dtype bfloat16 (set by the experiment; the CPU policy applies to")
