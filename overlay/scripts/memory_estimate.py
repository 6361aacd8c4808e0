"""Peak device memory per rank of a training run, estimated from the config before torchrun starts (no torch).

    peak = max(forward end, optimizer step) + overhead, per rank:
      forward end    = 18 B/param / S  +  activations
      optimizer step = 20 B/param / S
      activations    = c(mode) x 2 B x D x blocks x tokens / CP

- Parameters P: counted from upstream's nets (instantiated on the meta device; tests/launcher/test_memory_estimate.py
  checks the table against the applied tree). 2B: D=2048, 28 blocks, 16 heads; 14B: D=5120, 36 blocks, 40 heads.
- State per parameter (upstream's trainer: bf16 net, FusedAdam with master_weights=True, EMA in fp32): bf16 param 2
  + fp32 master 4 + Adam moments 2 x 4 + fp32 EMA 4 = 18 B at the end of the forward (grads are freed by
  zero_grad), + bf16 grad 2 = 20 B at the optimizer step. FSDP shards all of it over S = min(fsdp_shard_size,
  world size) ranks: upstream's mesh is (world // S, S) over ALL ranks, the context-parallel ones included.
- Tokens per sample: latent frames (N - 1) / 4 + 1 (video; 1 for images) x (H / 16) x (W / 16) (VAE 8x spatial,
  patch 2), x batch size; context parallel splits them over CP ranks.
- c(mode): saved activations per token per block in units of D bf16 values, for the SAC mode in
  `model.config.pipe_config.net.sac_config.mode` (video2world default predict2_2b_720 / predict2_14b_720, the
  same policy in code; text2image default mm_only).

Calibration (one H200 unless said otherwise, torch 2.11; BENCHMARKS.md sections 2, 3, 3b, 3w; bench/results/):
- c for predict2_*_720 (with our attention-saving policy), linear_selfattn and none: the bare DiT step of
  `bench/bench_dit.py` (2B, bf16, no optimizer state) at 480p (S=37440) and 720p (S=84480): ours 47.4 / 102.1 GiB,
  ours_linsa 59.0 / 128.3 GiB, ours_nosac 121.1 GiB (480p). A linear fit gives an intercept of 3.86 GiB (the bf16
  params, 3.64 GiB) and c = 10.89 / 13.8 / 29.3. These points are used for the fit: errors below 1 %.
- overhead 1.2 GiB (VAE, conditioning, latents, FSDP root params): fitted to the train.sh 2B Video2World 720p/93
  frames CP=1 run, 132.3 GiB peak allocated (estimate 132.3, error 0 % by construction); the latent-cache run
  measured 131.8 GiB (estimate error +0.4 %).
- c for mm_only: fitted to the train.sh 2B Text2Image 768x1360 run, 39.9 GiB peak allocated (error 0 % by
  construction).
- c for attention_only (patch sac-attention-only-mode; saves the self-attention output only): fitted as above, on
  one H100 (2026-12-05, BENCHMARKS.md 3w): bench_dit's ours_lean at 480p / 720p, 16.0 / 31.5 GiB, gives c = 3.07
  (intercept 3.75 GiB). The train.sh 2B Video2World 720p CP=1 runs with it peaked at 61.0 GiB (latent cache) and
  61.5 GiB (VAE on the fly): estimate 61.7 GiB, +0.4 % against the second. The CPU derivation before the card
  (predict2's 10.89 less the 8.0 values it no longer keeps plus 8.0 / 28 for the recomputed block, from
  bench/bench_sac_modes.py's exact byte counts) gave 3.18, 3.5 % high.
- Checkpointing modes not in ACT_D count as "none". block_wise is not offered: upstream's SACConfig returns no
  context_fn for it, and torch's checkpoint wrapper then fails (TypeError: 'NoneType' object is not callable).
- NOT measured: any 14B training run, any CP > 1 peak (the CP=2 run's peak was lost to a metrics bug, BENCHMARKS.md
  section 3), any sharded (world > 1) peak, 480p trainer runs. Those are extrapolations of the same formula (the
  per-D scaling of the activations and the 1/S state sharding are assumptions); expect them to be off by more than
  the calibration points, conservatively 10-15 %.
- The allocator reserves more than it allocates: 137.8 GiB reserved for the 132.3 GiB allocated (x 1.04).
  So train.sh refuses to start above LIMIT_FRACTION (0.97) of the card and only warns above WARN_FRACTION (0.92):
  the measured 2B 720p CP=1 run (94 % of a 140.4 GiB H200) does start, with a warning.
"""

from __future__ import annotations

from typing import NamedTuple

GIB = 1024 ** 3
LIMIT_FRACTION = 0.97
WARN_FRACTION = 0.92
OVERHEAD_GIB = 1.23
BYTES_FORWARD = 18  # bf16 param + fp32 master + 2 fp32 Adam moments + fp32 EMA
BYTES_OPTIMIZER = 20  # + bf16 grad

# Upstream's nets: (parameters, channels D, blocks, heads). Parameter counts from the applied tree's configs.
NETS = {
    ("video2world", "2B"): (1_956_413_440, 2048, 28, 16),
    ("video2world", "14B"): (14_265_285_632, 5120, 36, 40),
    ("text2image", "2B"): (1_956_405_248, 2048, 28, 16),
    ("text2image", "14B"): (14_265_265_152, 5120, 36, 40),
}
DEFAULT_MODE = {"video2world": {"2B": "predict2_2b_720", "14B": "predict2_14b_720"},
                "text2image": {"2B": "mm_only", "14B": "mm_only"}}
# saved activations per token per block, in D bf16 values (see the docstring for where each comes from)
ACT_D = {
    "none": 29.3,
    "linear_selfattn": 13.8,
    "mm_only": 13.4,
    "predict2_2b_720": 10.89,
    "predict2_14b_720": 10.89,
    "attention_only": 3.07,
}
# the working mode that saves the least: suggested when a run does not fit, and named when it is tight
FRUGAL_MODE = {"2B": "attention_only", "14B": "attention_only"}


def frugal_extra_flops(size: str, tokens: int) -> float:
    """Fraction of a step's FLOPs that attention_only adds over predict2_*_720, per token and block: it recomputes
    16 D^2 more matmul FLOPs (bench/bench_sac_modes.py) on a step of 3 x (28 D^2 matmul + 4 S D self-attention)
    plus predict2's own 12 D^2 of recomputation (the cross-attention's 512 text tokens left out)."""
    d = NETS[("video2world", size)][1]
    return 16 * d * d / (3 * (28 * d * d + 4 * tokens * d) + 12 * d * d)


DEFAULT_SIZE = {"video2world": (704, 1280), "text2image": (768, 1360)}


class Estimate(NamedTuple):  # (a NamedTuple: this file is loaded by path, outside sys.modules)
    gib: float
    state_gib: float
    activations_gib: float
    tokens: int


def tokens_per_sample(task: str, frames: int | None, height: int, width: int) -> int:
    lat_t = (frames - 1) // 4 + 1 if task == "video2world" else 1
    return lat_t * (height // 16) * (width // 16)


def estimate(task: str, size: str, *, frames: int | None = 93, height: int | None = None, width: int | None = None,
             cp: int = 1, world: int = 1, fsdp_shard_size: int = 1, batch_size: int = 1, mode: str | None = None,
             every_n_blocks: int = 1) -> Estimate:
    """Peak allocated device memory per rank, GiB."""
    params, d, blocks, _ = NETS[(task, size)]
    height, width = (height, width) if height and width else DEFAULT_SIZE[task]
    mode = mode or DEFAULT_MODE[task][size]
    # upstream: -1 = shard over the whole world, 0 = FSDP off (every rank holds everything), else min(size, world)
    shard = world if fsdp_shard_size == -1 else 1 if fsdp_shard_size == 0 else min(fsdp_shard_size, world)
    tokens = tokens_per_sample(task, frames, height, width) * batch_size
    wrapped = (blocks + every_n_blocks - 1) // every_n_blocks if mode != "none" else 0
    per_block = ACT_D.get(mode, ACT_D["none"])
    act_d = wrapped * per_block + (blocks - wrapped) * ACT_D["none"]
    act = act_d * 2 * d * tokens / cp / GIB
    fwd = BYTES_FORWARD * params / shard / GIB
    opt = BYTES_OPTIMIZER * params / shard / GIB
    return Estimate(max(fwd + act, opt) + OVERHEAD_GIB, fwd, act, tokens)


def divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]


# config keys (the overrides after `--` that change the estimate)
K_MODE = "model.config.pipe_config.net.sac_config.mode"
K_EVERY = "model.config.pipe_config.net.sac_config.every_n_blocks"
K_VIDEO_SIZE = "dataloader_train.dataset.video_size"
K_IMAGE_SIZE = "dataloader_train.dataset.image_size"
ENV_MEMORY = "COSMOS_DEVICE_MEMORY_GIB"


def _size(raw: str | None, task: str) -> tuple[int, int]:
    nums = [int(x) for x in __import__("re").findall(r"\d+", raw or "")]
    return (nums[0], nums[1]) if len(nums) == 2 else DEFAULT_SIZE[task]


def _pow2_worlds(world: int, shard: int):
    w = 2
    while w <= 256:
        if w > world and (w <= shard or w % shard == 0 or shard in (-1, 0)):
            yield w
        w *= 2


def check(exp_name: str, task: str, size: str, *, frames: int | None, cp: int, world: int, fsdp_shard_size: int,
          batch_size: int, ov: dict[str, str], card_gib: float | None, card: str) -> tuple[str, str | None]:
    """(notes line, one-line error or None) for train.sh's preflight."""
    h, w = _size(ov.get(K_VIDEO_SIZE if task == "video2world" else K_IMAGE_SIZE), task)
    mode = ov.get(K_MODE, DEFAULT_MODE[task][size]).strip().strip("'\"")
    every = int(ov[K_EVERY]) if ov.get(K_EVERY, "").strip().isdigit() else 1
    kw = dict(frames=frames, height=h, width=w, batch_size=batch_size, fsdp_shard_size=fsdp_shard_size,
              every_n_blocks=every)
    e = estimate(task, size, cp=cp, world=world, mode=mode, **kw)
    frugal, kw_every1 = FRUGAL_MODE[size], {**kw, "every_n_blocks": 1}
    lean = estimate(task, size, cp=cp, world=world, mode=frugal, **kw_every1)  # the tight note's and the fixes'
    if card_gib is None:
        return (f"memory estimate: ~{e.gib:.0f} GiB per device (card memory unknown: pass --device_memory_gib=M "
                f"or set {ENV_MEMORY}=M to check it)"), None
    limit = LIMIT_FRACTION * card_gib
    line = f"memory estimate: ~{e.gib:.0f} GiB per device (of {card_gib:.0f} GiB on {card})"
    if e.gib <= limit:
        if e.gib > WARN_FRACTION * card_gib:
            line += " - tight, within the estimate's error of the card"
            if mode != frugal:
                extra = frugal_extra_flops(size, tokens_per_sample(task, frames, h, w))
                line += (f"; -- {K_MODE}={frugal} would need ~{lean.gib:.0f} GiB for ~{extra:.0%} more FLOPs (it "
                         f"recomputes every matmul)")
        return line, None
    heads = NETS[(task, size)][3]
    lat = (frames - 1) // 4 + 1 if task == "video2world" and frames else 1
    fixes = []
    for k in divisors(world):  # context parallel with the processes already asked for
        if k > cp and heads % k == 0 and lat % k == 0 and estimate(task, size, cp=k, world=world, mode=mode,
                                                                     **kw).gib <= limit:
            fixes.append(f"context parallel (-- model_parallel.context_parallel_size={k}; K dividing the world "
                         f"size {world}, {heads} heads and {lat} latent frames)")
            break
    else:
        for ww in _pow2_worlds(world, fsdp_shard_size):  # more devices: more CP and more FSDP sharding
            ks = [k for k in divisors(ww) if heads % k == 0 and lat % k == 0
                  and estimate(task, size, cp=k, world=ww, mode=mode, **kw).gib <= limit]
            if ks:
                cp_part = (f" and context parallel (-- model_parallel.context_parallel_size={ks[0]}; K dividing "
                           f"the world size, {heads} heads and {lat} latent frames)" if ks[0] > 1 else
                           " (FSDP shards the optimizer state over them)")
                fixes.append(f"{ww} devices in all (--nproc_per_node x --nnodes = {ww}){cp_part}")
                break
    if (mode, every) != (frugal, 1) and lean.gib <= limit:
        fixes.append(f"the checkpointing mode that saves least (-- {K_MODE}={frugal}"
                     + (f" {K_EVERY}=1" if every != 1 else "") + ")")
    todo = (" or ".join(f"use {f}" for f in fixes) if fixes else "use more devices with context parallel")
    err = (f"error: estimated peak {e.gib:.0f} GiB per device exceeds {LIMIT_FRACTION:.0%} of the {card_gib:.0f} GiB "
           f"on {card} ({exp_name}, context parallel {cp}, world size {world}). "
           f"{todo[0].upper() + todo[1:]}; or pass --skip_memory_check to start anyway.")
    return line, err
