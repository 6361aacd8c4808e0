"""Run inside a patched tree (PYTHONPATH=TREE): the patched DiT Block against upstream's block math written out.

Prints one JSON line per dtype: whether the patched block's output and input gradient are bitwise equal to the
reference (upstream's expressions with the block's own submodules), and the error of a block with scale and shift
swapped (so the comparison is known to see a wrong modulation).
"""

import json
import sys

import torch
from einops import rearrange

from cosmos_predict2.models import text2image_dit as dit


def reference(block, x, emb, ctx, lora, swap=False):
    mods = []
    for seq in (block.adaln_modulation_self_attn, block.adaln_modulation_cross_attn, block.adaln_modulation_mlp):
        shift, scale, gate = (seq(emb) + lora).chunk(3, dim=-1)
        if swap:
            shift, scale = scale, shift
        mods.append([rearrange(t, "b t d -> b t 1 1 d") for t in (shift, scale, gate)])
    B, T, H, W, D = x.shape
    flat = lambda t: rearrange(t, "b t h w d -> b (t h w) d")  # noqa: E731
    unflat = lambda t: rearrange(t, "b (t h w) d -> b t h w d", t=T, h=H, w=W)  # noqa: E731
    (sh1, sc1, g1), (sh2, sc2, g2), (sh3, sc3, g3) = mods
    n = block.layer_norm_self_attn(x) * (1 + sc1) + sh1
    x = x + g1 * unflat(block.self_attn(flat(n), None, rope_emb=None, video_size=dit.VideoSize(T=T, H=H, W=W)))
    n = block.layer_norm_cross_attn(x) * (1 + sc2) + sh2
    x = unflat(block.cross_attn(flat(n), ctx, rope_emb=None)) * g2 + x
    n = block.layer_norm_mlp(x) * (1 + sc3) + sh3
    return x + g3 * block.mlp(n)


def count_calls(module, name, counts):
    real = getattr(module, name)

    def counted(*args, **kwargs):
        counts[name] = counts.get(name, 0) + 1
        return real(*args, **kwargs)

    setattr(module, name, counted)


def main():
    calls: dict = {}
    count_calls(dit.adaln, "modulate", calls)  # the real functions, counted: the block goes through them
    count_calls(dit.adaln, "gated_residual", calls)
    for dtype in (torch.float32, torch.bfloat16):
        torch.manual_seed(3)
        block = dit.Block(64, 32, 4, mlp_ratio=2.0, use_adaln_lora=True, adaln_lora_dim=16,
                          self_attention_backend="minimal_a2a", cross_attention_backend="minimal_a2a")
        with torch.no_grad():  # upstream zero-initialises the gates' projections: random everywhere instead
            for p in block.parameters():
                p.normal_(0, 0.2)
        block = block.to(dtype)
        x = torch.randn(1, 2, 3, 4, 64, dtype=dtype, requires_grad=True)
        emb = torch.randn(1, 2, 64, dtype=dtype)
        lora = torch.randn(1, 2, 192, dtype=dtype)
        ctx = torch.randn(1, 7, 32, dtype=dtype)
        g = torch.randn(1, 2, 3, 4, 64, dtype=dtype)
        calls.clear()
        out = block(x, emb, ctx, None, adaln_lora_B_T_3D=lora)
        hooked = dict(calls)
        (gx,) = torch.autograd.grad(out, x, g)
        ref = reference(block, x, emb, ctx, lora)
        (gref,) = torch.autograd.grad(ref, x, g)
        wrong = reference(block, x, emb, ctx, lora, swap=True)
        print(json.dumps(dict(dtype=str(dtype), calls=hooked, out_equal=torch.equal(out, ref), grad_equal=torch.equal(gx, gref),
                              out_max_abs=float((out - ref).abs().max()),
                              swapped_max_abs=float((out - wrong).abs().max()))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
