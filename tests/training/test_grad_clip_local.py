"""GradClip on FSDP2 gradients (torchrun, gloo, world 1 with a 1-D and an HSDP mesh, world 2), through
tests/training/grad_clip_worker.py in the applied tree:
- patch grad-clip-scales-the-gradients: upstream's clip_grad_norm_ (the pristine bytes) given `net.parameters()`
  scales nothing (the norm spends the generator); the patched one clips;
- patch grad-clip-one-pass-on-local-shards: GradClip takes portable/shards.clip_grad_norm_local's path for these
  layouts, and its gradients are bitwise those of the (patched) upstream path, in fp32 and bf16, with non-finite
  values zeroed first; the clipped norm is the limit;
- patch grad-clip-finite-check-after-the-step: with FusedAdam's fused kernel the check after the step's launch gives
  the parameters of the check before the step, bitwise, a step poisoned on one rank included."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest

from tests import procgroup

from .trainer_runs import cpu_env

WORKER = Path(__file__).with_name("grad_clip_worker.py")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("world", [1, 2])
def test_grad_clip_clips_and_one_pass_matches_upstream(smoke_tree, world):
    r = procgroup.run([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={world}",
                       f"--master_port={_port()}", str(WORKER)],
                      cwd=str(smoke_tree), env=cpu_env(smoke_tree), timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = json.loads([ln for ln in r.stdout.splitlines() if ln.startswith("{")][-1])
    assert out["world"] == world
    expected = {"fsdp_float32", "fsdp_bfloat16", "fsdp_poisoned"} | (
        {"hsdp_float32", "hsdp_bfloat16", "hsdp_poisoned"} if world == 1 else set())
    assert set(out["cases"]) == expected
    for name, c in out["cases"].items():
        assert c["eligible"] and c["one_pass_used"], name
        assert not c["pristine_scaled"], name  # upstream's defect, on the real upstream bytes
        assert c["patched_scaled"], name
        assert c["bitwise"] and c["max_diff"] == 0.0, name
        assert c["finite"], name
        assert c["norm_after"] == pytest.approx(0.05, rel=1e-3), name  # clipped to the limit
        if c["norm_before"] is not None:
            assert c["norm_before"] > 1.0, name
    assert out["plain_eligible"] == [True, 0]
    # patch grad-clip-finite-check-after-the-step on FSDP2 shards: the late check taken, the same step bitwise;
    # poisoned on rank 0 only, every rank skipped and redid it (a rank that did not would differ or hang)
    assert set(out["late"]) == {"fsdp_late_finite", "fsdp_late_poisoned"}
    for name, c in out["late"].items():
        assert c["late_used"] == [False, True] and c["bitwise"] and c["finite"], (name, c)
