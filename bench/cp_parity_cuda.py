#!/usr/bin/env python3
"""torchrun worker (2 GPUs, NCCL, bf16): the real 2B Video2World DiT under context parallel 2 equals CP=1.

    cd TREE && torchrun --nproc_per_node=2 /path/to/bench/cp_parity_cuda.py [--frames 8] [--res 480]

Each rank builds the 2B DiT from upstream's experiment config with the same seed (identical weights, built on the
CPU, moved to its GPU in bf16) and the same inputs, runs forward+backward without CP (the reference), then enables
CP on the 2-rank NCCL group, feeds its half of the latent frames, gathers the outputs and all-reduces the
gradients. Reported: relative L2 errors ||cp - ref|| / ||ref|| of output and gradients (bf16: expect ~1e-3..1e-2),
and, as a negative control, the error when the attention ignores the CP group (must be far larger).
Rank 0 prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.distributed as dist

EXP = "predict2_video2world_training_2b_cosmos_nemo_assets"
RES = {"480": (60, 104), "720": (88, 160), "tiny": (8, 8)}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / (b.float().norm() + 1e-12))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=8, help="latent frames (even)")
    ap.add_argument("--res", default="480", choices=sorted(RES))
    ap.add_argument("--exp", default=EXP)
    ap.add_argument("--cpu", action="store_true",
                    help="self-check of this script on CPU/gloo (use with --exp <smoke experiment> --res tiny)")
    args = ap.parse_args(argv)
    sys.path.insert(0, os.getcwd())
    dist.init_process_group("gloo" if args.cpu else "nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    if world != 2:
        print(f"error: cp_parity_cuda.py needs 2 ranks, got {world}. Run with torchrun --nproc_per_node=2.",
              file=sys.stderr)
        return 2
    if args.cpu:
        dev = torch.device("cpu")
    else:
        torch.cuda.set_device(rank)
        dev = torch.device("cuda", rank)
    from megatron.core import parallel_state  # noqa: F401  (import order as in training)

    from cosmos_predict2.configs.base.config import make_config
    from cosmos_predict2.module.a2a_cp import MinimalA2AAttnOp
    from imaginaire.lazy_config import instantiate
    from imaginaire.utils.config_helper import override

    cfg = override(make_config(), ["--", f"experiment={args.exp}"])
    torch.manual_seed(0)
    with torch.device(dev):
        net = instantiate(cfg.model.config.pipe_config.net)
    net = net.to(dev, torch.bfloat16).train()
    for p_ in list(net.parameters()) + list(net.buffers()):  # identical weights on both ranks, whatever the RNG did
        dist.broadcast(p_.data, 0)
    T, (H, W) = args.frames, RES[args.res]
    g = torch.Generator().manual_seed(1)
    bf = dict(device=dev, dtype=torch.bfloat16)
    x = torch.randn(1, 16, T, H, W, generator=g).to(**bf)
    t = torch.rand(1, 1, generator=g).to(**bf)
    emb = torch.randn(1, 512, 1024, generator=g).to(**bf)
    cond = torch.zeros(1, 1, T, H, W, **bf)
    cond[:, :, :1] = 1
    fps = torch.tensor([16.0], device=dev)
    pad = torch.zeros(1, 1, H * 8, W * 8, **bf)
    target = torch.randn(1, 16, T, H, W, generator=g).to(**bf)

    def run(xs, conds, tgt):
        net.zero_grad(set_to_none=True)
        out = net(xs, t, emb, condition_video_input_mask_B_C_T_H_W=conds, fps=fps, padding_mask=pad)
        loss_part = ((out.float() - tgt.float()) ** 2).sum() / target.numel()
        loss_part.backward()
        return out.detach(), loss_part.detach(), {n: p.grad.detach().float() for n, p in net.named_parameters()
                                                  if p.grad is not None}

    ref_out, ref_loss, ref_grads = run(x, cond, target)
    ref_grads = {n: v.cpu() for n, v in ref_grads.items()}
    group = dist.new_group([0, 1])
    sl = slice(rank * T // 2, (rank + 1) * T // 2)

    def cp_run():
        net.enable_context_parallel(group)
        out, loss_part, grads = run(x[:, :, sl], cond[:, :, sl], target[:, :, sl])
        parts = [torch.empty_like(out) for _ in range(world)]
        dist.all_gather(parts, out.contiguous())
        dist.all_reduce(loss_part)
        for v in grads.values():
            dist.all_reduce(v)
        net.disable_context_parallel()
        return torch.cat(parts, dim=2), loss_part, grads

    cp_out, cp_loss, cp_grads = cp_run()
    grad_rel = max(rel(cp_grads[n].cpu(), g_) for n, g_ in ref_grads.items())
    grad_rel_total = rel(torch.cat([cp_grads[n].cpu().flatten() for n in ref_grads]),
                         torch.cat([g_.flatten() for g_ in ref_grads.values()]))
    del cp_grads
    MinimalA2AAttnOp.set_context_parallel_group = lambda self, *a, **k: setattr(self, "pg", None)
    bad_out, _, _ = cp_run()
    if rank == 0:
        print(json.dumps(dict(
            bench="cp_parity", exp=args.exp, S=T * (H // 2) * (W // 2), frames=T, res=args.res,
            name=torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", torch=torch.__version__,
            nccl=".".join(map(str, torch.cuda.nccl.version())) if dev.type == "cuda" else None,
            out_rel_l2=rel(cp_out, ref_out), loss_ref=float(ref_loss), loss_cp=float(cp_loss),
            grad_rel_l2_max_param=grad_rel, grad_rel_l2_all=grad_rel_total,
            ignoring_cp_out_rel_l2=rel(bad_out, ref_out))), flush=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
