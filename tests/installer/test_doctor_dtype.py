"""doctor's compute-dtype line: the policy of overlay/cosmos_predict2/portable/precision.py on this host."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CPU_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "COSMOS_CPU_DTYPE")


def doctor(**extra: str) -> tuple[int, dict]:
    env = {k: v for k, v in os.environ.items() if k not in CPU_ENV}
    env.update(COSMOS_DEVICE="cpu", **extra)
    r = subprocess.run([sys.executable, "-m", "installer", "doctor", "--json"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    out = json.loads(r.stdout)
    return r.returncode, out


def row(out: dict) -> dict:
    (found,) = [c for c in out["checks"] if c["component"] == "compute dtype"]
    return found


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86 kernel-class variables")
def test_avx2_class_reports_fp32_and_no_native_bf16():
    rc, out = doctor(ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2")
    r = row(out)
    assert r["status"] == "ok" and r["detail"].startswith("float32 ("), r
    assert "capability AVX2" in r["detail"] and "bf16 native: no" in r["detail"] and "smoke run" in r["detail"], r
    rc, out = doctor(ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2", COSMOS_CPU_DTYPE="bf16")
    r = row(out)
    assert r["status"] == "warn" and r["detail"].startswith("bfloat16 (") and "emulated bf16" in r["detail"], r


def test_bad_override_fails_doctor():
    rc, out = doctor(COSMOS_CPU_DTYPE="half")
    r = row(out)
    assert r["status"] == "fail" and r["detail"].startswith("error: COSMOS_CPU_DTYPE='half'"), r
    assert rc == 1 and out["can_train"] is False
