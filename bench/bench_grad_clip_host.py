#!/usr/bin/env python3
"""Host time of GradClip's choice of gradients and of the EMA update's pairing per step: the module walks upstream
ran at every step against portable/param_sets.py's kept lists (patches grad-clip-keeps-its-parameter-walk and
ema-update-keeps-its-parameter-walk). CPU only; it times Python, not kernels.

Run from the root of a patched tree:

    python /path/to/bench/bench_grad_clip_host.py [--reps 200]

The model is the Text2Image 2B model's module tree: upstream's MiniTrainDIT with the 2B net's layout (28 blocks,
adaLN-LoRA, RoPE 3D) as the net plus a second one as the EMA net, at 64 channels instead of 2048. The walks'
cost depends on the number of modules and parameters, not on their sizes. Every net parameter has a gradient.
Prints one JSON line: ms per call for the walks and for the kept lists (GradClip's, then the EMA update's two
walks: the net and the EMA net), the module and parameter counts, and whether both chose the same parameters.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=200)
    a = ap.parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_dit

    if not bench_dit.require_host_tree("bench_grad_clip_host.py", "cosmos_predict2/portable/param_sets.py"):
        return 2
    import torch

    from cosmos_predict2.portable import param_sets

    class Pipe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.dit = bench_dit.build_net("cpu", True, None, "t2i", blocks=28)[0]
            self.dit_ema = bench_dit.build_net("cpu", True, None, "t2i", blocks=28)[0].requires_grad_(False)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.pipe = Pipe()

    model = Model()
    net = model.pipe.dit
    for p in net.parameters():
        p.grad = torch.zeros_like(p)

    def walks():  # upstream GradClip's choice, every step
        params = [p for p in net.parameters() if p.grad is not None]
        if len(params) != sum(p.grad is not None for p in model.parameters()):
            return None
        return params

    def kept():
        return param_sets.net_grad_params(model, net)

    def per_call_ms(fn) -> float:
        return bench_dit.host_ms(fn, a.reps)

    ema_net = model.pipe.dit_ema

    def ema_walks():  # upstream's EMA update, every step: zip(ema.parameters(), net.parameters())
        return list(ema_net.parameters()), list(net.parameters())

    def ema_kept():
        return param_sets.parameters(ema_net), param_sets.parameters(net)

    same = [id(p) for p in walks()] == [id(p) for p in kept()]
    same = same and [list(map(id, x)) for x in ema_walks()] == [list(map(id, x)) for x in ema_kept()]
    row = dict(bench="grad_clip_host", cpu=platform.processor() or platform.machine(), torch=torch.__version__,
               modules=sum(1 for _ in model.modules()), net_params=sum(1 for _ in net.parameters()),
               model_params=sum(1 for _ in model.parameters()), reps=a.reps,
               walks_ms=round(per_call_ms(walks), 4), kept_ms=round(per_call_ms(kept), 4), same_params=same)
    row["saved_ms"] = round(row["walks_ms"] - row["kept_ms"], 4)
    row.update(ema_walks_ms=round(per_call_ms(ema_walks), 4), ema_kept_ms=round(per_call_ms(ema_kept), 4))
    print(json.dumps(row))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
