#!/usr/bin/env python3
"""Host time of the activation-checkpointing policy's attention test per training step: portable/sac.py's
is_attention_op asked afresh for every op (as before) against its kept answers. CPU only; it times Python.

Run from the root of a patched tree:

    python /path/to/bench/bench_sac_policy.py [--reps 20]

One forward and backward of the Text2Image 2B net (upstream's config: 28 blocks with its checkpointing policy, at
64 channels instead of 2048, bf16, bench_dit.py's tiny input; eager blocks, as on NPU, on CPU and in Video2World by default) records every op the
policies ask about, in order; then both ways answer that stream. Prints one JSON line: the ops asked per step, ms
per step both ways, and whether both gave the same answers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=20)
    a = ap.parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_dit

    if not bench_dit.require_host_tree("bench_sac_policy.py", "cosmos_predict2/portable/sac.py"):
        return 2
    import torch

    from cosmos_predict2.models import text2image_dit
    from cosmos_predict2.networks import selective_activation_checkpoint as sac_net
    from cosmos_predict2.portable import sac

    asked = []

    def recording(func):
        asked.append(func)
        return sac.is_attention_op(func)

    for mod in (text2image_dit, sac_net):  # the policies call the name they imported
        mod.is_attention_op = recording
    net, cfg = bench_dit.build_net("cpu", True, None, "t2i", blocks=28)
    mode = str(getattr(getattr(cfg, "sac_config", None), "mode", None))
    x, kw, target, _ = bench_dit.inputs("cpu", "t2i", True, "t2i")
    (net(x, **kw).float() - target.float()).square().mean().backward()
    if not asked:
        print(f"error: no checkpointing policy ran (sac mode {mode}) (bench_sac_policy.py). "
              "Check the net config's sac_config.", file=sys.stderr)
        return 1

    def afresh():
        return [sac._is_attention_name(str(f)) for f in asked]

    def kept():
        return [sac.is_attention_op(f) for f in asked]

    def per_step_ms(fn) -> float:
        return bench_dit.host_ms(fn, a.reps)

    same = afresh() == kept()
    row = dict(bench="sac_policy", cpu=platform.processor() or platform.machine(), torch=torch.__version__,
               sac_mode=mode, blocks=cfg.num_blocks, ops_asked_per_step=len(asked),
               distinct_ops=len(set(map(str, asked))), attention_ops_per_step=sum(kept()), reps=a.reps,
               afresh_ms=round(per_step_ms(afresh), 4), kept_ms=round(per_step_ms(kept), 4), same_answers=same)
    row["saved_ms"] = round(row["afresh_ms"] - row["kept_ms"], 4)
    print(json.dumps(row))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
