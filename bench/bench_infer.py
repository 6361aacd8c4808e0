#!/usr/bin/env python3
"""Seconds per video through upstream's Video2WorldPipeline (2B, 720p, 93 frames), random weights.

Run from the root of a patched tree that holds checkpoints/smoke/tokenizer.pth (random Wan2.1 VAE) and an input
video (any mp4; its first frame conditions the generation):

    python /path/to/bench/bench_infer.py --video datasets/cosmos_nemo_assets/videos/smoke_000.mp4 [--steps 35]

What runs: `Video2WorldPipeline.from_config(_PREDICT2_VIDEO2WORLD_PIPELINE_2B_720P_16FPS, dit_path="")` (random
DiT, guardrail and prompt refiner off: they are separate models, not in NVIDIA's timing either), then
`pipe(input_path, prompt, negative_prompt, guidance=7, num_sampling_step=35)`: VAE encode of the conditioning
frames, 35 sampler steps of two DiT passes (conditional + unconditional), one final pass, VAE decode. The T5
text encoder is replaced by fixed random embeddings [1, 512, 1024] (the 11B T5 is not part of the DiT speed;
NVIDIA's published per-video times are for the diffusion + decode). Segments are timed with CUDA syncs around the
DiT forward and the VAE decode. Prints JSON lines, then a summary.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", required=True)
    ap.add_argument("--steps", type=int, default=35)
    ap.add_argument("--guidance", type=float, default=7.0)
    ap.add_argument("--vae", default="checkpoints/smoke/tokenizer.pth")
    ap.add_argument("--videos", type=int, default=1,
                    help="videos generated one after the other in this process; the first pays the compilation "
                         "(torch.compile of the small ops, attention kernels), the later ones show the steady state")
    args = ap.parse_args(argv)
    sys.path.insert(0, os.getcwd())
    for path, what in ((args.video, "--video"), (args.vae, "--vae")):
        if not os.path.isfile(path):
            print(f"error: {what} {path} not found (bench_infer.py). Run from a patched tree with smoke data.",
                  file=sys.stderr)
            return 2
    from cosmos_predict2.configs.base.config_video2world import _PREDICT2_VIDEO2WORLD_PIPELINE_2B_720P_16FPS
    from cosmos_predict2.pipelines.video2world import Video2WorldPipeline
    from cosmos_predict2.portable import device as pdev

    dev = pdev.get_device()
    if dev.type != "cuda":
        print("error: bench_infer.py times the 2B pipeline on a GPU; none found.", file=sys.stderr)
        return 2
    cfg = copy.deepcopy(_PREDICT2_VIDEO2WORLD_PIPELINE_2B_720P_16FPS)
    cfg.tokenizer.vae_pth = args.vae
    cfg.guardrail_config.enabled = False
    cfg.prompt_refiner_config.enabled = False
    t0 = time.perf_counter()
    pipe = Video2WorldPipeline.from_config(cfg, dit_path="", use_text_encoder=False, device="cuda",
                                           torch_dtype=torch.bfloat16)
    build_s = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(0)
    emb = {p: torch.randn(1, 512, 1024, generator=gen) for p in ("prompt", "negative")}
    pipe.encode_prompt = lambda prompts, max_length=512, return_mask=False: emb[
        "negative" if prompts == "negative" else "prompt"].to(dev)

    seg: dict = {}
    passes: list[float] = []

    def timed(fn, key, count=None):
        def wrapper(*a, **kw):
            torch.cuda.synchronize()
            s = time.perf_counter()
            out = fn(*a, **kw)
            torch.cuda.synchronize()
            dt = time.perf_counter() - s
            seg[key] += dt
            if count:
                seg[count] += 1
                passes.append(dt)
            return out
        return wrapper

    pipe.dit.forward = timed(pipe.dit.forward, "dit_s", "dit_calls")
    pipe.decode = timed(pipe.decode, "decode_s")
    pipe.encode = timed(pipe.encode, "encode_s")
    for index in range(args.videos):
        seg.update(dit_s=0.0, dit_calls=0, decode_s=0.0, encode_s=0.0)
        passes.clear()
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        video = pipe(input_path=args.video, prompt="prompt", negative_prompt="negative", guidance=args.guidance,
                     num_sampling_step=args.steps, seed=0)
        torch.cuda.synchronize()
        total = time.perf_counter() - t0
        steady = sorted(passes[2:] or passes)
        row = dict(bench="infer", model="2B", res="720p", video=index, frames=int(video.shape[2]),
                   shape=list(video.shape), steps=args.steps, guidance=args.guidance, total_s=total, build_s=build_s,
                   **seg, dit_pass_s=seg["dit_s"] / max(seg["dit_calls"], 1), dit_first_passes_s=passes[:2],
                   dit_pass_median_s=steady[len(steady) // 2] if steady else None,
                   finite=bool(torch.isfinite(video).all()),
                   peak_mem_gib=torch.cuda.max_memory_allocated() / 2**30, name=torch.cuda.get_device_name(),
                   torch=torch.__version__, cudnn=torch.backends.cudnn.version(),
                   compile=os.environ.get("COSMOS_DISABLE_COMPILE", "0") != "1",
                   attn_backend=os.environ.get("COSMOS_ATTN_BACKEND", "auto"),
                   fa4_fwd_tile=os.environ.get("COSMOS_FLASH_CUTE_FWD_TILE", ""))
        print(json.dumps(row), flush=True)
        print(f"# infer 2B 720p {row['frames']} frames, {args.steps} steps, guidance {args.guidance}, video {index}: "
              f"{total:.1f} s/video (DiT {seg['dit_s']:.1f} s in {seg['dit_calls']} passes = {row['dit_pass_s']:.2f} "
              f"s/pass, first two {', '.join(f'{x:.2f}' for x in passes[:2])} s, median {row['dit_pass_median_s']:.3f}"
              f" s; VAE decode {seg['decode_s']:.1f} s, encode {seg['encode_s']:.1f} s), peak "
              f"{row['peak_mem_gib']:.1f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
