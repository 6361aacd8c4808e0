"""imaginaire's distributed.barrier() with patch barrier-skipped-on-one-process, in the patched tree: with one
process (a real gloo group of one) it does not call dist.barrier (on NCCL that drained the device's queue after every
EveryN callback's logging iteration); with more processes it does."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from .trainer_runs import cpu_env

PROBE = textwrap.dedent('''
    import json, os, tempfile, torch.distributed as dist
    from imaginaire.utils import distributed
    store = tempfile.mktemp()
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    calls = []
    real = dist.barrier
    dist.barrier = lambda *a, **k: calls.append(dist.get_world_size()) or real(*a, **k)
    distributed.barrier()
    one = len(calls)
    dist.get_world_size = lambda *a, **k: 2  # as if a second process were there
    dist.barrier = lambda *a, **k: calls.append(2)
    distributed.barrier()
    print(json.dumps(dict(one=one, two=len(calls) - one)))
    dist.destroy_process_group()
''')


def test_barrier_waits_only_for_other_processes(smoke_tree):
    r = subprocess.run([sys.executable, "-c", PROBE], cwd=str(smoke_tree), env=cpu_env(smoke_tree),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out == {"one": 0, "two": 1}, out
