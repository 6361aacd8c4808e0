#!/usr/bin/env python3
"""CPU benchmark: the smoke run and the ops that decide its speed, on both CPU classes in one run.

    python bench/bench_cpu.py [--tree DIR] [--ops-only] [--tiny] [--reps 3] [--no-native-fp32] [--vae]

CPU classes: "native" is this host as it is; "avx2" is the same host lowered to the AVX2-only class the way the
issue reproduces it (ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2: no AVX512-BF16/AMX kernels in ATen or
oneDNN). A CPU whose bf16 is emulated runs bf16 matmul/convolution 100-200x slower than fp32.

Measured, each class in its own subprocess (the variables must be set before torch loads):
- ops: matmul, Conv3d, Conv2d and SDPA in fp32 and bf16, one thread, best of --reps after a warm-up;
- smoke: `train.sh --EXP=predict2_video2world_training_2b_cosmos_nemo_assets_smoke --nproc_per_node=1` in a
  patched tree with the smoke data (what `bash tools/smoke_run.sh` runs once the venv, the tree and the data
  exist), wall time of the whole command, with a fresh output root each time (no resume from an earlier run);
  the compute dtype the launcher chose, step time, loss from the run's report. With the policy, the avx2 class
  trains in fp32 and the native class in bf16 (where the CPU has it); a third run forces fp32 on the native class
  (--cpu_dtype=fp32) for comparison, unless --no-native-fp32;
- with --vae: one VAE encode of a 13x64x64 smoke clip in fp32 and in bf16 per class (the op that made the smoke
  run take an hour in emulated bf16).
The tree: --tree, else ./cosmos-predict2 of this checkout; created with `python -m installer apply` and
`python -m scripts.make_smoke_dataset` when absent (not timed). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRECISION = ROOT / "overlay" / "cosmos_predict2" / "portable" / "precision.py"
SMOKE_EXP = "predict2_video2world_training_2b_cosmos_nemo_assets_smoke"
CLASSES = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
}
_CLASS_VARS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "COSMOS_CPU_DTYPE")


def _env(cls: str, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in _CLASS_VARS}
    env.update(CLASSES[cls], **extra)
    return env


# ------------------------------------------------------------------------------------------------- ops worker


def _op_cases(tiny: bool):
    import torch
    import torch.nn.functional as F

    if tiny:
        mm, c3, c2, sd = 64, (1, 8, 3, 16, 16), (1, 8, 16, 16), (1, 2, 64, 16)
    else:
        mm, c3, c2, sd = 512, (1, 32, 5, 32, 32), (1, 64, 32, 32), (1, 4, 1024, 16)
    g = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=g)

    a, b = rnd(mm, mm), rnd(mm, mm)
    x3, w3 = rnd(*c3), rnd(c3[1], c3[1], 3, 3, 3)
    x2, w2 = rnd(*c2), rnd(c2[1], c2[1], 3, 3)
    q, k, v = rnd(*sd), rnd(*sd), rnd(*sd)
    return [
        (f"matmul {mm}x{mm}x{mm}", lambda d: (a.to(d), b.to(d)), lambda t: t[0] @ t[1]),
        (f"conv3d {c3[1]}->{c3[1]} k3 {'x'.join(map(str, c3))}", lambda d: (x3.to(d), w3.to(d)),
         lambda t: F.conv3d(t[0], t[1], padding=1)),
        (f"conv2d {c2[1]}->{c2[1]} k3 {'x'.join(map(str, c2))}", lambda d: (x2.to(d), w2.to(d)),
         lambda t: F.conv2d(t[0], t[1], padding=1)),
        (f"sdpa {'x'.join(map(str, sd))}", lambda d: (q.to(d), k.to(d), v.to(d)),
         lambda t: F.scaled_dot_product_attention(*t)),
    ]


def ops_worker(tiny: bool, reps: int) -> None:
    import torch

    torch.set_num_threads(1)  # the table: single thread
    rows = []
    for name, make, fn in _op_cases(tiny):
        row = {"op": name}
        for dname, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            args = make(dtype)
            fn(args)  # warm-up (oneDNN primitive creation)
            best = float("inf")
            for _ in range(reps):
                t0 = time.perf_counter()
                fn(args)
                best = min(best, time.perf_counter() - t0)
            row[f"{dname}_s"] = best
        row["bf16_over_fp32"] = row["bf16_s"] / row["fp32_s"]
        rows.append(row)
    print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
                      "rows": rows}))


def vae_worker() -> None:
    """One VAE encode of a smoke clip (13x64x64) in fp32, then in bf16 (run in a tree, PYTHONPATH=tree)."""
    import torch

    from cosmos_predict2.tokenizers.tokenizer import TokenizerInterface

    torch.manual_seed(0)
    tok = TokenizerInterface(vae_pth="checkpoints/smoke/tokenizer.pth", temporal_window=16)
    x = torch.rand(1, 3, 13, 64, 64) * 2 - 1
    out = {"capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        tok.to(dtype=dt)
        t0 = time.perf_counter()
        tok.encode(x.to(dt))
        out[f"encode_{name}_s"] = round(time.perf_counter() - t0, 2)
    print(json.dumps(out))


def run_vae(tree: Path, cls: str) -> dict:
    r = subprocess.run([sys.executable, __file__, "--_vae-worker"], cwd=tree, capture_output=True, text=True,
                       env=_env(cls, PYTHONPATH=str(tree), COSMOS_DEVICE="cpu"), timeout=7200)
    if r.returncode != 0:
        raise SystemExit(f"error: the VAE worker failed for class {cls} (bench_cpu.py). {r.stderr.strip()[-500:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------- driver


def policy_of(cls: str) -> dict:
    """The compute-dtype decision for a class, as the launcher makes it (precision.py loaded by file)."""
    code = (
        "import importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('p', {str(PRECISION)!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "d = m.decide('cpu')\n"
        "print(json.dumps(dict(dtype=d.dtype_name, native_bf16=d.native_bf16, capability=d.cpu.capability,\n"
        "                      cpu_model=d.cpu.model, line=d.line())))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], env=_env(cls), capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise SystemExit(f"error: cannot run the precision policy for class {cls} (bench_cpu.py). {r.stderr.strip()}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def run_ops(cls: str, tiny: bool, reps: int) -> dict:
    r = subprocess.run([sys.executable, __file__, "--_ops-worker", *(["--tiny"] if tiny else []), "--reps", str(reps)],
                       env=_env(cls), capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        raise SystemExit(f"error: the ops worker failed for class {cls} (bench_cpu.py). {r.stderr.strip()[-500:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def ensure_tree(tree: Path) -> dict:
    """Apply the series and make the smoke data when missing; returns what was done and how long it took."""
    done = {}
    if not (tree / "train.sh").is_file():
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "installer", "apply", "--target", str(tree)], cwd=ROOT, check=True,
                       stdout=sys.stderr)
        done["apply_s"] = round(time.perf_counter() - t0, 1)
    if not (tree / "checkpoints/smoke/tokenizer.pth").is_file():
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "scripts.make_smoke_dataset"], cwd=tree, check=True,
                       env=dict(os.environ, COSMOS_DEVICE="cpu"), stdout=sys.stderr)
        done["make_smoke_dataset_s"] = round(time.perf_counter() - t0, 1)
    return done


def run_smoke(tree: Path, cls: str, extra_flags: list[str]) -> dict:
    out_root = tempfile.mkdtemp(prefix=f"bench-cpu-{cls}-")
    env = _env(cls, PYTHON=sys.executable, IMAGINAIRE_OUTPUT_ROOT=out_root, COSMOS_DEVICE="cpu")
    cmd = ["bash", str(tree / "train.sh"), f"--EXP={SMOKE_EXP}", "--nproc_per_node=1", *extra_flags]
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=7200)
    wall = time.perf_counter() - t0
    row = {"class": cls, "flags": extra_flags, "rc": r.returncode, "wall_s": round(wall, 1),
           "load_before": round(load0, 2), "load_after": round(os.getloadavg()[0], 2)}
    row["dtype_line"] = next((ln.strip() for ln in r.stdout.splitlines() if ln.strip().startswith("compute dtype")),
                             None)
    reports = glob.glob(os.path.join(out_root, "**", "*.report.json"), recursive=True)
    if reports:
        with open(reports[0]) as f:
            rep = json.load(f)
        row["report"] = {k: rep.get(k) for k in ("steps", "step_time_median_s", "loss_mean", "loss_final")
                         if k in rep} or rep
    if r.returncode != 0:
        row["tail"] = (r.stdout + r.stderr)[-2000:]
    return row


def cpu_summary() -> dict:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.lower().startswith("model name")), "")
    except OSError:
        pass
    return {"cpu_model": model or platform.processor(), "machine": platform.machine(), "cores": os.cpu_count()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tree", type=Path, default=ROOT / "cosmos-predict2")
    p.add_argument("--ops-only", action="store_true", help="skip the smoke runs")
    p.add_argument("--tiny", action="store_true", help="tiny op shapes (a test of this script)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--no-native-fp32", action="store_true", help="skip the fp32 smoke run on the native class")
    p.add_argument("--vae", action="store_true",
                   help="also time one VAE encode in fp32 and bf16 per class (emulated bf16: about 13 min here)")
    p.add_argument("--_ops-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--_vae-worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a._ops_worker:
        ops_worker(a.tiny, a.reps)
        return 0
    if a._vae_worker:
        vae_worker()
        return 0
    if platform.machine().lower() not in ("x86_64", "amd64"):
        print("error: the avx2 class is an x86 kernel class (bench_cpu.py). Run this on an x86-64 host.",
              file=sys.stderr)
        return 2
    import datetime as dt

    import torch

    result = {"bench": "cpu", "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
              "torch": torch.__version__, **cpu_summary(), "classes": {}}
    for cls in CLASSES:
        result["classes"][cls] = {"env": CLASSES[cls], "policy": policy_of(cls), "ops": run_ops(cls, a.tiny, a.reps)}
    if not a.ops_only:
        result["setup"] = ensure_tree(a.tree.resolve())
        runs = [("avx2", []), ("native", [])] + ([] if a.no_native_fp32 else [("native", ["--cpu_dtype=fp32"])])
        result["smoke"] = [run_smoke(a.tree.resolve(), cls, flags) for cls, flags in runs]
        if a.vae:
            result["vae_encode"] = {cls: run_vae(a.tree.resolve(), cls) for cls in CLASSES}
    print(json.dumps(result, indent=1))
    bad = [r for r in result.get("smoke", []) if r["rc"] != 0]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
