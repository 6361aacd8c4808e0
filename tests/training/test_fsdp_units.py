"""COSMOS_FSDP_ONE_UNIT (portable/fsdp_units.py, patch fsdp-one-unit-on-one-device) through upstream's trainer.

On one rank (gloo) the Text2Image smoke experiment trains three steps with upstream's per-block FSDP2 units and with
one unit for the whole DiT: the log says which, the one-unit run's DiT has a single FSDP module, and the losses of
every step and the saved weights agree to fp32 rounding. Not bit for bit: each unit's autograd node at its
boundary changes the order in which the engine sums the gradient contributions to inputs shared by all blocks
(the time embedding), so the first step's loss is identical and the later ones differ in the last bits. On two ranks the switch is ignored (the log says
so) and the run trains as before."""

from __future__ import annotations

import glob
import math
import textwrap

import pytest
import torch

from .trainer_runs import per_iteration_seed, tail, train

EXP = "predict2_text2image_training_2b_cosmos_nemo_assets_smoke"
ITERS = 3
ONE = "FSDP: the whole DiT is one unit (COSMOS_FSDP_ONE_UNIT=1, a mesh of one device)"
KEPT = "FSDP: per-block units kept: COSMOS_FSDP_ONE_UNIT=1 applies to a mesh of one device, this one has 2"

# a callback that prints how many FSDP modules the DiT has once training starts (after apply_fsdp)
PROBE = textwrap.dedent('''
    from torch.distributed.fsdp import FSDPModule
    from imaginaire.utils.callback import Callback

    class UnitProbe(Callback):
        def on_train_start(self, model, iteration=0):
            units = [n for n, m in model.pipe.dit.named_modules() if isinstance(m, FSDPModule)]
            print("FSDP_UNITS", len(units), units[:3], flush=True)
''')


def _run(tree, out, flag: str, nproc: int = 1, probe_dir=None):
    overrides = [per_iteration_seed(seed=5), f"trainer.max_iter={ITERS}", "checkpoint.save_iter=1000"]
    env = {"COSMOS_CPU_DTYPE": "fp32", "COSMOS_FSDP_ONE_UNIT": flag}
    if probe_dir is not None:
        overrides.append("++trainer.callbacks.unit_probe={_target_:fsdp_unit_probe.UnitProbe}")
        env["PYTHONPATH"] = f"{probe_dir}:{tree}"
    proc, rows = train(tree, EXP, out, overrides, nproc=nproc, env=env)
    assert proc.returncode == 0, tail(proc)
    return proc.stdout + proc.stderr, rows


def _weights(out):
    (ckpt,) = glob.glob(str(out / "**" / "checkpoints" / "model" / f"iter_{ITERS:09d}.pt"), recursive=True)
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    state = state.get("model", state)
    return {k: v for k, v in state.items() if k.startswith("net.") and torch.is_tensor(v)}


def test_one_unit_trains_as_per_block_units(smoke_tree, tmp_path):
    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / "fsdp_unit_probe.py").write_text(PROBE)
    log_blocks, rows_blocks = _run(smoke_tree, tmp_path / "blocks", "0", probe_dir=tmp_path / "probe")
    log_one, rows_one = _run(smoke_tree, tmp_path / "one", "1", probe_dir=tmp_path / "probe")
    assert ONE not in log_blocks and ONE in log_one
    units_blocks = int(log_blocks.split("FSDP_UNITS ", 1)[1].split()[0])
    units_one = int(log_one.split("FSDP_UNITS ", 1)[1].split()[0])
    assert units_one == 1 and units_blocks > 2, (units_one, units_blocks)  # root + blocks + final layer + t_embedder
    losses_blocks = [r["loss"] for r in rows_blocks]
    losses_one = [r["loss"] for r in rows_one]
    assert len(losses_one) == ITERS and all(math.isfinite(x) for x in losses_one), losses_one
    assert losses_one[0] == losses_blocks[0]  # the same forward, bit for bit
    assert losses_one == pytest.approx(losses_blocks, rel=1e-5)  # the same updates, to fp32 rounding
    assert len(set(losses_one)) > 1, losses_one  # and the steps really differ
    w_blocks, w_one = _weights(tmp_path / "blocks"), _weights(tmp_path / "one")
    assert sorted(w_blocks) == sorted(w_one) and w_one  # the same checkpoint layout
    for k in w_one:
        assert torch.allclose(w_one[k], w_blocks[k], rtol=1e-5, atol=1e-6), k
    assert {v.dtype for v in w_one.values() if v.is_floating_point()} == {torch.float32}


def test_one_unit_is_ignored_on_two_ranks(smoke_tree, tmp_path):
    log, rows = _run(smoke_tree, tmp_path / "two", "1", nproc=2)
    assert KEPT in log and ONE not in log
    assert [r["iteration"] for r in rows] == list(range(1, ITERS + 1)) and rows[0]["world_size"] == 2


@pytest.mark.parametrize("value", ["2", "maybe"])
def test_bad_value_is_one_line(smoke_tree, tmp_path, value):
    from .trainer_runs import cpu_env
    import subprocess
    import sys

    e = cpu_env(smoke_tree, COSMOS_FSDP_ONE_UNIT=value)
    r = subprocess.run([sys.executable, "-c", "from cosmos_predict2.portable import fsdp_units; fsdp_units.requested()"],
                       cwd=str(smoke_tree), env=e, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert f"COSMOS_FSDP_ONE_UNIT={value!r} is not a boolean (environment)" in r.stderr.strip().splitlines()[-1]
