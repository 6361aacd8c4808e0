"""portable/block_compile.py (patch dit-blocks-compiled-on-request), on CPU through tests/training/
block_compile_probe.py: each DiT block's forward compiled whole (dynamo + AOT autograd; "aot_eager" stands in for
inductor), with and without upstream's SAC (mm_only) wrapper:
- one graph for all blocks, no graph break (the RoPE cache's counter and our compiled kernels step aside while
  tracing: device.compiling());
- the same loss and gradients as the eager blocks (fp32), module names unchanged, deepcopy rebinds;
- on CPU the switch does nothing (CUDA only); the DiT constructor calls it;
- a compiler that fails gives one warning and eager blocks with the eager result."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .trainer_runs import cpu_env

PROBE = Path(__file__).with_name("block_compile_probe.py")


def test_blocks_compile_to_one_graph_with_eager_numerics(smoke_tree):
    r = subprocess.run([sys.executable, str(PROBE)], cwd=str(smoke_tree), env=cpu_env(smoke_tree),
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = json.loads([ln for ln in r.stdout.splitlines() if ln.startswith("{")][-1])
    for sac, block_type in (("none", "Block"), ("mm_only", "CheckpointWrapper")):
        c = out[sac]
        assert c["compiled"] == 4 and c["all_compiled"] and c["block_type"] == block_type, c
        assert c["graphs"] == 1 and c["graph_breaks"] == 0, c  # 4 blocks, two steps: one graph, no recompile
        assert abs(c["loss_compiled"] - c["loss_eager"]) <= 1e-5 * abs(c["loss_eager"]), c
        assert c["grad_rel"] < 1e-4, c
        assert c["same_keys"] and c["deepcopy_rebound"], c
    assert out["cpu_gate"] == {"enabled": False, "compiled": 0}
    assert out["constructor_hook"] is True
    fb = out["fallback"]
    assert fb["warnings"] == 1 and "using eager blocks" in fb["message"][0], fb
    assert fb["loss"] == fb["ref"] and not fb["compiled"], fb
