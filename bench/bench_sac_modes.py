#!/usr/bin/env python3
"""What each activation-checkpointing mode keeps and recomputes, measured on the CPU, and what that means for the
real 2B Video2World step at 720p.

Run from the root of a patched tree:

    python /path/to/bench/bench_sac_modes.py [--modes predict2_2b_720,attention_only,...] [--channels 256]

Upstream's 2B Video2World net config (its blocks, MLP ratio, adaLN-LoRA, cross-attention over 512 text tokens) at
`--channels` D instead of 2048 (head size 128 as in the 2B), bf16, one forward and backward per run under two
counting dispatch modes: one holds a weak reference to every storage an op makes and so knows the bytes alive at the
forward's end (on the CPU no allocator keeps statistics), the other is torch's FlopCounterMode (FLOPs actually run, the
recomputation included). Runs at 1 and 2 blocks and at 2 token counts separate what a block keeps per token from
the rest (embedders, final layer, the text tokens' keys and values):

- saved_d: D-wide values per token and block alive at the end of the forward (bf16 units: 2 bytes each);
- backward_extra_d: what the backward holds on top of that at its peak, per token, without the parameters'
  gradients (a block's recomputation and the activation gradients; the same at 2 and at 28 blocks);
- matmul_flops_d2: FLOPs of forward+backward per token and block in units of D^2 (2 per multiply-add; the
  recomputed matmuls show here: the block's matmuls hold 14 D^2 weights, so forward+backward alone is 3 x 28 = 84);
- with --full-depth 28: the same bytes counted on the whole 28-block net (forward end and peak, D-wide values per
  token) beside 28 x saved_d + the rest + backward_extra_d;
- grads_equal: every gradient equals the first mode's bit for bit (checkpointing must not change the numbers).

For the real step (D 2048, 28 blocks, 93 frames at 704x1280 = 84480 tokens) each row adds the activations kept at
the forward's end and at the backward's peak (28 x saved_d + the rest + backward_extra_d; GiB), the extra matmul
TFLOPs against the first mode, and train.sh's peak estimate (scripts/memory_estimate.py, CP 1, one device). Prints
one JSON line per mode, then a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

GIB = 1024 ** 3
REAL = dict(channels=2048, blocks=28, tokens=84480)  # 2B Video2World, 93 frames at 704x1280
DEFAULT_MODES = "predict2_2b_720,attention_only,linear_selfattn,mm_only,none"


def live_bytes_mode():
    import torch
    from torch.multiprocessing.reductions import StorageWeakRef
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class LiveBytes(TorchDispatchMode):
        """Bytes of the storages made by ops inside it and still alive, with each one's first and last op."""

        def __init__(self):
            super().__init__()
            self.refs: dict = {}  # storage address -> (weak ref, bytes, record index)
            self.records: list = []  # [bytes, op made, op after which it was gone or None, address]
            self.ops = 0

        def live(self) -> int:
            for key in [k for k, (ref, _, _) in self.refs.items() if ref.expired()]:
                self.records[self.refs.pop(key)[2]][2] = self.ops  # gone: a freed address may come back
            return sum(n for _, n, _ in self.refs.values())

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.ops += 1
            self.live()
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    s = t.untyped_storage()
                    if s._cdata not in self.refs:
                        self.refs[s._cdata] = (StorageWeakRef(s), s.nbytes(), len(self.records))
                        self.records.append([s.nbytes(), self.ops, None, s._cdata])
            return out

        def peak_without(self, addresses: set) -> int:
            """The largest sum of bytes alive after any op, leaving out the storages still alive at these
            addresses (the parameters' gradients: what a block keeps is the question, not the gradients)."""
            events = []
            for n, made, gone, addr in self.records:
                if gone is None and addr in addresses:
                    continue
                events.append((made, n))
                if gone is not None:
                    events.append((gone, -n))
            events.sort(key=lambda e: (e[0], e[1]))  # at one op, frees first
            peak = cur = 0
            for _, n in events:
                cur += n
                peak = max(peak, cur)
            return peak

    return LiveBytes()


def run_once(mode: str, channels: int, blocks: int, width: int, dtype):
    """One forward+backward: (bytes at the forward's end, peak bytes without the parameters' gradients, FLOPs,
    tokens, {name: grad})."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import bench_dit

    net, _ = bench_dit.build_net("cpu", False, mode, blocks=blocks, dtype=dtype, channels=channels)
    x, kw, target, tokens = bench_dit.inputs("cpu", "720", False, dtype=dtype, latent=(4, 16, width))

    def step():
        (net(x, **kw).float() - target.float()).square().mean().backward()

    # two passes: under FlopCounterMode (its module tracking) the counted backward peak grew with every block, tensors
    # kept alive that a plain run frees, so the bytes are counted in a run without it
    live = live_bytes_mode()
    with live:
        out = net(x, **kw)
        loss = (out.float() - target.float()).square().mean()
        after_forward = live.live()
        del out
        loss.backward()
    peak = live.peak_without({p.grad.untyped_storage()._cdata for p in net.parameters() if p.grad is not None})
    grads = {n.replace("_checkpoint_wrapped_module.", ""): p.grad.clone() for n, p in net.named_parameters()
             if p.grad is not None}  # named as without checkpointing, so every mode compares
    net.zero_grad(set_to_none=True)
    flops = FlopCounterMode(display=False)
    with flops:
        step()
    return after_forward, peak, flops.get_total_flops(), tokens, grads


def measure(mode: str, channels: int, dtype, full_depth: int = 0) -> dict:
    depths = (1, 2) + ((full_depth,) if full_depth else ())
    runs = {(b, w): run_once(mode, channels, b, w, dtype) for b in depths for w in (16, 32)}
    dt = runs[1, 32][3] - runs[1, 16][3]

    def per_token(idx, b):  # slope over tokens at b blocks
        return (runs[b, 32][idx] - runs[b, 16][idx]) / dt

    def split(idx, unit):  # (per block, outside the blocks) per token, in `unit`
        one, two = per_token(idx, 1), per_token(idx, 2)
        return (two - one) / unit, (one - (two - one)) / unit

    d_bytes = 2 * channels  # a D-wide bf16 value
    saved, saved_out = split(0, d_bytes)
    backward_extra = (per_token(1, 2) - per_token(0, 2)) / d_bytes
    flops_block, _ = split(2, channels * channels)
    row = dict(mode=mode, saved_d=round(saved, 3), saved_d_outside_blocks=round(saved_out, 3),
               backward_extra_d=round(backward_extra, 3), matmul_flops_d2=round(flops_block, 2), grads=runs[2, 32][4])
    if full_depth:  # the whole net at once: does the 2-block split add up?
        row[f"forward_end_d_at_{full_depth}_blocks"] = round(per_token(0, full_depth) / d_bytes, 2)
        row[f"peak_d_at_{full_depth}_blocks"] = round(per_token(1, full_depth) / d_bytes, 2)
        row["peak_d_predicted"] = round(full_depth * saved + saved_out + backward_extra, 2)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modes", default=DEFAULT_MODES, help=f"comma-separated (default {DEFAULT_MODES})")
    ap.add_argument("--channels", type=int, default=256, help="model channels D (a multiple of 128; default 256)")
    ap.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    ap.add_argument("--full-depth", type=int, default=0, metavar="BLOCKS",
                    help="also run the net with BLOCKS blocks (e.g. 28) and report its forward-end and peak bytes per "
                         "token beside what the 2-block split predicts (slower: about 25 s per mode at 256 channels)")
    a = ap.parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_dit

    if not bench_dit.require_host_tree("bench_sac_modes.py", "cosmos_predict2/portable/sac.py"):
        return 2
    if a.channels < 128 or a.channels % 128:
        print(f"error: --channels {a.channels} is not a multiple of 128 (bench_sac_modes.py). Use 128, 256, ...",
              file=sys.stderr)
        return 2
    import warnings

    import torch

    with warnings.catch_warnings():  # upstream's imports warn (megatron, flash-attn): keep stderr for errors
        warnings.simplefilter("ignore")
        from cosmos_predict2.models.text2image_dit import CheckpointMode

    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    known = [str(m) for m in CheckpointMode if str(m) != "block_wise"]
    unknown = [m for m in modes if m not in known]
    if unknown:
        print(f"error: unknown checkpointing mode {unknown[0]!r} (bench_sac_modes.py --modes). Known in this tree: "
              f"{', '.join(known)}", file=sys.stderr)
        return 2
    import importlib.util

    spec = importlib.util.spec_from_file_location("memory_estimate", os.path.join("scripts", "memory_estimate.py"))
    mem = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mem)

    dtype = getattr(torch, a.dtype)
    rows, first = [], None
    for mode in modes:
        r = measure(mode, a.channels, dtype, a.full_depth)
        grads = r.pop("grads")
        if first is None:
            first_mode, first, first_flops = mode, grads, r["matmul_flops_d2"]
        same = grads.keys() == first.keys() and all(torch.equal(grads[k], first[k]) for k in grads)
        unit = REAL["channels"] * REAL["blocks"] * REAL["tokens"]
        r.update(grads_equal_to=first_mode, grads_equal=same,
                 real_2b_720p_saved_gib=round(r["saved_d"] * 2 * unit / GIB, 1),
                 real_2b_720p_peak_activations_gib=round((r["saved_d"] * REAL["blocks"] + r["saved_d_outside_blocks"]
                                                          + r["backward_extra_d"]) * 2 * unit / REAL["blocks"] / GIB,
                                                         1),
                 real_2b_720p_extra_matmul_tflop=round((r["matmul_flops_d2"] - first_flops) * REAL["channels"]
                                                       * unit / 1e12, 1),
                 train_sh_estimate_gib=(round(mem.estimate("video2world", "2B", mode=mode).gib, 1)
                                        if mode in mem.ACT_D else None),
                 bench="sac_modes", channels=a.channels, dtype=a.dtype, torch=torch.__version__,
                 cpu=platform.processor() or platform.machine())
        rows.append(r)
        print(json.dumps(r), flush=True)
    print(f"# {'mode':16} {'saved D/token/block':>19} {'matmul D^2':>10} {'bwd extra':>9} {'720p saved GiB':>14} "
          f"{'720p peak act.':>14} {'extra TFLOP':>11} {'train.sh est.':>13} grads")
    for r in rows:
        est = f"{r['train_sh_estimate_gib']:.1f}" if r["train_sh_estimate_gib"] is not None else "-"
        print(f"# {r['mode']:16} {r['saved_d']:19.2f} {r['matmul_flops_d2']:10.1f} {r['backward_extra_d']:9.2f} "
              f"{r['real_2b_720p_saved_gib']:14.1f} {r['real_2b_720p_peak_activations_gib']:14.1f} "
              f"{r['real_2b_720p_extra_matmul_tflop']:11.1f} {est:>13} {'equal' if r['grads_equal'] else 'DIFFER'}")
    return 0 if all(r["grads_equal"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
