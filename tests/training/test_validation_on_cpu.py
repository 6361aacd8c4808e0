"""Validation through upstream's trainer on CPU (patches 0024-0028): `trainer.run_validation=true` switches to the
EMA weights (ema_scope -> EMA cache()), runs validation_step on the mock validation loader, and restores the
training weights. Before the patches the EMA cache went to the literal "cuda" and this crashed off CUDA (the same
crash as on NPU: "Torch not compiled with CUDA enabled")."""

from .trainer_runs import tail, train

EXP = "predict2_video2world_training_2b_cosmos_nemo_assets_smoke"


def test_validation_runs_with_ema_on_cpu(smoke_tree, tmp_path):
    proc, rows = train(
        smoke_tree, EXP, tmp_path / "out",
        ["trainer.max_iter=2", "trainer.run_validation=true", "trainer.validation_iter=2", "trainer.max_val_iter=1"],
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, tail(proc)
    assert out.count("Validation: Switched to EMA weights") == 2, tail(proc)  # iteration 0 and 2
    assert out.count("Validation: Restored training weights") == 2, tail(proc)
    assert [r["iteration"] for r in rows] == [1, 2], rows
