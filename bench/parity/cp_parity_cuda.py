#!/usr/bin/env python3
"""torchrun worker (2 GPUs, NCCL): the real 2B Video2World DiT under context parallel 2 equals CP=1, fp32 and bf16.

    cd TREE && torchrun --nproc_per_node=2 /path/to/bench/parity/cp_parity_cuda.py [--frames 8] [--res 480]

Each rank builds the 2B DiT from upstream's experiment config (weights broadcast from rank 0) and the same inputs,
runs forward+backward without CP (the reference), then enables CP on the 2-rank NCCL group, feeds its half of the
latent frames, gathers the outputs and all-reduces the gradients; once in fp32 (TF32 off: the sharp check, expect
<~1e-5) and once in bf16 from the same fp32 weights. Reported: relative L2 errors ||cp - ref|| / ||ref|| of output
and gradients; the bf16 noise floor (bf16 CP=1 against fp32 CP=1); and, as a negative control, the error when the
attention ignores the CP group (must be far larger). Rank 0 prints one JSON line (bf16 at the top level, fp32
under "fp32"). The device and the process-group backend are the tree's device layer's decision; --cpu forces
CPU/gloo (COSMOS_DEVICE=cpu).
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
    if args.cpu:
        os.environ["COSMOS_DEVICE"] = "cpu"  # before the device layer's one detection, which decides all below
    from cosmos_predict2.portable import device as pdev

    if pdev.device_type() == "cpu" and not args.cpu:
        if os.environ.get("RANK", "0") == "0":
            print("error: no GPU for the 2B CP parity check (cp_parity_cuda.py). On CPU run the self-check: --cpu "
                  "--res tiny --exp predict2_video2world_training_2b_cosmos_nemo_assets_smoke.", file=sys.stderr)
        return 2
    dist.init_process_group(pdev.dist_backend())  # nccl on CUDA, gloo on CPU
    rank, world = dist.get_rank(), dist.get_world_size()
    if world != 2:
        print(f"error: cp_parity_cuda.py needs 2 ranks, got {world}. Run with torchrun --nproc_per_node=2.",
              file=sys.stderr)
        return 2
    pdev.set_device(rank)
    dev = pdev.get_device(rank)
    from megatron.core import parallel_state  # noqa: F401  (import order as in training)

    from cosmos_predict2.configs.base.config import make_config
    from cosmos_predict2.module.a2a_cp import MinimalA2AAttnOp
    from imaginaire.lazy_config import instantiate
    from imaginaire.utils.config_helper import override

    cfg = override(make_config(), ["--", f"experiment={args.exp}"])
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 must mean fp32: the fp32 row is the sharp check
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    with torch.device(dev):
        net = instantiate(cfg.model.config.pipe_config.net)
    net = net.to(dev, torch.float32).train()
    for p_ in list(net.parameters()) + list(net.buffers()):  # identical weights on both ranks, whatever the RNG did
        dist.broadcast(p_.data, 0)
    fp32_state = {k: v.clone() for k, v in net.state_dict().items()}
    T, (H, W) = args.frames, RES[args.res]
    g = torch.Generator().manual_seed(1)
    inputs32 = dict(x=torch.randn(1, 16, T, H, W, generator=g), t=torch.rand(1, 1, generator=g),
                    emb=torch.randn(1, 512, 1024, generator=g), target=torch.randn(1, 16, T, H, W, generator=g))
    group = dist.new_group([0, 1])
    sl = slice(rank * T // 2, (rank + 1) * T // 2)
    fps = torch.tensor([16.0], device=dev)

    def measure(dtype, control: bool):
        net.to(torch.float32).load_state_dict(fp32_state)
        net.to(dtype)
        x, t, emb, target = (inputs32[k].to(dev, dtype) for k in ("x", "t", "emb", "target"))
        cond = torch.zeros(1, 1, T, H, W, device=dev, dtype=dtype)
        cond[:, :, :1] = 1
        pad = torch.zeros(1, 1, H * 8, W * 8, device=dev, dtype=dtype)

        def run(xs, conds, tgt):
            net.zero_grad(set_to_none=True)
            out = net(xs, t, emb, condition_video_input_mask_B_C_T_H_W=conds, fps=fps, padding_mask=pad)
            loss_part = ((out.float() - tgt.float()) ** 2).sum() / target.numel()
            loss_part.backward()
            return out.detach(), loss_part.detach(), {n: p.grad.detach().float() for n, p in net.named_parameters()
                                                      if p.grad is not None}

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

        ref_out, ref_loss, ref_grads = run(x, cond, target)
        ref_grads = {n: v.cpu() for n, v in ref_grads.items()}
        cp_out, cp_loss, cp_grads = cp_run()
        row = dict(out_rel_l2=rel(cp_out, ref_out), loss_ref=float(ref_loss), loss_cp=float(cp_loss),
                   grad_rel_l2_max_param=max(rel(cp_grads[n].cpu(), g_) for n, g_ in ref_grads.items()),
                   grad_rel_l2_all=rel(torch.cat([cp_grads[n].cpu().flatten() for n in ref_grads]),
                                       torch.cat([g_.flatten() for g_ in ref_grads.values()])))
        del cp_grads
        if control:  # an attention that ignores the CP group: what a broken CP looks like at this precision
            saved = MinimalA2AAttnOp.set_context_parallel_group
            MinimalA2AAttnOp.set_context_parallel_group = lambda self, *a, **k: setattr(self, "pg", None)
            try:
                row["ignoring_cp_out_rel_l2"] = rel(cp_run()[0], ref_out)
            finally:
                MinimalA2AAttnOp.set_context_parallel_group = saved
        return row, ref_out.float().cpu()

    fp32, ref32 = measure(torch.float32, control=True)
    bf16, ref16 = measure(torch.bfloat16, control=True)
    if rank == 0:
        print(json.dumps(dict(
            bench="cp_parity", exp=args.exp, S=T * (H // 2) * (W // 2), frames=T, res=args.res,
            name=torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type, torch=torch.__version__,
            nccl=".".join(map(str, torch.cuda.nccl.version())) if dev.type == "cuda" else None,
            **bf16, fp32=fp32,
            # the bf16 noise floor: CP=1 in bf16 against CP=1 in fp32, same weights and inputs
            bf16_ref_vs_fp32_ref_rel_l2=rel(ref16, ref32))), flush=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
