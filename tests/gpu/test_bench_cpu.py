"""bench/bench_cpu.py runs on CPU and really lowers the second class to AVX2 (ops part only; the smoke runs it
times are what tests/training and tests/launcher already run)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="the avx2 class is x86 only")
def test_bench_cpu_ops_both_classes():
    r = subprocess.run([sys.executable, str(REPO / "bench" / "bench_cpu.py"), "--ops-only", "--tiny", "--reps", "1"],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert set(out["classes"]) == {"native", "avx2"} and out["cpu_model"]
    avx2 = out["classes"]["avx2"]
    assert avx2["ops"]["capability"] == "AVX2" and avx2["policy"]["capability"] == "AVX2"
    assert avx2["policy"]["dtype"] == "float32" and avx2["policy"]["native_bf16"] is False
    for cls in out["classes"].values():
        ops = [row["op"].split()[0] for row in cls["ops"]["rows"]]
        assert ops == ["matmul", "conv3d", "conv2d", "sdpa"]
        assert all(row["fp32_s"] > 0 and row["bf16_s"] > 0 for row in cls["ops"]["rows"])
