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
    for it in range(1, cb.every_n):
        cb.on_training_step_end(None, None, None, None, iteration=it)
    alive_one_step_before = ref() is not None
    cb.on_training_step_end(None, None, None, None, iteration=cb.every_n)
    freed_at_scheduled = ref() is None
    cb.on_train_end(model=None, iteration=cb.every_n)
    after = dict(enabled=gc.isenabled(), frozen=gc.get_freeze_count())
    print(json.dumps(dict(every_n=cb.every_n, before=before, during=during, alive_before_scheduled=alive_before_scheduled,
                          alive_one_step_before=alive_one_step_before, freed_at_scheduled=freed_at_scheduled,
                          collections=cb.collections, after=after)))
''')


def _probe(tree, **env) -> dict:
    e = dict(os.environ, PYTHONPATH=str(tree), COSMOS_DEVICE="cpu", TORCH_DEVICE_BACKEND_AUTOLOAD="0")
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
    e = dict(os.environ, PYTHONPATH=str(smoke_tree), COSMOS_GC_EVERY=value, TORCH_DEVICE_BACKEND_AUTOLOAD="0")
    r = subprocess.run([sys.executable, "-c", "from cosmos_predict2.portable.gc_policy import "
                        "GarbageCollectionCallback as G; G()"], cwd=str(smoke_tree), env=e, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode != 0 and f"COSMOS_GC_EVERY={value} is " in r.stderr
