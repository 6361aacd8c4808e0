"""The compute-dtype policy (portable/precision.py): bf16 on accelerators and on CPUs that run it natively, fp32 on
every other CPU, where emulated bf16 matmul/convolution is 100-200x slower than fp32.

The decision function is tested on given CPU descriptions; the real detection is run in subprocesses, once with
this host's CPU lowered to the AVX2-only class (ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2), which must
choose fp32 whatever the hardware underneath.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest
import torch

from portable_loader import ROOT

X86 = platform.machine().lower() in ("x86_64", "amd64")


def cpu(prec, machine="x86_64", capability="AVX512", flags=(), isa=""):
    return prec.CpuInfo(machine=machine, capability=capability, flags=frozenset(flags), onednn_max_isa=isa,
                        model="test cpu")


ZEN4 = ("avx2", "avx512f", "avx512_bf16")  # AVX512 with the BF16 extension
SPR = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
SKYLAKE_X = ("avx2", "avx512f", "avx512bw")  # AVX512 without BF16
ZEN3 = ("avx", "avx2", "fma")  # AVX2 only: the class the policy exists for


@pytest.mark.parametrize("flags,capability,isa,native", [
    (ZEN3, "AVX2", "", False),
    (SKYLAKE_X, "AVX512", "", False),
    (ZEN4, "AVX512", "", True),
    (("amx_bf16",), "AVX512", "", True),
    (SPR, "AVX512", "ALL", True),
    (SPR, "AVX512", "AVX512_CORE_BF16", True),
    (ZEN4, "AVX2", "", False),  # ATEN_CPU_CAPABILITY=avx2 on bf16 hardware: ATen runs emulated bf16 kernels
    (ZEN4, "DEFAULT", "", False),
    (ZEN4, "AVX512", "AVX2", False),  # oneDNN capped: its convolutions/matmuls emulate bf16
    (ZEN4, "AVX512", "avx512_core", False),
    (SPR, "AVX512", "AVX512_CORE_VNNI", False),
])
def test_x86_native_bf16_rule(portable, flags, capability, isa, native):
    prec = portable.precision
    got, why = prec.bf16_native(cpu(prec, capability=capability, flags=flags, isa=isa))
    assert got is native, why
    d = prec.decide("cpu", cpu(prec, capability=capability, flags=flags, isa=isa), choice=None)
    assert d.dtype == (torch.bfloat16 if native else torch.float32) and d.source == "auto"
    assert f"bf16 native: {'yes' if native else 'no'}" in d.line() and f"capability {capability}" in d.line()


def test_avx2_only_cpu_gets_fp32_not_emulated_bf16(portable):
    prec = portable.precision
    d = prec.decide("cpu", cpu(prec, capability="AVX2", flags=ZEN3), choice="")
    assert d.dtype == torch.float32 and d.dtype_name == "float32" and d.native_bf16 is False
    assert d.line().startswith("compute dtype float32 (cpu test cpu, capability AVX2, bf16 native: no")


@pytest.mark.parametrize("machine,flags,native", [
    ("aarch64", ("fp", "asimd", "bf16", "sve"), True),  # Graviton3 / Neoverse V1
    ("arm64", ("fp", "asimd"), False),  # Graviton2 / Neoverse N1
    ("ppc64le", ("bf16",), False),
    ("s390x", (), False),
])
def test_other_architectures(portable, machine, flags, native):
    prec = portable.precision
    d = prec.decide("cpu", cpu(prec, machine=machine, capability="DEFAULT", flags=flags))
    assert d.native_bf16 is native and d.dtype == (torch.bfloat16 if native else torch.float32)


@pytest.mark.parametrize("raw,want", [("fp32", torch.float32), ("float32", torch.float32), (" BF16 ", torch.bfloat16),
                                      ("bfloat16", torch.bfloat16)])
def test_override_wins_on_cpu(portable, raw, want):
    prec = portable.precision
    for c in (cpu(prec, capability="AVX2", flags=ZEN3), cpu(prec, flags=SPR)):
        d = prec.decide("cpu", c, choice=raw)
        assert d.dtype == want and d.source == f"COSMOS_CPU_DTYPE={raw.strip()}"


@pytest.mark.parametrize("device", ["cuda", "npu"])
def test_accelerators_stay_bf16_whatever_the_override(portable, device):
    prec = portable.precision
    for choice in (None, "fp32", "auto"):
        d = prec.decide(device, None, choice=choice)
        assert d.dtype == torch.bfloat16 and d.native_bf16 is None and d.line().startswith("compute dtype bfloat16")


def test_bad_override_is_one_error_line(portable):
    prec = portable.precision
    with pytest.raises(ValueError) as e:
        prec.decide("cpu", cpu(prec, flags=SPR), choice="fp16")
    msg = str(e.value)
    assert msg.startswith("error: COSMOS_CPU_DTYPE='fp16' is not a CPU dtype choice") and "\n" not in msg
    assert msg.endswith("Use auto, fp32 or bf16.")


def test_npu_policy_is_bf16(npu_portable):
    """Uses the torch_npu TEST DOUBLE (tests/doubles/fake_torch_npu.py) to make the device layer detect an NPU."""
    assert npu_portable.device.device_type() == "npu"
    assert npu_portable.precision.policy().dtype == torch.bfloat16


_PROBE = """
import json, sys
sys.path.insert(0, {tests_ops!r})
from portable_loader import load_portable
p = load_portable("cosmos_portable_precision_probe").precision
d = p.policy()
print(json.dumps(dict(dtype=d.dtype_name, native=d.native_bf16, capability=d.cpu.capability,
                      flags=sorted(d.cpu.flags), isa=d.cpu.onednn_max_isa, source=d.source, line=d.line(),
                      compute=str(p.compute_dtype()), name=p.precision_name())))
"""


def _probe(**env_extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "COSMOS_CPU_DTYPE")}
    env.update(COSMOS_DEVICE="cpu", **env_extra)
    r = subprocess.run([sys.executable, "-c", _PROBE.format(tests_ops=str(ROOT / "tests" / "ops"))], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not X86, reason="ATEN_CPU_CAPABILITY=avx2 names an x86 kernel class")
def test_detection_on_avx2_class_picks_fp32():
    """This host lowered to the AVX2-only class (the issue's reproduction) must not get emulated bf16."""
    d = _probe(ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2")
    assert d["capability"] == "AVX2", d
    assert d["dtype"] == "float32" and d["native"] is False and d["compute"] == "torch.float32", d
    assert d["name"] == "float32" and "bf16 native: no" in d["line"], d
    assert "avx2" in d["flags"], d  # the hardware flags were read (from /proc/cpuinfo or torch's cpuinfo)


@pytest.mark.skipif(not X86, reason="ONEDNN_MAX_CPU_ISA values are x86 ISA names")
def test_detection_with_only_onednn_capped_picks_fp32():
    d = _probe(ONEDNN_MAX_CPU_ISA="AVX2")
    assert d["dtype"] == "float32" and d["isa"] == "AVX2", d


def test_detection_on_this_host_follows_the_rule():
    d = _probe()
    x86_native = ("avx512_bf16" in d["flags"] or "amx_bf16" in d["flags"]) and d["capability"].startswith("AVX512")
    arm_native = platform.machine().lower() in ("aarch64", "arm64") and "bf16" in d["flags"]
    assert d["native"] is (x86_native or arm_native), d
    assert d["dtype"] == ("bfloat16" if d["native"] else "float32"), d
    forced = _probe(COSMOS_CPU_DTYPE="fp32")
    assert forced["dtype"] == "float32" and forced["source"] == "COSMOS_CPU_DTYPE=fp32", forced


def test_bad_env_value_fails_in_one_line():
    env = dict(os.environ, COSMOS_DEVICE="cpu", COSMOS_CPU_DTYPE="half")
    r = subprocess.run([sys.executable, "-c", _PROBE.format(tests_ops=str(ROOT / "tests" / "ops"))], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "RuntimeError: error: COSMOS_CPU_DTYPE='half' is not a CPU dtype choice" in r.stderr, r.stderr[-2000:]
