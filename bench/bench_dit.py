#!/usr/bin/env python3
"""The real Cosmos-Predict2 2B Video2World DiT (random weights, bf16, one GPU, CP=1): training step and forward pass.

Run from the root of a patched tree (`python -m installer apply ... --target TREE; cd TREE`):

    python /path/to/bench/bench_dit.py --res 480,720 --variants anchor,ours        # fwd+bwd steps
    python /path/to/bench/bench_dit.py --res 720 --variants anchor,ours --fwd      # no-grad forward passes
    python /path/to/bench/bench_dit.py --net t2i --variants ours --optimizer       # Text2Image 2B, + AdamW step
    python /path/to/bench/bench_dit.py --tiny --res 480 --steps 1                  # CPU smoke (2 blocks, 64 ch)

The net is `instantiate(_PREDICT2_VIDEO2WORLD_NET_2B)` from upstream's config (28 blocks, 2048 channels, 16 heads,
SAC mode predict2_2b_720), built on the device, cast to bf16, train mode. Inputs: 93 frames -> 24 latent frames,
480p = 60x104 latents (S = 24*30*52 = 37440 tokens), 720p = 88x160 latents (S = 24*44*80 = 84480), 512 text
tokens of width 1024, first latent frame conditional. Loss = MSE against a random target; one step = forward +
backward (no optimizer: the optimizer is timed end to end through train.sh).

Variants (each rebuilds the net from the same seed):
- anchor: the Ascend adaptation's ops as they run on CUDA: RoPE recomputing cos/sin every call and multiplying
  in bf16, eager RMSNorm (COSMOS_DISABLE_COMPILE=1), and upstream's SAC policy as written (saves ops whose name
  contains "flash_attn", so torch SDPA's attention is recomputed in backward).
- ours: portable RoPE (cached cos/sin, compiled apply) and RMSNorm (compiled), the block's adaLN modulation and
  gated residuals compiled (portable/adaln.py, patch 0035), SAC policy via portable.sac.is_attention_op (the
  attention forward is saved).
- ours_unfused: ours with the adaLN/residual chains eager (upstream's element-wise kernels): the gain of 0035.
- ours_fuseall: ours with the chains fused at any size (adaln.FUSE_MIN_NUMEL = 0; by default small activations,
  e.g. Text2Image's 4080 tokens, run eagerly).
- ours_upsac: our ops with upstream's policy (separates the op gain from the SAC gain).
- ours_nosac: our ops, no activation checkpointing (memory permitting).
- ours_linsa: our ops, upstream's "linear_selfattn" SAC mode (saves every matmul and the attention: less
  recomputation than predict2_2b_720, more memory).
- ours_lean: our ops, the "attention_only" SAC mode (patch sac-attention-only-mode: saves the self-attention output
  only and recomputes every matmul: the least memory, 16 D^2 more FLOPs per token and block than ours).
- <variant>_cb (e.g. ours_cb, ours_nosac_cb): that variant with every DiT block compiled whole (one torch.compile
  graph per block forward and backward, SAC traced with it; portable/block_compile.py, COSMOS_COMPILE_BLOCKS=1).
  The row adds dynamo's counts (graphs, graph breaks, recompiles): a variant that fell back to eager says so.
- <variant>_fa4 (e.g. ours_fa4, ours_linsa_fa4): that variant with FlashAttention-4's CuTe kernels (the optional
  flash_cute attention backend, pip package flash-attn-4) instead of cuDNN's SDPA.
- <variant>_fsdp / <variant>_fsdproot (e.g. ours_cb_fsdp): that variant wrapped in FSDP2 on a mesh of this one device,
  as the trainer wraps it on one GPU (upstream's (replicate, shard) = (1, 1) mesh): `_fsdp` with upstream's units
  (the net's own fully_shard: every block, the final layer and the embedders, then the root), `_fsdproot` with the
  root unit only. Against the plain variant this is what FSDP2 costs a one-GPU step (BENCHMARKS 3h).

--net t2i: the Text2Image 2B net (`_PREDICT2_TEXT2IMAGE_NET_2B`, SAC mode mm_only) on one 768x1360 image (96x170
latents, S = 48*85 = 4080 tokens, the Cosmos-NeMo-Assets experiment's size), data type IMAGE, no conditioning
mask. --optimizer adds the experiment's optimizer step (portable FusedAdam, fp32 master weights, capturable) to
every timed step: the "bare step" train.sh is compared with.

FLOPs (model FLOPs, recomputation not counted): linear FLOPs are counted exactly by forward hooks on every
nn.Linear during one no-grad forward (2 * in * out per row, all rows, incl. text K/V, adaLN, embedder, final
layer); attention adds 4*S*S*D*H per block (self) + 4*S*N_text*D*H (cross). A training step counts 3x the forward.
MFU = model TFLOP/s over the bf16 matmul rate measured in the same process (8192^3, random data).
Prints one JSON object per line, then a table.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import sys
import time

import torch

RES = {"480": (60, 104), "720": (88, 160)}
T2I_LATENT = (96, 170)  # 768x1360, the Text2Image experiments' image size
LATENT_T = 24
N_TEXT = 512
ROWS: list[dict] = []


def emit(**row) -> None:
    ROWS.append(row)
    print(json.dumps(row), flush=True)


def sync(dev) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def matmul_peak(dev) -> float:
    n = 8192
    a, b = torch.randn(n, n, device=dev, dtype=torch.bfloat16), torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(10):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        a @ b
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e))
    return 2 * n**3 / statistics.median(times) / 1e9


def anchor_rope(t: torch.Tensor, freqs: torch.Tensor, tensor_format: str = "sbhd", fused: bool = False, **_):
    """The Ascend adaptation's RoPE: cos/sin from freqs on every call, cast to the input dtype, multiply there."""
    seq = t.shape[0] if tensor_format == "sbhd" else t.shape[1]
    f = freqs[:seq]
    if tensor_format == "bshd":
        f = f.transpose(0, 1)
    cos, sin = torch.cos(f).to(t.dtype), torch.sin(f).to(t.dtype)
    x1, x2 = t.chunk(2, dim=-1)
    return t * cos + torch.cat((-x2, x1), dim=-1) * sin


def upstream_is_attention_op(func) -> bool:
    return "flash_attn" in str(func)  # upstream's rule: never matches torch SDPA's aten ops


_DEFAULT_MIN: dict = {}


def set_variant(variant: str):
    import cosmos_predict2.models.text2image_dit as dit
    from cosmos_predict2.portable import adaln
    from cosmos_predict2.portable.rope import apply_rotary_pos_emb
    from cosmos_predict2.portable.sac import is_attention_op

    # <variant>_cb: that variant with every block compiled whole (portable/block_compile.py, COSMOS_COMPILE_BLOCKS=1)
    if variant.endswith("_cb"):
        os.environ["COSMOS_COMPILE_BLOCKS"] = "1"
        variant = variant[: -len("_cb")]
    else:
        os.environ["COSMOS_COMPILE_BLOCKS"] = "0"
    anchor_ops = variant == "anchor"
    # ours_fa4: ours with FlashAttention-4's CuTe kernels (the optional flash_cute backend) instead of cuDNN
    if variant.endswith("_fa4"):
        os.environ["COSMOS_ATTN_BACKEND"] = "flash_cute"
        variant = variant[: -len("_fa4")]
    else:
        os.environ.pop("COSMOS_ATTN_BACKEND", None)
    os.environ["COSMOS_DISABLE_COMPILE"] = "1" if anchor_ops else "0"
    dit.apply_rotary_pos_emb = anchor_rope if anchor_ops else apply_rotary_pos_emb
    dit.is_attention_op = upstream_is_attention_op if variant in ("anchor", "ours_upsac") else is_attention_op
    adaln.ENABLED = variant not in ("anchor", "ours_unfused")
    _DEFAULT_MIN.setdefault("numel", adaln.FUSE_MIN_NUMEL)
    adaln.FUSE_MIN_NUMEL = 0 if variant == "ours_fuseall" else _DEFAULT_MIN["numel"]
    return {"ours_nosac": "none", "ours_linsa": "linear_selfattn", "ours_lean": "attention_only"}.get(variant)


def require_tree(script: str, marker: str = "cosmos_predict2/portable") -> bool:
    """Whether the working directory is a patched tree (`marker` there); it goes first on sys.path. Else one error
    line naming `script`. Shared by the bench scripts that import the tree."""
    if not os.path.exists(marker):
        print(f"error: run {script} from the root of a patched tree ({marker} not found). "
              "Build one with `python -m installer apply --target TREE`.", file=sys.stderr)
        return False
    sys.path.insert(0, os.getcwd())
    return True


def require_host_tree(script: str, marker: str) -> bool:
    """require_tree for the host-work benches (bench_grad_clip_host.py, bench_adam_host.py, bench_sac_policy.py):
    they time Python on the CPU, also on a GPU machine (gpu_suite.sh stage host), so the device layer is forced to
    the CPU before the tree is imported."""
    os.environ["COSMOS_DEVICE"] = "cpu"
    return require_tree(script, marker)


def host_ms(fn, reps: int, warmup: bool = True) -> float:
    """Milliseconds per call of `fn` over `reps` calls (after one untimed call unless warmup=False): the host-work
    benches' timer."""
    if warmup:
        fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps * 1e3


def build_net(dev, tiny: bool, sac_mode: str | None, net: str = "v2w", blocks: int | None = None,
              dtype: torch.dtype = torch.bfloat16, channels: int | None = None):
    """Upstream's 2B net config (tiny: 64 channels, 2 blocks, 4 heads; `blocks` overrides the count, `channels` the
    width at the 2B's head size of 128), built on `dev` in `dtype` (bf16 unless a CPU caller passes the compute-dtype
    policy's), train mode: (net, cfg)."""
    from imaginaire.lazy_config import instantiate

    if net == "t2i":
        from cosmos_predict2.configs.base.config_text2image import _PREDICT2_TEXT2IMAGE_NET_2B as NET
    else:
        from cosmos_predict2.configs.base.config_video2world import _PREDICT2_VIDEO2WORLD_NET_2B as NET
    cfg = copy.deepcopy(NET)
    if sac_mode:
        if "sac_config" not in cfg:
            from cosmos_predict2.networks.selective_activation_checkpoint import SACConfig

            cfg.sac_config = SACConfig()
        cfg.sac_config.mode = sac_mode
    if tiny:
        cfg.model_channels, cfg.num_blocks, cfg.num_heads = 64, 2, 4
    if blocks:
        cfg.num_blocks = blocks
    if channels:
        cfg.model_channels, cfg.num_heads = channels, max(1, channels // 128)
    torch.manual_seed(0)
    with torch.device(dev):
        net = instantiate(cfg)
    return net.to(device=dev, dtype=dtype).train(), cfg


def inputs(dev, res: str, tiny: bool, net: str = "v2w", dtype: torch.dtype = torch.bfloat16,
           latent: tuple[int, int, int] | None = None):
    """(x, the net's keyword inputs, target, tokens); `latent` = (T, H, W) overrides the latent size."""
    if latent:
        t, h, w = latent
    else:
        h, w = (4, 8) if tiny else (T2I_LATENT if net == "t2i" else RES[res])
        t = 1 if net == "t2i" else (4 if tiny else LATENT_T)
    g = torch.Generator(device="cpu").manual_seed(1)
    bf = dict(dtype=dtype)
    x = torch.randn(1, 16, t, h, w, generator=g).to(dev, **bf)
    kw = dict(
        timesteps_B_T=torch.rand(1, 1, generator=g).to(dev, **bf),
        crossattn_emb=torch.randn(1, N_TEXT, 1024, generator=g).to(dev, **bf),
        fps=torch.tensor([16.0], device=dev),
        padding_mask=torch.zeros(1, 1, h * 8, w * 8, device=dev, **bf),
    )
    if net == "t2i":
        from cosmos_predict2.conditioner import DataType

        kw["data_type"] = DataType.IMAGE
    else:
        cond = torch.zeros(1, 1, t, h, w, device=dev, **bf)
        cond[:, :, :1] = 1
        kw["condition_video_input_mask_B_C_T_H_W"] = cond
    target = torch.randn(1, 16, t, h, w, generator=g).to(dev, **bf)
    return x, kw, target, t * (h // 2) * (w // 2)


def count_flops(net, x, kw, S: int, heads: int, head_dim: int, blocks: int) -> dict:
    linear = [0]

    def hook(mod, args, out):
        linear[0] += 2 * mod.in_features * mod.out_features * (args[0].numel() // mod.in_features)

    hs = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, torch.nn.Linear)]
    try:
        with torch.no_grad():
            net(x, **kw)
    finally:
        for h in hs:
            h.remove()
    attn = blocks * (4 * S * S * head_dim * heads + 4 * S * N_TEXT * head_dim * heads)
    return {"fwd_linear_flops": linear[0], "fwd_attn_flops": attn, "fwd_flops": linear[0] + attn}


def dynamo_counts() -> dict:
    """torch._dynamo's running totals: graphs compiled and graph breaks (by reason)."""
    try:
        from torch._dynamo.utils import counters
    except Exception:  # noqa: BLE001 (a torch without dynamo)
        return {}
    return {"graphs": int(counters["stats"].get("unique_graphs", 0)),
            "graph_breaks": {str(k)[:160]: int(v) for k, v in counters["graph_break"].items()}}


def one_device_mesh(dev):
    """Upstream's FSDP mesh on one device, (replicate, shard) = (1, 1), with a one-process group if none is up."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from cosmos_predict2.portable import device as pdev

    if not dist.is_initialized():
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        dist.init_process_group(pdev.dist_backend(), init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    return init_device_mesh(dev.type, (1, 1), mesh_dim_names=("replicate", "shard"))


def wrap_fsdp(net, dev, units: str):
    """FSDP2 on one device: units="blocks" as the trainer (the net's own per-module units, then the root), "root"
    with the root unit only."""
    from torch.distributed.fsdp import fully_shard

    mesh = one_device_mesh(dev)
    if units == "blocks":
        net.fully_shard(mesh=mesh)
    return fully_shard(net, mesh=mesh, reshard_after_forward=True)


def run_variant(args, dev, res, variant, peak_tflops, flops_cache):
    fsdp = next((u for sfx, u in (("_fsdproot", "root"), ("_fsdp", "blocks")) if variant.endswith(sfx)), None)
    base = variant[: variant.rindex("_fsdp")] if fsdp else variant
    sac = set_variant(base)
    net, cfg = build_net(dev, args.tiny, sac, args.net)
    x, kw, target, S = inputs(dev, res, args.tiny, args.net)
    heads, D = cfg.num_heads, cfg.model_channels // cfg.num_heads
    if res not in flops_cache:
        flops_cache[res] = count_flops(net, x, kw, S, heads, D, cfg.num_blocks)
    fl = flops_cache[res]
    if fsdp:
        net = wrap_fsdp(net, dev, fsdp)
    mode = "fwd" if args.fwd else ("fwd+bwd+opt" if args.optimizer else "fwd+bwd")
    if args.trainer_work and args.optimizer and not args.fwd:
        mode += "+clip+ema"
    opt = None
    if args.optimizer and not args.fwd:
        from cosmos_predict2.portable.optim import FusedAdam

        opt = FusedAdam([p for p in net.parameters() if p.requires_grad], lr=2**-15, weight_decay=0.1,
                        betas=(0.9, 0.99), eps=1e-8, master_weights=True, capturable=True)
    clip_ema = None
    if args.trainer_work and opt is not None:
        # The trainer's own per-step work on the same net, with the tree's code: GradClip (clip_grad_norm_local, max
        # norm 1, upstream's nan_to_num guard) before the step, the EMA update (FastEmaModelUpdater, fp32 EMA) after
        # (on a CUDA side stream with COSMOS_EMA_OVERLAP=1, patch 0049).
        from cosmos_predict2.portable.shards import LateFiniteClip, clip_grad_norm_local
        from cosmos_predict2.portable import ema_overlap
        from imaginaire.utils.ema import FastEmaModelUpdater

        ema_params = [p.detach().float().clone() for p in net.parameters()]
        clip_ema = argparse.Namespace(clip=clip_grad_norm_local, late=LateFiniteClip(), checks=[],
                                      ema=FastEmaModelUpdater(), overlap=ema_overlap,
                                      ema_net=argparse.Namespace(parameters=lambda: iter(ema_params)))

    # Device time between the phases' launch points (CUDA events, no sync inside the step): where a step's time goes,
    # idle waits for the host included. One list of marks per timed step; empty off CUDA.
    marks: list = []

    def mark(name):
        if dev.type == "cuda" and timing[0]:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            marks[-1].append((name, ev))

    timing = [False]

    def step():
        if args.fwd:
            with torch.no_grad():
                return net(x, **kw).float().pow(2).mean()
        if timing[0]:
            marks.append([])
        mark("start")
        net.zero_grad(set_to_none=True)
        if clip_ema is not None and clip_ema.late.settles_next_step():
            clip_ema.late.settle()  # as GradClip: the last step's check at this step's start, before the forward
        out = net(x, **kw)
        loss = (out.float() - target.float()).pow(2).mean()
        mark("fwd")
        if clip_ema is not None:
            clip_ema.overlap.wait()  # as the model's training_step: the last EMA update before backward and step
        loss.backward()
        mark("bwd")
        if clip_ema is not None:
            # as GradClip (patch 0052): the finite check after the step's launch where the optimizer can skip on
            # the device (COSMOS_CLIP_LATE_CHECK=0: before the step)
            grads = [p.grad for p in net.parameters() if p.grad is not None]
            late = clip_ema.late.clip(grads, 1.0, opt) is not None
            if not late:
                clip_ema.clip(grads, 1.0, True)
            clip_ema.checks.append("after the step" if late else "before the step")
            mark("clip")
        if opt is not None:
            opt.step()
            mark("opt")
        if clip_ema is not None:
            if not clip_ema.late.settles_next_step():  # COSMOS_CLIP_SETTLE_NEXT_STEP=0: before the EMA update
                clip_ema.late.settle()
            clip_ema.ema.update_average(net, clip_ema.ema_net, beta=0.9999)  # skips on the device flag if pending
            mark("ema")
        return loss.detach()

    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    from cosmos_predict2.portable.block_compile import is_compiled
    from cosmos_predict2.portable.gc_policy import Schedule

    dyn0 = dynamo_counts()
    collector = Schedule(args.gc_every)  # train.sh's garbage-collection policy, for a like-for-like bare step
    collector.start()
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        loss = step()
    sync(dev)
    warm_s = time.perf_counter() - t0
    times = []
    timing[0] = True
    for i in range(args.steps):
        t0 = time.perf_counter()
        loss = step()
        collector.after_step(i + 1)
        sync(dev)
        times.append(time.perf_counter() - t0)
    timing[0] = False
    collector.stop()
    phase_ms = {}
    for ms in marks:
        for (_, a), (name, b) in zip(ms, ms[1:]):
            phase_ms.setdefault(name, []).append(a.elapsed_time(b))
    phase_ms = {k: round(statistics.median(v), 3) for k, v in phase_ms.items()}
    dyn1 = dynamo_counts()
    compiled = dict(compiled_blocks=sum(is_compiled(b) for b in net.blocks),
                    dynamo_graphs=dyn1.get("graphs", 0) - dyn0.get("graphs", 0),
                    dynamo_graph_breaks={k: v - dyn0.get("graph_breaks", {}).get(k, 0)
                                         for k, v in dyn1.get("graph_breaks", {}).items()
                                         if v != dyn0.get("graph_breaks", {}).get(k, 0)})
    step_s = statistics.median(times)
    flops = fl["fwd_flops"] * (1 if args.fwd else 3)
    tflops = flops / step_s / 1e12
    fused_adam = None if opt is None else bool(opt.uses_fused_kernel(dev))
    work = {}
    if clip_ema is not None:  # which path the EMA update took: the kernel, or why not
        from cosmos_predict2.portable import lerp_kernel
        from cosmos_predict2.portable.shards import local_shard

        srcs = [local_shard(p) for p in net.parameters()]
        work = dict(ema_kernel=lerp_kernel.why_not(ema_params, srcs) or "on", ema_kernel_stats=dict(lerp_kernel.STATS),
                    clip_check=sorted(set(clip_ema.checks)))
    row = dict(bench="dit", mode=mode, res=res, S=S, variant=variant, gc_every=args.gc_every, fused_adam=fused_adam, step_s=step_s,
               phase_ms=phase_ms, **work,
               step_s_all=[round(t, 4) for t in times], warmup_s=warm_s, tokens_per_s=S / step_s,
               model_tflops=tflops, mfu=tflops / peak_tflops if peak_tflops else None,
               peak_mem_gib=torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None,
               loss=float(loss), finite=bool(torch.isfinite(loss)), flops_per_step=flops, **compiled, **fl)
    emit(**row)
    if args.profile:
        profile_step(step, dev, res, variant, step_s, args.profile_trace, args.profile_steps)
    del net, x, kw, target, opt, clip_ema
    gc.collect()


# Kernel-name patterns of each category (first match wins). CUDA kernel names; on CPU the aten op names.
KERNEL_CATEGORIES = (
    ("attention", ("fmha", "flash", "attn", "sdpa", "scaled_dot_product", "cudnn_generated_fort_native_sdpa")),
    ("nccl", ("nccl",)),
    ("gemm", ("gemm", "nvjet", "cutlass", "xmma", "sm90_", "cublas", "aten::mm", "aten::addmm", "aten::bmm")),
    ("compiled_elementwise", ("triton",)),
)


def kernel_category(name: str) -> str:
    low = name.lower()
    for cat, keys in KERNEL_CATEGORIES:
        if any(k in low for k in keys):
            return cat
    return "other_elementwise"


def profile_step(step, dev, res, variant, step_s, trace_path=None, n_steps=1) -> None:
    """n_steps more steps under torch.profiler: device time per kernel category, and the steps' idle share (the
    part of the wall time when no kernel ran: host-bound gaps). Printed as one JSON row (bench=dit_profile). With
    trace_path, also a Chrome trace with one ProfilerStep#N range per step, like train.sh --profile_steps writes,
    so that bench/trace_gaps.py --compare can set the bare step beside train.sh's."""
    from torch.profiler import ProfilerAction, ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    sync(dev)
    # a schedule that always records: without one, torch writes no ProfilerStep#N ranges
    with profile(activities=acts, schedule=lambda _s: ProfilerAction.RECORD) as prof:
        t0 = time.perf_counter()
        for i in range(n_steps):
            step()
            if i + 1 < n_steps:
                prof.step()  # the next ProfilerStep# range; the step's kernels may end in it (no sync between)
        sync(dev)
        wall = (time.perf_counter() - t0) / n_steps
    if trace_path:
        prof.export_chrome_trace(trace_path)
    want = torch.autograd.DeviceType.CUDA if dev.type == "cuda" else torch.autograd.DeviceType.CPU
    cats: dict = {}
    top = []
    for evt in prof.key_averages():
        if evt.device_type != want or (dev.type == "cpu" and not evt.key.startswith("aten::")):
            continue
        us = getattr(evt, "self_device_time_total", None) if dev.type == "cuda" else evt.self_cpu_time_total
        if us is None:
            us = getattr(evt, "self_cuda_time_total", 0)
        if us <= 0:
            continue
        cat = kernel_category(evt.key)
        cats[cat] = cats.get(cat, 0.0) + us / 1e3 / n_steps  # per step
        top.append((us / 1e3 / n_steps, evt.key[:90], cat, evt.count / n_steps))
    busy = sum(cats.values())
    top.sort(reverse=True)
    emit(bench="dit_profile", res=res, variant=variant, profiled_steps=n_steps, wall_s=wall, timed_step_s=step_s,
         kernel_ms=busy, idle_share=max(0.0, 1 - busy / 1e3 / wall) if dev.type == "cuda" else None,
         category_ms={k: round(v, 2) for k, v in sorted(cats.items(), key=lambda kv: -kv[1])},
         category_share={k: round(v / busy, 4) for k, v in cats.items()} if busy else {},
         top_kernels=[dict(ms=round(ms, 2), name=n, cat=c, calls=k) for ms, n, c, k in top[:15]])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--res", default="480,720")
    ap.add_argument("--variants", default="anchor,ours")
    ap.add_argument("--fwd", action="store_true", help="no-grad forward passes (inference) instead of training steps")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--tiny", action="store_true", help="2-block 64-channel net, tiny latents (CPU smoke run)")
    ap.add_argument("--net", choices=("v2w", "t2i"), default="v2w",
                    help="Video2World 2B (default) or Text2Image 2B on one 768x1360 image")
    ap.add_argument("--optimizer", action="store_true",
                    help="add the experiments' optimizer step (FusedAdam, fp32 master weights) to each timed step")
    ap.add_argument("--trainer-work", action="store_true",
                    help="with --optimizer: add the trainer's intrinsic per-step work, GradClip before the step and "
                         "the EMA update after it (the tree's own code), to split train.sh's excess into that work "
                         "and the rest")
    ap.add_argument("--gc-every", type=int, default=0,
                    help="train.sh's garbage-collection policy: automatic GC off, a full collection every N steps "
                         "(0: Python's automatic GC, as a plain script runs)")
    ap.add_argument("--profile", action="store_true",
                    help="after timing, profile one more step: device time per kernel category (bench=dit_profile)")
    ap.add_argument("--profile-steps", type=int, default=1, help="with --profile: how many steps (default 1)")
    ap.add_argument("--profile-trace", default=None,
                    help="with --profile: write the profiled steps' Chrome trace here (bench/trace_gaps.py reads it)")
    args = ap.parse_args(argv)
    if not require_tree("bench_dit.py"):
        return 2
    from cosmos_predict2.portable import device as pdev

    dev = pdev.get_device()
    if dev.type == "cpu" and not args.tiny:
        print("error: the 2B DiT benchmark needs a GPU (bench_dit.py). Use --tiny on CPU.", file=sys.stderr)
        return 2
    info = dict(bench="env", device=str(dev), torch=torch.__version__)
    if dev.type == "cuda":
        info.update(name=torch.cuda.get_device_name(dev), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(), attn_backend=os.environ.get("COSMOS_ATTN_BACKEND", "auto"))
        info["matmul_bf16_tflops"] = matmul_peak(dev)
    print(json.dumps(info), flush=True)
    peak = info.get("matmul_bf16_tflops")
    flops_cache: dict = {}
    for res in ["t2i"] if args.net == "t2i" else args.res.split(","):
        for variant in args.variants.split(","):
            try:
                run_variant(args, dev, res, variant, peak, flops_cache)
            except torch.OutOfMemoryError as exc:
                emit(bench="dit", mode="fwd" if args.fwd else "fwd+bwd", res=res, variant=variant,
                     skipped="OOM: " + str(exc).splitlines()[0][:200])
                gc.collect()
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
    print(f"# ---- summary ({info.get('name', dev)}, bf16 matmul {peak or 0:.0f} TFLOP/s) ----")
    for r in ROWS:
        if r.get("bench") == "dit_profile":
            cats = " ".join(f"{k} {100 * v:.1f}%" for k, v in r["category_share"].items())
            idle = f"idle {100 * r['idle_share']:.1f}% " if r["idle_share"] is not None else ""
            print(f"# profile  {r['res']:>4} {r['variant']:<11} {idle}{cats}")
        elif "skipped" in r:
            print(f"# {r['mode']:<11} {r['res']:>4} {r['variant']:<12} skipped: {r['skipped'][:90]}")
        else:
            mfu = f"{100 * r['mfu']:5.1f}%" if r["mfu"] else "  n/a"
            mem = f"{r['peak_mem_gib']:6.1f} GiB" if r["peak_mem_gib"] is not None else ""
            print(f"# {r['mode']:<11} {r['res']:>4} {r['variant']:<12} {r['step_s']:8.3f} s  {r['tokens_per_s']:9.0f} tok/s "
                  f"{r['model_tflops']:7.1f} TFLOP/s MFU {mfu} {mem} loss {r['loss']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
