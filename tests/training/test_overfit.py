"""Overfitting one fixed batch through upstream's trainer lowers the loss (the whole training path learns).

One video, and the per-iteration seed callback in fixed mode: every step sees the same frames, noise, sigma and
conditioning frames, so the only thing that changes between steps is the weights.
"""

import math

from .trainer_runs import per_iteration_seed, tail, train, video_dataset_overrides

EXP = "predict2_video2world_training_2b_cosmos_nemo_assets_smoke"


def test_overfit_one_batch_lowers_loss(smoke_tree, one_video_dataset, tmp_path):
    proc, rows = train(
        smoke_tree, EXP, tmp_path / "out",
        [*video_dataset_overrides(one_video_dataset), per_iteration_seed(seed=3, fixed=True),
         "trainer.max_iter=20", "optimizer.lr=0.003", "model.config.pipe_config.ema.enabled=false"],
    )
    assert proc.returncode == 0, tail(proc)
    losses = [r["loss"] for r in rows]
    assert [r["iteration"] for r in rows] == list(range(1, 21)), rows
    assert all(math.isfinite(x) for x in losses), losses
    assert losses[-1] < 0.5 * losses[0], f"loss did not fall on a fixed batch: {losses}"
    # and it keeps falling: a fixed batch leaves nothing but the weights to move the loss
    assert all(b <= a * 1.01 for a, b in zip(losses[2:], losses[3:])), losses
