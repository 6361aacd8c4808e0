"""One process trains the plain DiT, not FSDP2 (cosmos_predict2/portable/fsdp_policy.py), and checkpoints cross.

On one device FSDP2 has nothing to shard, and its per-module hooks cost host time (BENCHMARKS 3i), so a one-process
run leaves it out; COSMOS_FSDP_ONE_DEVICE=1 wraps it as before. What must hold:
- the same losses either way (iteration 1 to rounding: the same weights and draws);
- the checkpoint format does not depend on the choice: the optimizer state is saved by parameter name, so a
  one-process (plain) checkpoint resumes on two processes (FSDP2 over gloo), and that run's checkpoint resumes on
  one process again, each continuing the uninterrupted one-process run (the one video and the per-iteration seed:
  every rank draws the same, so one rank's loss is two ranks' loss).
Real upstream trainer through torchrun, real gloo collectives.
"""

from __future__ import annotations

import glob
import math
import shutil

import pytest
import torch

from .trainer_runs import per_iteration_seed, tail, train, video_dataset_overrides

EXP = "predict2_video2world_training_2b_cosmos_nemo_assets_smoke"


def _common(dataset):
    return [*video_dataset_overrides(dataset), per_iteration_seed(seed=5), "checkpoint.save_iter=2"]


def _losses(rows):
    return {r["iteration"]: r["loss"] for r in rows}


def _optim_file(root, it):
    (path,) = glob.glob(str(root / "**" / "checkpoints" / "optim" / f"iter_{it:09d}.pt"), recursive=True)
    return path


def _resume(src, dst, smoke_tree, dataset, nproc, it, max_iter):
    shutil.copytree(src, dst)
    return train(smoke_tree, EXP, dst, [*_common(dataset), f"trainer.max_iter={max_iter}"], nproc=nproc,
                 metrics=dst / f"resumed-{nproc}.jsonl", env={"COSMOS_RESUME_CHECKPOINT": f"iter_{it:09d}.pt"})


def test_one_process_is_plain_and_checkpoints_cross_device_counts(smoke_tree, one_video_dataset, tmp_path):
    plain, rows_p = train(smoke_tree, EXP, tmp_path / "plain", [*_common(one_video_dataset), "trainer.max_iter=5"])
    out = plain.stdout + plain.stderr
    assert plain.returncode == 0, tail(plain)
    assert "FSDP2 left out: one process" in out and "Using FSDP" not in out, tail(plain)
    wrapped, rows_w = train(smoke_tree, EXP, tmp_path / "wrapped", [*_common(one_video_dataset), "trainer.max_iter=3"],
                            env={"COSMOS_FSDP_ONE_DEVICE": "1"})
    assert wrapped.returncode == 0, tail(wrapped)
    assert "Using FSDP with shard size 1" in wrapped.stdout + wrapped.stderr, tail(wrapped)

    u, w = _losses(rows_p), _losses(rows_w)
    assert sorted(u) == [1, 2, 3, 4, 5] and all(math.isfinite(v) for v in u.values()), u
    assert len({round(v, 6) for v in u.values()}) > 1, u  # the draws depend on the iteration
    assert w[1] == pytest.approx(u[1], rel=1e-6), (u, w)
    assert [w[i] for i in (2, 3)] == pytest.approx([u[i] for i in (2, 3)], rel=2e-2), (u, w)

    # the plain run's optimizer state is keyed by parameter name, with the moments in full
    state = torch.load(_optim_file(tmp_path / "plain", 2), map_location="cpu", weights_only=False)
    names = [p for g in state["param_groups"] for p in g["params"]]
    assert names and all(isinstance(p, str) and p.startswith("pipe.dit.") for p in names), names[:3]
    assert set(state["state"]) == set(names)
    assert all("exp_avg" in s and "exp_avg_sq" in s for s in state["state"].values())

    # one process (plain) -> two processes (FSDP2): iterations 3-4 continue the uninterrupted run
    two, rows_2 = _resume(tmp_path / "plain", tmp_path / "two", smoke_tree, one_video_dataset, 2, 2, 4)
    assert two.returncode == 0, tail(two)
    assert "Using FSDP with shard size 2" in two.stdout + two.stderr, tail(two)
    r2 = _losses(rows_2)
    assert sorted(r2) == [3, 4] and rows_2[0]["world_size"] == 2, rows_2
    assert r2[3] == pytest.approx(u[3], rel=1e-5), (u, r2)  # the weights saved after iteration 2
    assert r2[4] == pytest.approx(u[4], rel=2e-2), (u, r2)  # and the optimizer state

    # two processes (FSDP2) -> one process (plain): iteration 5 from the two-process checkpoint of iteration 4
    one, rows_1 = _resume(tmp_path / "two", tmp_path / "one", smoke_tree, one_video_dataset, 1, 4, 5)
    assert one.returncode == 0, tail(one)
    r1 = _losses(rows_1)
    assert sorted(r1) == [5] and rows_1[0]["world_size"] == 1, rows_1
    assert r1[5] == pytest.approx(u[5], rel=2e-2), (u, r1)


def _by_index(state: dict) -> dict:
    """The same optimizer state in upstream's plain format (`optimizer.state_dict()`: parameter indices)."""
    index, groups = {}, []
    for g in state["param_groups"]:
        for name in g["params"]:
            index[name] = len(index)
        groups.append({**g, "params": [index[n] for n in g["params"]]})
    return {"state": {index[n]: v for n, v in state["state"].items()}, "param_groups": groups}


def test_plain_run_resumes_an_index_keyed_optimizer_file(smoke_tree, one_video_dataset, tmp_path):
    """Upstream saved `optimizer.state_dict()` (parameter indices) where it saw no FSDP: the plain path still loads
    that format. The one-process run's own iteration-2 file, rewritten by index, resumes to the same iteration 3 and
    4 as the file by name (the same state, two formats)."""
    first, _ = train(smoke_tree, EXP, tmp_path / "first", [*_common(one_video_dataset), "trainer.max_iter=2"])
    assert first.returncode == 0, tail(first)
    shutil.copytree(tmp_path / "first", tmp_path / "first_by_index")
    path = _optim_file(tmp_path / "first_by_index", 2)
    torch.save(_by_index(torch.load(path, map_location="cpu", weights_only=False)), path)
    rows = {}
    for src in ("first", "first_by_index"):
        run, rows[src] = _resume(tmp_path / src, tmp_path / f"{src}-resumed", smoke_tree, one_video_dataset, 1, 2, 4)
        assert run.returncode == 0, tail(run)
        assert "Loading the optimizer" in run.stdout + run.stderr, tail(run)
    by_name, by_index = _losses(rows["first"]), _losses(rows["first_by_index"])
    assert sorted(by_name) == sorted(by_index) == [3, 4], (by_name, by_index)
    assert by_index == pytest.approx(by_name, rel=1e-6), (by_name, by_index)
