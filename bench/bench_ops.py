#!/usr/bin/env python3
"""Benchmarks of the portable ops at Cosmos-Predict2 shapes; prints one JSON object per line, then a table.

    python bench/bench_ops.py                 # CUDA, full Cosmos shapes (H100/H200: a few minutes)
    python bench/bench_ops.py --tiny          # any device, tiny shapes (CPU smoke run)
    python bench/bench_ops.py --only rope,rmsnorm --models 2B --seqs 37440

Shapes: B=1, bf16, head_dim 128; 2B: 16 heads, 14B: 40 heads; S = 37440 (480p, 93 frames), 84480 (720p,
93 frames), 4080 (text2image 768x1360). Measured:
- copy: device-to-device copy, GB/s counting bytes read + written (the memory roof for the elementwise ops);
- matmul: bf16 8192^3 TFLOP/s (the compute roof);
- rope: ours (cos/sin cached per freqs tensor, compiled apply on CUDA) vs the anchor's eager RoPE (cos/sin
  recomputed every call and cast to bf16 before a bf16 multiply), GB/s = (read x + write out) / time;
- rmsnorm: ours vs the same math in eager torch, GB/s = (read x + write out) / time;
- rope and rmsnorm are timed twice: one call per event pair (what a lone call costs, host work included) and
  20 back-to-back calls per event pair ("impl@x20": kernel throughput, the number to hold against the copy roof);
- attention: ours (portable attention(), auto backend) vs SDPA pinned to cudnn / flash / efficient and, where
  flash-attn-4 is installed, its CuTe kernels (the flash_cute backend), forward
  and forward+backward, TFLOP/s with 4*B*H*S*S*D FLOPs forward and 3.5x that for forward+backward (backward = 2.5x forward: dQ, dK, dV, dP and the recomputed QK^T, as FlashAttention counts);
- fa4_tiles (only when named in --only): FA4's forward under the configurations of --fa4-fwd-tiles against its
  default tiling, outputs compared, the fastest named (what FWD_CONFIGS in portable/flash_cute.py records);
- optim: one step of FusedAdam (fp32 masters) over 256M bf16 params vs AdamW on bf16 params (the anchor) and
  fused AdamW on fp32 params; GB/s counts ~30 bytes per parameter (apex's fused kernel traffic).
Timing: CUDA events around each repetition after warm-up, median reported; fresh random inputs (never zeros).
The portable package is loaded from this checkout (overlay/cosmos_predict2/portable) as a standalone package.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PORTABLE_DIR = ROOT / "overlay" / "cosmos_predict2" / "portable"
MODELS = {"2B": 16, "14B": 40}
SEQS = {37440: "480p-93f", 84480: "720p-93f", 4080: "t2i-768x1360"}
HEAD_DIM = 128
BACK_TO_BACK = 20  # calls per event pair for the elementwise ops' throughput rows ("impl@x20")


# This benchmark runs from the checkout before any patched tree exists, so it loads the overlay's portable package
# (device layer included) by path: the device is still that layer's decision, never a check of its own here.
def load_portable(name: str = "cosmos_portable_bench"):
    spec = importlib.util.spec_from_file_location(
        name, PORTABLE_DIR / "__init__.py", submodule_search_locations=[str(PORTABLE_DIR)]
    )
    pkg = importlib.util.module_from_spec(spec)
    sys.modules[name] = pkg
    spec.loader.exec_module(pkg)
    for sub in ("device", "attention", "rope", "rmsnorm", "optim"):
        setattr(pkg, sub, importlib.import_module(f"{name}.{sub}"))
    return pkg


class Timer:
    def __init__(self, dev: torch.device, budget_s: float):
        self.dev = dev
        self.budget_s = budget_s

    def _once(self, fn) -> float:
        if self.dev.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3

    def median_ms(self, fn, warmup: int = 3, max_reps: int = 20, calls: int = 1) -> float:
        """Median ms per call. calls > 1 times that many back-to-back calls between one pair of events, so a
        short kernel is measured without the host cost of one call in front of an idle GPU."""
        one = fn if calls == 1 else (lambda: [fn() for _ in range(calls)])
        for _ in range(warmup):
            one()
        first = self._once(one)
        reps = max(3, min(max_reps, int(self.budget_s * 1e3 / max(first, 1e-3))))
        return statistics.median([first] + [self._once(one) for _ in range(reps - 1)]) / calls


ROWS: list[dict] = []


def emit(**row) -> None:
    ROWS.append(row)
    print(json.dumps(row), flush=True)


def randn(*shape, dev, dtype=torch.bfloat16, requires_grad=False):
    return torch.randn(*shape, device=dev, dtype=dtype, requires_grad=requires_grad)


# ------------------------------------------------------------------------------------------------- roofs


def bench_copy(t: Timer, dev, tiny: bool) -> None:
    n = (1 << 20) if tiny else (1 << 29)  # 1 GiB of bf16 on GPU
    x = randn(n, dev=dev)
    y = torch.empty_like(x)
    ms = t.median_ms(lambda: y.copy_(x))
    emit(bench="copy", impl="copy_", bytes=2 * x.numel() * 2, ms=ms, GBps=2 * x.numel() * 2 / ms / 1e6)


def bench_matmul(t: Timer, dev, tiny: bool) -> None:
    n = 256 if tiny else 8192
    a, b = randn(n, n, dev=dev), randn(n, n, dev=dev)
    ms = t.median_ms(lambda: a @ b)
    emit(bench="matmul", impl="bf16", n=n, ms=ms, TFLOPs=2 * n**3 / ms / 1e9)


# ------------------------------------------------------------------------------------------------- elementwise


def cosmos_freqs(S: int, dev) -> torch.Tensor:
    inv = 1.0 / (10000 ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.float32, device=dev) / HEAD_DIM))
    half = torch.outer(torch.arange(S, dtype=torch.float32, device=dev), inv)
    return torch.cat([half, half], dim=-1)[:, None, None, :].contiguous()


def anchor_rope(t: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """The Ascend adaptation's RoPE: cos/sin recomputed each call, cast to bf16, bf16 multiply (bshd)."""
    f = freqs[: t.shape[1]].transpose(0, 1)
    cos, sin = torch.cos(f).to(t.dtype), torch.sin(f).to(t.dtype)
    x1, x2 = t.chunk(2, dim=-1)
    return t * cos + torch.cat((-x2, x1), dim=-1) * sin


def bench_rope(pkg, t: Timer, dev, shapes) -> None:
    for model, H, S in shapes:
        x = randn(1, S, H, HEAD_DIM, dev=dev)
        freqs = cosmos_freqs(S, dev)
        nbytes = 2 * x.numel() * x.element_size()
        impls = {
            # one freqs tensor per forward pass, reused by 2 calls x all blocks: the cache is warm after call 1
            "ours": lambda: pkg.rope.apply_rotary_pos_emb(x, freqs, tensor_format="bshd", fused=True),
            "anchor_eager": lambda: anchor_rope(x, freqs),
        }
        for impl, fn in impls.items():
            for calls in (1, BACK_TO_BACK):  # one call per timing (host cost included), then kernel throughput
                ms = t.median_ms(fn, calls=calls)
                emit(bench="rope", model=model, S=S, H=H, impl=impl if calls == 1 else f"{impl}@x{calls}",
                     calls_per_timing=calls, ms=ms, GBps=nbytes / ms / 1e6)


def bench_rmsnorm(pkg, t: Timer, dev, shapes) -> None:
    for model, H, S in shapes:
        x = randn(1, S, H, HEAD_DIM, dev=dev)
        w = (1 + 0.1 * randn(HEAD_DIM, dev=dev)).requires_grad_(False)
        nbytes = 2 * x.numel() * x.element_size()
        impls = {
            "ours": lambda: pkg.rmsnorm.rms_norm(x, w, 1e-6),
            "eager": lambda: pkg.rmsnorm.rms_norm_reference(x, w, 1e-6),
        }
        for impl, fn in impls.items():
            for calls in (1, BACK_TO_BACK):  # one call per timing (host cost included), then kernel throughput
                ms = t.median_ms(fn, calls=calls)
                emit(bench="rmsnorm", model=model, S=S, H=H, impl=impl if calls == 1 else f"{impl}@x{calls}",
                     calls_per_timing=calls, ms=ms, GBps=nbytes / ms / 1e6)


# ------------------------------------------------------------------------------------------------- attention


def bench_attention(pkg, t: Timer, dev, shapes, backward: bool) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    pinned = {"sdpa_cudnn": SDPBackend.CUDNN_ATTENTION, "sdpa_flash": SDPBackend.FLASH_ATTENTION,
              "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION}
    for model, H, S in shapes:
        D = HEAD_DIM
        q, k, v = (randn(1, S, H, D, dev=dev, requires_grad=backward) for _ in range(3))
        gout = randn(1, S, H, D, dev=dev)
        flops = 4 * H * S * S * D
        auto = None
        if dev.type in ("cuda", "cpu"):
            p = pkg.attention.AttnParams(1 / math.sqrt(D), False, 0.0, False)
            auto = pkg.attention.select_backend(q, k, v, p)

        def ours():
            return pkg.attention.attention(q, k, v)

        impls = {f"ours[{auto}]": ours}
        for name, backend in pinned.items():
            if dev.type != "cuda":
                emit(bench="attention", model=model, S=S, H=H, impl=name, skipped="needs CUDA")
                continue

            def run(backend=backend):
                with sdpa_kernel(backend):
                    out = torch.nn.functional.scaled_dot_product_attention(
                        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
                    )
                return out.transpose(1, 2)

            impls[name] = run
        if dev.type == "cuda" and "flash_cute" in pkg.attention.BACKENDS:  # FlashAttention-4 CuTe, if installed
            fa4 = pkg.attention.BACKENDS["flash_cute"]
            pf = pkg.attention.AttnParams(1 / math.sqrt(D), False, 0.0, False)
            why = fa4.supports(q, k, v, pf)
            if why:
                emit(bench="attention", model=model, S=S, H=H, impl="flash_cute", skipped=why)
            else:
                impls["flash_cute"] = lambda fa4=fa4, pf=pf: fa4.run(q, k, v, pf)
        for impl, fn in impls.items():
            try:
                ms = t.median_ms(fn, warmup=2, max_reps=10)
                emit(bench="attention", mode="fwd", model=model, S=S, H=H, impl=impl, ms=ms,
                     TFLOPs=flops / ms / 1e9)
                if backward:
                    ms = t.median_ms(lambda fn=fn: fn().backward(gout), warmup=2, max_reps=10)
                    emit(bench="attention", mode="fwd+bwd", model=model, S=S, H=H, impl=impl, ms=ms,
                         TFLOPs=3.5 * flops / ms / 1e9)
            except RuntimeError as exc:  # a pinned kernel that cannot run this shape
                emit(bench="attention", model=model, S=S, H=H, impl=impl, skipped=str(exc).splitlines()[0][:160])
        del q, k, v, gout
        if dev.type == "cuda":
            torch.cuda.empty_cache()


def bench_fa4_fwd_tiles(pkg, t: Timer, dev, configs: list[str], shapes) -> None:
    """FA4's forward under each candidate configuration (COSMOS_FLASH_CUTE_FWD_TILE syntax), side by side with its
    own default, at non-causal Cosmos shapes; every output is compared with the default's (same math, another
    tiling: differences at bf16 rounding). The last row names the fastest."""
    fc = pkg.flash_cute
    if dev.type != "cuda" or fc.import_error():
        emit(bench="fa4_fwd_tile", impl="flash_cute", skipped=fc.import_error() or "needs CUDA")
        return
    fwd = fc._interface()._flash_attn_fwd
    for model, H, S in shapes:
        D = HEAD_DIM
        q, k, v = (randn(1, S, H, D, dev=dev) for _ in range(3))
        flops = 4 * H * S * S * D
        scale = 1 / math.sqrt(D)
        ref = fwd(q, k, v, softmax_scale=scale, causal=False, return_lse=True)[0]
        best = None
        for cfg in ["default", *configs]:
            kw = {} if cfg == "default" else fc.parse_fwd_config(cfg, "--fa4-fwd-tiles")
            try:
                out = fwd(q, k, v, softmax_scale=scale, causal=False, return_lse=True, **kw)[0]
                diff = (out.float() - ref.float()).abs().max().item()
                ms = t.median_ms(lambda kw=kw: fwd(q, k, v, softmax_scale=scale, causal=False, return_lse=True,
                                                   **kw), warmup=2, max_reps=10)
            except Exception as exc:  # a configuration the kernel cannot build (registers, shared memory)
                emit(bench="fa4_fwd_tile", model=model, S=S, H=H, impl=cfg,
                     skipped=f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}")
                continue
            emit(bench="fa4_fwd_tile", model=model, S=S, H=H, impl=cfg, ms=ms, TFLOPs=flops / ms / 1e9,
                 max_abs_diff_vs_default=diff)
            if diff < 0.05 and (best is None or ms < best[1]):
                best = (cfg, ms)
        if best:
            emit(bench="fa4_fwd_tile_best", model=model, S=S, H=H, impl=best[0], ms=best[1],
                 TFLOPs=flops / best[1] / 1e9)
        del q, k, v, ref
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------- optimizer


def bench_optim(pkg, t: Timer, dev, tiny: bool) -> None:
    """One optimizer step over bf16 params (a 2B-model shard on 8 ranks is ~250M params), ms per step.
    ours = FusedAdam with fp32 masters (ours_masters_fused: its fused=True kernel, CUDA); anchor = torch
    AdamW(foreach) directly on bf16 params (no masters, loses small updates); fp32_fused = torch AdamW(fused) on
    fp32 params (a speed reference without bf16 params)."""
    n_tensors, numel = (4, 1 << 16) if tiny else (16, 1 << 24)
    total = n_tensors * numel

    def params(dtype):
        ps = [torch.nn.Parameter(0.02 * randn(numel, dev=dev, dtype=dtype)) for _ in range(n_tensors)]
        for p in ps:
            p.grad = randn(numel, dev=dev, dtype=dtype)
        return ps

    impls = {
        "ours_masters": lambda: pkg.optim.FusedAdam(params(torch.bfloat16), lr=1e-4, betas=(0.9, 0.99),
                                                    weight_decay=0.1, master_weights=True, capturable=True),
        "anchor_adamw_bf16": lambda: torch.optim.AdamW(params(torch.bfloat16), lr=1e-4, betas=(0.9, 0.99),
                                                       weight_decay=0.1, foreach=True),
    }
    if dev.type == "cuda":
        # ours with torch's fused AdamW kernel on the fp32 masters (fused=True; COSMOS_FUSED_ADAM=1 in training)
        impls["ours_masters_fused"] = lambda: pkg.optim.FusedAdam(params(torch.bfloat16), lr=1e-4, betas=(0.9, 0.99),
                                                                  weight_decay=0.1, master_weights=True, fused=True)
        impls["fp32_fused_adamw"] = lambda: torch.optim.AdamW(params(torch.float32), lr=1e-4, betas=(0.9, 0.99),
                                                              weight_decay=0.1, fused=True)
    for impl, make in impls.items():
        opt = make()
        ms = t.median_ms(opt.step, warmup=2, max_reps=10)
        emit(bench="optim", impl=impl, params=total, ms=ms, GBps=total * 30 / ms / 1e6)  # ~30 B/param (apex)
        del opt
        if dev.type == "cuda":
            torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------- main


def table() -> None:
    print("# ---- summary ----")
    for r in ROWS:
        what = r["bench"] + (f"/{r['mode']}" if "mode" in r else "")
        shape = f"{r.get('model', '')} S={r['S']}" if "S" in r else (f"{r['params']:,} p" if "params" in r else "")
        if "skipped" in r:
            val = f"skipped: {r['skipped']}"
        elif "GBps" in r:
            val = f"{r['GBps']:9.1f} GB/s   {r['ms']:9.3f} ms"
        else:
            val = f"{r['TFLOPs']:9.1f} TFLOP/s {r['ms']:9.3f} ms"
        print(f"# {what:<20} {shape:<16} {r['impl']:<22} {val}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny shapes (CPU smoke run)")
    ap.add_argument("--only", default="copy,matmul,rope,rmsnorm,attention,optim")
    ap.add_argument("--models", default="2B,14B")
    ap.add_argument("--seqs", default="4080,37440,84480")
    ap.add_argument("--no-backward", action="store_true")
    ap.add_argument("--budget-s", type=float, default=1.0, help="time per measurement (sets repetitions)")
    ap.add_argument("--fa4-fwd-tiles", default="",
                    help="';'-separated FA4 forward configurations to time against FA4's default (with --only "
                         "fa4_tiles), e.g. '128x176;128x160,rs=0'")
    args = ap.parse_args(argv)

    pkg = load_portable()
    dev = pkg.device.get_device()
    if dev.type == "cpu" and not args.tiny:
        print("error: full-size benchmarks need a GPU (bench_ops.py). Run with --tiny on CPU.", file=sys.stderr)
        return 2
    torch.manual_seed(int(time.time()))
    only = set(args.only.split(","))
    if args.tiny:
        shapes = [("tiny", 2, 256), ("tiny", 4, 512)]
    else:
        shapes = [(m, MODELS[m], int(s)) for m in args.models.split(",") for s in args.seqs.split(",")]
    t = Timer(dev, args.budget_s)
    info = dict(bench="env", device=str(dev), torch=torch.__version__, device_type=pkg.device.DEVICE_TYPE)
    if dev.type == "cuda":
        info.update(name=torch.cuda.get_device_name(dev), cc=".".join(map(str, torch.cuda.get_device_capability(dev))))
    print(json.dumps(info), flush=True)
    if "copy" in only:
        bench_copy(t, dev, args.tiny)
    if "matmul" in only:
        bench_matmul(t, dev, args.tiny)
    if "rope" in only:
        bench_rope(pkg, t, dev, shapes)
    if "rmsnorm" in only:
        bench_rmsnorm(pkg, t, dev, shapes)
    if "attention" in only:
        bench_attention(pkg, t, dev, shapes, backward=not args.no_backward)
    if "optim" in only:
        bench_optim(pkg, t, dev, args.tiny)
    if "fa4_tiles" in only:
        bench_fa4_fwd_tiles(pkg, t, dev, [c for c in args.fa4_fwd_tiles.split(";") if c.strip()], shapes)
    table()
    return 0


if __name__ == "__main__":
    sys.exit(main())
