"""Per-step host work of the trainer (bench/trainer_overhead.py through the real trainer, tiny Text2Image on CPU).

One trainer run (5 steps, COSMOS_STEP_TIMING_EVERY=2: StepTimingCallback times every 2nd step, FSDP2 on the one
process as on several: COSMOS_FSDP_ONE_DEVICE=1) under the probe's counting dispatch mode:
- patch low-precision-callback-skips-written-back-masters: LowPrecisionCallback dispatches nothing after the step
  (it used to copy every fp32 master into its bf16 parameter, which FusedAdam's step had just done);
- patch dtensor-ema-update-local-shards + portable/shards.py: the EMA update and FusedAdam reach the local shards
  of the FSDP2 DTensor parameters without DTensor dispatches;
- patch grad-clip-finite-on-local-shards: GradClip's nan_to_num runs on the local shards (no DTensor dispatch);
- patch loss-log-one-finite-check: LossLog reads the loss on the host once per step, not twice (one step late since
  patch loss-log-reads-one-step-late);
- StepTimingCallback(every_n=2): no device synchronization on the untimed steps, phases only for the timed ones.
The losses are bitwise those of the series without these changes (checked by hand: the same five losses).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .trainer_runs import cpu_env, free_port

REPO = Path(__file__).resolve().parents[2]
PROBE = REPO / "bench" / "trainer_overhead.py"


def _probe(smoke_tree, overrides=(), **env) -> dict:
    # COSMOS_FSDP_ONE_DEVICE=1 (unless given): the FSDP2 path of a multi-device run, on one process
    env = {"COSMOS_FSDP_ONE_DEVICE": "1", "COSMOS_STEP_TIMING_EVERY": "2", **env}
    proc = subprocess.run(
        [sys.executable, str(PROBE), "--side", "trainer", "--iters", "5", "--port", str(free_port()),
         *(["--", *overrides] if overrides else [])],
        cwd=smoke_tree, env=cpu_env(smoke_tree, **env), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    (row,) = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return row


@pytest.fixture(scope="module")
def probe_run(smoke_tree) -> dict:
    # The probe counts the trainer as it runs in bf16 (fp32 masters, LowPrecisionCallback). Where bf16 is emulated
    # (AVX2-class CPUs) its VAE encodes alone take ~4 minutes (43 s a step, measured), so it runs on bf16-native
    # CPUs only; the counts do not depend on the CPU class.
    native = subprocess.run(
        [sys.executable, "-c", "from cosmos_predict2.portable import precision; print(precision.decide('cpu').native_bf16)"],
        cwd=smoke_tree, env=cpu_env(smoke_tree), capture_output=True, text=True, timeout=120)
    if native.stdout.strip() != "True":
        pytest.skip("needs a CPU with native bf16 (the probe's bf16 trainer run is ~4 min with emulated bf16)")
    return _probe(smoke_tree)


def _sources(row: dict, phase: str) -> dict:
    return dict(map(tuple, row["steady"]["top_sources"].get(phase, [])))


def test_low_precision_callback_dispatches_nothing_after_the_step(probe_run):
    ema_zero = _sources(probe_run, "ema_zero")
    assert not [s for s in ema_zero if "LowPrecisionCallback" in s], ema_zero
    # what is left there: the EMA update (two foreach ops) and zero_grad
    assert probe_run["steady"]["phases"]["ema_zero"]["ops"] <= 8, probe_run["steady"]["phases"]["ema_zero"]


def test_ema_and_optimizer_reach_local_shards_without_dtensor_dispatch(probe_run):
    for phase in ("optimizer", "ema_zero"):
        src = _sources(probe_run, phase)
        bad = {s: n for s, n in src.items() if ("optim.py" in s or "dtensor_helper.py" in s) and "[dtensor]" in s}
        assert not bad, (phase, bad)
    assert probe_run["steady"]["phases"]["ema_zero"].get("dtensor_ops", 0) == 0


def test_grad_clip_finite_check_runs_on_local_shards(probe_run):
    # before patch grad-clip-finite-on-local-shards: one DTensor nan_to_num per gradient (47 on the tiny net); what
    # is left are clip_grad_norm_'s few foreach ops on the DTensor gradients
    opt = probe_run["steady"]["phases"]["optimizer"]
    assert opt.get("dtensor_ops", 0) <= 5, opt


def test_loss_log_reads_the_loss_once_per_step(probe_run):
    # before patch loss-log-one-finite-check: isnan then isinf, two host reads on every finite step. Since patches
    # loss-log-reads-one-step-late and loss-log-reads-without-wait a logging iteration's figures are read at the next
    # step's end; the smoke experiment logs at every iteration (logging_iter=1), so the first step reads nothing and
    # each later one reads its predecessor's figures once
    for step, sites in probe_run["per_step_syncs"].items():
        if step == "5":  # the loop's exit after the last step
            continue
        reads = [s for s in sites if s["source"] == "callback LossLog.on_training_step_end"
                 and s["what"] == "_local_scalar_dense"]
        assert sum(s["n"] for s in reads) == (0 if step == "0" else 1), (step, reads)


def test_step_timing_every_n_synchronizes_only_timed_steps(probe_run):
    assert probe_run["timed_steps"] == [1, 3, 5], probe_run["timed_steps"]  # metrics count finished steps
    per_step = probe_run["per_step_syncs"]

    def timing_syncs(step: str) -> int:
        return sum(s["n"] for s in per_step[step] if "StepTimingCallback" in s["source"]
                   or "step_timing.py" in s["source"])

    # trainer steps 0, 2, 4 are timed: six synchronizations each; 1 and 3 are not, and end right before a timed
    # step: one synchronization there (the timed step's start), none anywhere else
    assert [timing_syncs(k) for k in ("0", "1", "2", "3", "4")] == [6, 1, 6, 1, 6], per_step


def test_one_unit_experiment_drops_the_per_block_fsdp_hooks(smoke_tree, probe_run):
    """TRAINER_OVERHEAD_ONE_UNIT=1 (bench knob, BENCHMARKS 3h): one FSDP2 unit on one rank, fewer FSDP2 ops in
    forward and backward than upstream's per-block units (probe_run), the same losses to bf16 rounding."""
    one = _probe(smoke_tree, TRAINER_OVERHEAD_ONE_UNIT="1")
    for phase in ("forward", "backward"):
        assert one["steady"]["phases"][phase]["ops"] < probe_run["steady"]["phases"][phase]["ops"], phase
    assert one["losses"] == pytest.approx(probe_run["losses"], rel=2e-2)


def test_one_process_default_is_the_plain_module(smoke_tree):
    """One process trains the plain module by default (portable/fsdp_policy.py, BENCHMARKS 3i): fewer ops in forward
    and backward than the FSDP2-wrapped run of the same process (COSMOS_FSDP_ONE_DEVICE=1), no DTensor op anywhere,
    the EMA update two foreach ops without a per-parameter `.data` (patch ema-update-plain-without-data-alias), the
    same losses. In fp32 (COSMOS_CPU_DTYPE=fp32), so that it runs on every CPU class; the counts do not depend on
    the dtype."""
    plain = _probe(smoke_tree, COSMOS_FSDP_ONE_DEVICE="0", COSMOS_CPU_DTYPE="fp32")
    wrapped = _probe(smoke_tree, COSMOS_CPU_DTYPE="fp32")
    ph, pw = plain["steady"]["phases"], wrapped["steady"]["phases"]
    for phase in ("forward", "backward"):
        assert ph[phase]["ops"] < pw[phase]["ops"], (phase, ph[phase], pw[phase])
    assert all(c.get("dtensor_ops", 0) == 0 for c in ph.values()), ph
    assert ph["ema_zero"]["ops"] <= 8, _sources(plain, "ema_zero")
    assert plain["losses"] == pytest.approx(wrapped["losses"], rel=1e-4)


def test_step_end_waits_for_nothing_on_untimed_steps(smoke_tree):
    """Between logging iterations a step's only host read of a device value is GradClip's finite check: LossLog keeps
    its finite check on the device (patch loss-log-no-host-read-per-step), the step clock marks the step's end
    without a synchronize and TrainMetricsCallback reads the previous step's loss from its host copy
    (portable/metrics.py; on a device that copy is pinned host memory, on this CPU run it is the one
    `_local_scalar_dense` left at the step end). Step 2 of 5: breakdown on steps 0 and 4, logging every 100 steps,
    IterSpeed's first-steps logging off. fp32, so it runs on every CPU class."""
    row = _probe(smoke_tree, ("trainer.logging_iter=100", "trainer.callbacks.iter_speed.hit_thres=0"),
                 COSMOS_FSDP_ONE_DEVICE="0", COSMOS_CPU_DTYPE="fp32", COSMOS_STEP_TIMING_EVERY="4")
    # the sampler's indices at an epoch boundary (2 images: step 2 starts one) are a CPU tensor in a device run too
    sites = sorted((s["phase"], s["what"], s["source"], s["n"]) for s in row["per_step_syncs"]["2"]
                   if s["source"] != "cosmos_predict2/data/loader.py:__iter__")
    assert sites == [("optimizer", "_local_scalar_dense", "callback GradClip.on_before_optimizer_step", 1),
                     ("step_end", "_local_scalar_dense", "callback TrainMetricsCallback.on_training_step_end", 1)], sites


def test_local_shard_is_the_storage_to_local_views(smoke_tree, tmp_path):
    """portable/shards.local_shard on a one-rank DTensor: the same storage as to_local(), no dispatch."""
    code = f"""
import os, torch, torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import distribute_tensor, Shard
from torch.utils._python_dispatch import TorchDispatchMode
from cosmos_predict2.portable.shards import local_shard
dist.init_process_group("gloo", init_method="file://{tmp_path}/pg", rank=0, world_size=1)
mesh = init_device_mesh("cpu", (1,))
p = torch.nn.Parameter(distribute_tensor(torch.randn(4, 3), mesh, [Shard(0)]))
class Count(TorchDispatchMode):
    n = 0
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        Count.n += 1
        return func(*args, **(kwargs or {{}}))
with Count():
    loc = local_shard(p)
assert Count.n == 0, Count.n
assert loc.data_ptr() == p.to_local().data_ptr() and loc.shape == p.to_local().shape
with torch.no_grad():
    loc.mul_(2)
assert torch.equal(p.to_local(), loc)
t = torch.ones(2)
assert local_shard(t) is t
dist.destroy_process_group()
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=smoke_tree, env=cpu_env(smoke_tree), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stdout + proc.stderr


def test_timing_runs_both_sides_in_the_policy_dtype(smoke_tree):
    """--time follows the compute-dtype policy on both sides (fp32 on CPUs without native bf16, where a forced bf16
    made a 28-block timing run take 9.5 minutes); counting keeps bf16, the path a device runs."""
    env = cpu_env(smoke_tree)
    env.pop("COSMOS_CPU_DTYPE", None)
    want = subprocess.run(
        [sys.executable, "-c", "from cosmos_predict2.portable import precision; print(precision.decide('cpu').dtype)"],
        cwd=smoke_tree, env=env, capture_output=True, text=True, timeout=120).stdout.strip().removeprefix("torch.")
    assert want in ("float32", "bfloat16"), want
    proc = subprocess.run([sys.executable, str(PROBE), "--time", "--iters", "2", "--port", str(free_port())],
                          cwd=smoke_tree, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [(r["side"], r["dtype"]) for r in rows] == [("bare", want), ("trainer", want)], rows
    assert all(loss == loss for loss in rows[1]["losses"]) and len(rows[1]["losses"]) == 2, rows[1]
