"""torchrun worker (2 ranks, gloo, fp32): the video DiT under context parallel 2 equals the same DiT on one rank.

Each rank builds the smoke Video2World DiT with the same seed (identical weights) and the same inputs, computes
the full forward/backward without CP (the reference), then enables CP on a 2-rank group, feeds its half of the
latent frames, and gathers: outputs, loss and all-reduced gradients must equal the reference. Finally it makes
the attention ops ignore the CP group (what an op that returns early from set_context_parallel_group does) and
records how far that output is off. Rank 0 prints one JSON line.
"""

import json
import sys

import torch
import torch.distributed as dist


def main() -> int:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    assert world == 2
    from megatron.core import parallel_state  # noqa: F401  (import order as in training)

    from cosmos_predict2.configs.base.config import make_config
    from cosmos_predict2.module.a2a_cp import MinimalA2AAttnOp
    from imaginaire.lazy_config import instantiate
    from imaginaire.utils.config_helper import override

    exp = sys.argv[1]
    cfg = override(make_config(), ["--", f"experiment={exp}"])
    torch.manual_seed(0)
    net = instantiate(cfg.model.config.pipe_config.net).float()
    T, HW = 4, 8
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, T, HW, HW, generator=g)
    t = torch.rand(1, 1, generator=g)
    emb = torch.randn(1, 12, 1024, generator=g)
    cond = torch.zeros(1, 1, T, HW, HW)
    cond[:, :, :1] = 1
    fps = torch.tensor([16.0])
    pad = torch.zeros(1, 1, HW * 8, HW * 8)
    target = torch.randn(1, 16, T, HW, HW, generator=g)

    def run(xs, conds, tgt):
        net.zero_grad(set_to_none=True)
        out = net(xs, t, emb, condition_video_input_mask_B_C_T_H_W=conds, fps=fps, padding_mask=pad)
        loss_part = ((out - tgt) ** 2).sum() / target.numel()
        loss_part.backward()
        return out.detach(), loss_part.detach(), {n: p.grad.detach().clone() for n, p in net.named_parameters()
                                                  if p.grad is not None}

    ref_out, ref_loss, ref_grads = run(x, cond, target)

    group = dist.new_group([0, 1])
    sl = slice(rank * T // 2, (rank + 1) * T // 2)

    def cp_run():
        net.enable_context_parallel(group)
        out, loss_part, grads = run(x[:, :, sl], cond[:, :, sl], target[:, :, sl])
        parts = [torch.empty_like(out) for _ in range(world)]
        dist.all_gather(parts, out.contiguous())
        full = torch.cat(parts, dim=2)
        dist.all_reduce(loss_part)
        for v in grads.values():
            dist.all_reduce(v)
        return full, loss_part, grads

    cp_out, cp_loss, cp_grads = cp_run()
    grad_err = max(((cp_grads[n] - g_).abs().max() / (g_.abs().max() + 1e-12)).item() for n, g_ in ref_grads.items())

    # An attention op that ignores the CP group (returns early from set_context_parallel_group, as the anchor's
    # "torch" backend does) attends only within its own frames.
    MinimalA2AAttnOp.set_context_parallel_group = lambda self, *args, **kwargs: setattr(self, "pg", None)
    bad_out, _, _ = cp_run()

    if rank == 0:
        print(json.dumps({
            "out_max_abs_err": (cp_out - ref_out).abs().max().item(),
            "out_scale": ref_out.abs().max().item(),
            "loss_ref": ref_loss.item(), "loss_cp": cp_loss.item(),
            "grad_max_rel_err": grad_err,
            "ignoring_op_max_abs_err": (bad_out - ref_out).abs().max().item(),
        }))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
