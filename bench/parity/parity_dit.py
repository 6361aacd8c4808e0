#!/usr/bin/env python3
"""Cross-device parity: the smoke Video2World DiT trained for N steps in fp32 on CPU and on CUDA, same seeds.

Run from the root of a patched tree, once per device, then compare the two JSON files:

    COSMOS_DEVICE=cpu python bench/parity/parity_dit.py --init init.pt --out cpu.json   # writes init.pt
    python bench/parity/parity_dit.py --init init.pt --out cuda.json   # on the GPU machine (TF32 off, attention "math")
    python bench/parity/parity_dit.py --compare cpu.json cuda.json --tol 1e-4

What is the same on both sides: the weights (the --init file), every batch, sigma and
the noise (drawn from the CPU generator after reseeding with seed + iteration: portable.determinism's
seed_everything and randn with COSMOS_NOISE_ON_CPU=1), the optimizer (portable.optim.FusedAdam, fp32). On CUDA,
TF32 is switched off for matmuls and cuDNN, and attention is pinned to SDPA's "math" kernel unless --attn says
otherwise (the fused kernels use other summation orders; they are reported separately).

Why not through train.sh: upstream's Video2WorldPipeline.from_config casts the DiT to bf16 whatever
`precision` says, so the trainer cannot run fp32 end to end; this harness runs the same DiT, ops and optimizer
without the trainer. Prints the loss curve as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

EXP = "predict2_video2world_training_2b_cosmos_nemo_assets_smoke"


def run(args) -> dict:
    os.environ["COSMOS_NOISE_ON_CPU"] = "1"
    sys.path.insert(0, os.getcwd())
    if args.attn:
        os.environ["COSMOS_ATTN_BACKEND"] = args.attn
    from megatron.core import parallel_state  # noqa: F401  (import order as in training)

    from cosmos_predict2.configs.base.config import make_config
    from cosmos_predict2.portable import determinism
    from cosmos_predict2.portable import device as pdev
    from cosmos_predict2.portable.optim import FusedAdam
    from imaginaire.lazy_config import instantiate
    from imaginaire.utils.config_helper import override

    dev = pdev.get_device()  # the tree's device layer decides (COSMOS_DEVICE included); nothing here asks torch
    if dev.type == "cuda":
        if not args.attn:  # SDPA's "math" kernel: the fused ones sum in other orders (--attn picks another)
            os.environ["COSMOS_ATTN_BACKEND"] = "math"
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
    cfg = override(make_config(), ["--", f"experiment={EXP}"])
    torch.manual_seed(0)
    net = instantiate(cfg.model.config.pipe_config.net).float()
    if args.init:
        # The initial weights travel as a file: seeded init is not the same across torch versions (the first H200
        # run, torch 2.11, started from other weights than CPU torch 2.13 with the same seed and config).
        if os.path.exists(args.init):
            net.load_state_dict(torch.load(args.init, map_location="cpu"))
        else:
            torch.save(net.state_dict(), args.init)
    net = net.to(dev).train()
    opt = FusedAdam(net.parameters(), lr=args.lr, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    T, H, W = 4, 8, 8
    g = torch.Generator().manual_seed(123)
    data = [torch.randn(1, 16, T, H, W, generator=g) for _ in range(2)]  # a two-clip "dataset"
    emb = [torch.randn(1, 12, 1024, generator=g) for _ in range(2)]
    losses = []
    with torch.no_grad():  # what both sides start from: weights and data (sums in float64)
        start = dict(weights_sum=sum(float(p.double().sum()) for p in net.parameters()),
                     weights_abs=sum(float(p.double().abs().sum()) for p in net.parameters()),
                     data_sum=sum(float(d.double().sum()) for d in data + emb))
    for it in range(args.steps):
        determinism.seed_everything(1000 + it)
        i = int(torch.randint(0, 2, (1,)))
        x0, ctx = data[i].to(dev), emb[i].to(dev)
        sigma = torch.rand(1).to(dev)
        noise = determinism.randn(x0.shape, dev, dtype=torch.float32)
        xt = (1 - sigma) * x0 + sigma * noise  # rectified flow interpolation
        cond = torch.zeros(1, 1, T, H, W, device=dev)
        cond[:, :, :1] = 1
        out = net(xt, sigma.view(1, 1), ctx, condition_video_input_mask_B_C_T_H_W=cond,
                  fps=torch.tensor([16.0], device=dev), padding_mask=torch.zeros(1, 1, H * 8, W * 8, device=dev))
        loss = (out - (noise - x0)).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return dict(bench="parity", device=str(dev), name=torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                torch=torch.__version__, attn=os.environ.get("COSMOS_ATTN_BACKEND", "auto"), steps=args.steps, **start,
                losses=losses)


def compare(a_path: str, b_path: str, tol: float) -> int:
    a, b = (json.load(open(p)) for p in (a_path, b_path))
    rel = [abs(x - y) / max(abs(x), 1e-12) for x, y in zip(a["losses"], b["losses"])]
    ok = len(a["losses"]) == len(b["losses"]) and max(rel) <= tol
    print(json.dumps(dict(bench="parity_compare", a=a["device"], b=b["device"], b_attn=b.get("attn"),
                          steps=len(rel), max_rel=max(rel), tol=tol, ok=ok, rel=rel)))
    return 0 if ok else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--attn", default=None, help="COSMOS_ATTN_BACKEND (default: math on CUDA, auto on CPU)")
    ap.add_argument("--init", default=None,
                    help="initial weights file: loaded if it exists, else written (carry it to the other device)")
    ap.add_argument("--compare", nargs=2, metavar=("A", "B"))
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args(argv)
    if args.compare:
        return compare(*args.compare, args.tol)
    if not os.path.isdir("cosmos_predict2/portable"):
        print("error: run parity_dit.py from the root of a patched tree (cosmos_predict2/portable not found).",
              file=sys.stderr)
        return 2
    row = run(args)
    print(json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(row, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
