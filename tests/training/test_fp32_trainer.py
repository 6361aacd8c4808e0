"""fp32 through upstream's trainer, chosen by the compute-dtype policy on an AVX2-only CPU.

The process runs with this host lowered to the AVX2-only class (ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2)
and no dtype override: the policy must pick fp32, the smoke experiment must then train in fp32 end to end (before
patches 0016-0019 the VAE cast its input to bf16 and the first encode failed; LowPrecisionCallback refused fp32),
the saved weights must be fp32, and the loss on one fixed batch must be finite and fall.
"""

from __future__ import annotations

import glob
import math
import platform

import pytest
import torch

from .trainer_runs import per_iteration_seed, tail, train, video_dataset_overrides

EXP = "predict2_video2world_training_2b_cosmos_nemo_assets_smoke"
ITERS = 8
AVX2_CLASS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                    reason="ATEN_CPU_CAPABILITY=avx2 names an x86 kernel class")
def test_avx2_class_trains_in_fp32_and_learns(smoke_tree, one_video_dataset, tmp_path, monkeypatch):
    for k, v in AVX2_CLASS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("COSMOS_CPU_DTYPE", raising=False)
    out = tmp_path / "out"
    proc, rows = train(
        smoke_tree, EXP, out,
        [*video_dataset_overrides(one_video_dataset), per_iteration_seed(seed=3, fixed=True),
         f"trainer.max_iter={ITERS}", "optimizer.lr=0.003", "model.config.pipe_config.ema.enabled=false"],
    )
    assert proc.returncode == 0, tail(proc)
    log = proc.stdout + proc.stderr
    assert "precision torch.float32" in log, "the pipeline was not built in fp32"  # upstream's own log line
    losses = [r["loss"] for r in rows]
    assert [r["iteration"] for r in rows] == list(range(1, ITERS + 1)), rows
    assert all(math.isfinite(x) for x in losses), losses
    assert losses[-1] < 0.8 * losses[0], f"loss did not fall on a fixed batch in fp32: {losses}"
    assert all(b <= a * 1.01 for a, b in zip(losses[2:], losses[3:])), losses  # and keeps falling
    # the trainer's final checkpoint holds the DiT's weights: fp32, not bf16 cast back up
    (ckpt,) = glob.glob(str(out / "**" / "checkpoints" / "model" / f"iter_{ITERS:09d}.pt"), recursive=True)
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    state = state.get("model", state)
    dtypes = {v.dtype for k, v in state.items()
              if k.startswith("net.") and torch.is_tensor(v) and v.is_floating_point()}
    assert dtypes == {torch.float32}, dtypes
