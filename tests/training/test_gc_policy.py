"""GarbageCollectionCallback (portable/gc_policy.py): automatic GC off while training, a full collection every N
steps that really frees reference cycles, everything restored at train end; COSMOS_GC_EVERY=0 changes nothing.

Each case runs in a fresh interpreter (the policy changes process-wide collector state) with the applied tree on
the path, driving the callback's hooks the way upstream's trainer calls them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from .trainer_runs import cpu_env, tail, train

PROBE = textwrap.dedent('''
    import gc, json, weakref
    from cosmos_predict2.portable.gc_policy import GarbageCollectionCallback

    class Node:
        pass

    def cycle():
        a, b = Node(), Node()
        a.other, b.other = b, a
        return weakref.ref(a)

    before = dict(enabled=gc.isenabled(), frozen=gc.get_freeze_count())
    cb = GarbageCollectionCallback()
    cb.on_train_start(model=None, iteration=0)
    during = dict(enabled=gc.isenabled(), frozen=gc.get_freeze_count() > 0)
    ref = cycle()
    keep = [Node() for _ in range(5000)]  # net allocations far past the automatic collector's thresholds
    alive_before_scheduled = ref() is not None
    for it in range(1, cb.schedule.every_n):
        cb.on_training_step_end(None, None, None, None, iteration=it)
    alive_one_step_before = ref() is not None
    cb.on_training_step_end(None, None, None, None, iteration=cb.schedule.every_n)
    freed_at_scheduled = ref() is None
    cb.on_train_end(model=None, iteration=cb.schedule.every_n)
    after = dict(enabled=gc.isenabled(), frozen=gc.get_freeze_count())
    print(json.dumps(dict(every_n=cb.schedule.every_n, before=before, during=during, alive_before_scheduled=alive_before_scheduled,
                          alive_one_step_before=alive_one_step_before, freed_at_scheduled=freed_at_scheduled,
                          collections=cb.schedule.collections, after=after)))
''')


def _probe(tree, **env) -> dict:
    e = cpu_env(tree)
    e.pop("COSMOS_GC_EVERY", None)
    e.update(env)
    r = subprocess.run([sys.executable, "-c", PROBE], cwd=str(tree), env=e, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_policy_collects_on_schedule_only(smoke_tree):
    out = _probe(smoke_tree, COSMOS_GC_EVERY="7")
    assert out["every_n"] == 7
    assert out["before"] == {"enabled": True, "frozen": 0}
    assert out["during"] == {"enabled": False, "frozen": True}
    # the cycle outlives thousands of allocations and the six unscheduled steps, then the seventh frees it
    assert out["alive_before_scheduled"] and out["alive_one_step_before"] and out["freed_at_scheduled"]
    assert out["collections"] == 1
    assert out["after"] == {"enabled": True, "frozen": 0}


def test_default_is_every_50_steps(smoke_tree):
    assert _probe(smoke_tree)["every_n"] == 50


def test_zero_keeps_pythons_automatic_collection(smoke_tree):
    out = _probe(smoke_tree, COSMOS_GC_EVERY="0")
    assert out["during"] == {"enabled": True, "frozen": False}
    # the automatic collector (still on) frees the cycle long before any step hook runs
    assert not out["alive_before_scheduled"] and out["collections"] == 0


@pytest.mark.parametrize("value", ["x", "-3"])
def test_bad_value_is_one_clear_error(smoke_tree, value):
    e = cpu_env(smoke_tree, COSMOS_GC_EVERY=value)
    r = subprocess.run([sys.executable, "-c", "from cosmos_predict2.portable.gc_policy import "
                        "GarbageCollectionCallback as G; G()"], cwd=str(smoke_tree), env=e, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode != 0 and f"COSMOS_GC_EVERY={value} is not a step count (gc_policy)" in r.stderr


def test_training_cycles_hold_no_tensors(smoke_tree, tmp_path):
    """Why deferring collection is safe for device memory: the reference cycles a real training step leaves behind
    (upstream's trainer, Text2Image smoke experiment, policy on with a period longer than the run) are small Python
    objects only; a cycle holding a tensor would keep its memory until the next scheduled collection."""
    here = os.path.dirname(os.path.abspath(__file__))
    proc, _ = train(smoke_tree, "predict2_text2image_training_2b_cosmos_nemo_assets_smoke", tmp_path, [
        "++trainer.callbacks.gc_policy={_target_:cosmos_predict2.portable.gc_policy.GarbageCollectionCallback}",
        "++trainer.callbacks.gc_probe={_target_:gc_cycle_probe.CycleProbe}", "trainer.max_iter=4",
    ], env={"COSMOS_GC_EVERY": "1000", "PYTHONPATH": os.pathsep.join([here, str(smoke_tree)])})
    assert proc.returncode == 0, tail(proc)
    rows = [json.loads(ln.split("GC_CYCLE_PROBE ", 1)[1]) for ln in proc.stdout.splitlines() if "GC_CYCLE_PROBE " in ln]
    assert [r["iteration"] for r in rows] == [2, 4], tail(proc)
    for r in rows:
        assert not r["gc_enabled"], r  # the policy is on: nothing was collected automatically
        assert r["unreachable"] > 0, r  # the probe does see the step's cycles
        assert r["tensors"] == 0 and r["tensor_bytes"] == 0, r
