"""Patch 0035 (DiT block element-wise chains through portable/adaln.py): on CPU the patched block computes
exactly upstream's math, output and input gradient bitwise, in fp32 and bf16. The CUDA (compiled) side is in
tests/ops/test_cuda.py."""

import json
import os
import subprocess
import sys

from .trainer_runs import cpu_env

HERE = os.path.dirname(os.path.abspath(__file__))


def test_patched_block_equals_upstream_math(smoke_tree):
    proc = subprocess.run([sys.executable, os.path.join(HERE, "block_adaln_worker.py")], cwd=smoke_tree,
                          env=cpu_env(smoke_tree), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 2, proc.stdout
    for row in rows:
        assert row["calls"] == {"modulate": 3, "gated_residual": 3}, row  # the patch hooks all six chains
        assert row["out_equal"] and row["grad_equal"], row
        assert row["swapped_max_abs"] > 1e-2, row  # the comparison sees a wrong modulation
