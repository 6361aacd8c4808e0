#!/usr/bin/env python3
"""Host time of FusedAdam.step() on its CUDA kernel path, per step: the parameters' entries looked up at every step
(as before) against kept between steps (FusedAdam.keep_entries). CPU only; it times Python, not kernels.

Run from the root of a patched tree:

    python /path/to/bench/bench_adam_host.py [--reps 100]

The parameters are the Text2Image 2B net's (upstream's config: 28 blocks, 567 parameters, at 64 channels instead of
2048: the host work depends on the number of parameters, not their sizes), bf16 with fp32 masters, each with a
gradient, and each step takes GradClip's scale and skip flag as train.sh's steps do. To time the host work
alone on a machine without a GPU, this bench replaces three functions of portable/adamw_kernel.py: the check that
the tensors are on CUDA (it passes), the upload of the offset tables (they stay on the CPU) and the kernel's
launch (nothing runs). Everything else of step() runs as on a card: the entries, the grouping by dtype, the
kernel's table lookups. Prints one JSON line: ms per step both ways (the better of two runs each, alternated), how
often each looked the entries up per step, and the launches per step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=100)
    a = ap.parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_dit

    if not bench_dit.require_host_tree("bench_adam_host.py", "cosmos_predict2/portable/adamw_kernel.py"):
        return 2
    import torch

    from cosmos_predict2.portable import adamw_kernel, optim

    launched = []  # the launches step() made (not run)
    adamw_kernel._why_unavailable = lambda tensors: None
    adamw_kernel._upload = lambda t, dev: t
    adamw_kernel._launch = lambda launch, dev, variant, fallback: launched.append(launch) or True

    net = bench_dit.build_net("cpu", True, None, "t2i", blocks=28)[0]
    params = list(net.parameters())
    for p in params:
        p.grad = torch.zeros_like(p)
    coef = torch.ones((), dtype=torch.float32)
    found_inf = torch.zeros((), dtype=torch.float32)

    def per_step_ms(keep: bool) -> tuple[float, int]:
        opt = optim.FusedAdam(params, lr=1e-4, master_weights=True, fused=True)
        opt.keep_entries = keep

        def step():
            opt.scale_grads_in_next_step(coef, len(params))
            opt.skip_next_step_if(found_inf)
            opt.step()

        step()
        builds = optim.STATS["entry_builds"]
        launched.clear()
        ms = bench_dit.host_ms(step, a.reps, warmup=False)
        return ms, optim.STATS["entry_builds"] - builds

    # alternated, twice each: host timings drift with the machine's other work
    runs = {True: [], False: []}
    for keep in (False, True, False, True):
        runs[keep].append(per_step_ms(keep))
    lookup_ms = min(r[0] for r in runs[False])
    kept_ms = min(r[0] for r in runs[True])
    row = dict(bench="adam_host", cpu=platform.processor() or platform.machine(), torch=torch.__version__,
               params=len(params), reps=a.reps, lookup_ms=round(lookup_ms, 4), kept_ms=round(kept_ms, 4),
               saved_ms=round(lookup_ms - kept_ms, 4),
               lookups_per_step_lookup=runs[False][0][1] / a.reps, lookups_per_step_kept=runs[True][0][1] / a.reps,
               launches_per_step=len(launched) / a.reps)
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
