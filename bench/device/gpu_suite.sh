#!/bin/bash
# One device call = one run of this script with the stages to run, e.g.
#   bash bench/device/gpu_suite.sh env ops setup dit480
# From the checkout root on the GPU machine, with carry [".gpu"]: .gpu/ (git-ignored) holds the upstream sdist,
# the wheels the image lacks (.gpu/whl), real-size and smoke synthetic datasets and the CPU parity files; make it
# with `bash bench/device/prepare_gpu_carry.sh` on the CPU machine. Builds the patched tree with the installer into /tmp/tree. Every JSON result line goes to
# $OUT/results.jsonl, the full log to $OUT/log.txt; a summary is printed last.
set -u -o pipefail
REPO=$(pwd)
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
TREE=/tmp/tree
LOG=$OUT/log.txt
RES=$OUT/results.jsonl

log() { echo "### $(date -u +%H:%M:%S) $*" | tee -a "$LOG"; }
runlog() {  # runlog NAME CMD...: run, keep the log, collect JSON lines
  log "start $1"
  local name=$1; shift
  ( "$@" ) 2>&1 | tee -a "$LOG" | grep --line-buffered -E '^\{|^# |error|Error|OOM' | grep -v Warning
  local rc=${PIPESTATUS[0]}
  grep -h '^{' "$LOG" > "$RES.tmp" 2>/dev/null; mv "$RES.tmp" "$RES"
  log "end $name rc=$rc"
}

ensure_site() {
  [ -d .gpu/whl ] || return 0  # a call that carries no .gpu (e.g. stage fa4_unpack)
  local want; want=$(ls .gpu/whl | md5sum)
  if [ "$(cat /tmp/site/.done 2>/dev/null)" != "$want" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl \
      && echo "$want" > /tmp/site/.done || { log "error: wheel install failed"; return 1; }
  fi
  export PYTHONPATH=/tmp/site${FA4_PATH:+:$FA4_PATH}
}

stage_env() {
  nvidia-smi 2>&1 | tee -a "$LOG" | head -15
  python3 -c "import torch,json; print(json.dumps(dict(bench='env', torch=torch.__version__, cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(), name=torch.cuda.get_device_name(), n=torch.cuda.device_count(), nccl='.'.join(map(str, torch.cuda.nccl.version())))))" | tee -a "$LOG"
  python3 -m pip list 2>/dev/null | grep -i -E "^(torch|triton|numpy|transformers|einops|imageio|pandas|psutil|safetensors|huggingface|opencv|pyyaml|tabulate|portalocker|termcolor|megatron|hydra|omegaconf|antlr4|loguru|fvcore|iopath|yacs|decord|av|webdataset|wandb|diffusers|pydantic|attrs|platformdirs|gitpython|sentry) " | tee -a "$LOG"
}

stage_ops() { runlog ops python3 bench/bench_ops.py --budget-s ${OPS_BUDGET_S:-0.6} --only ${OPS_ONLY:-copy,matmul,rope,rmsnorm,attention,optim} ${OPS_ARGS:-}; }

stage_setup() {
  ensure_site || return 1
  rm -rf $TREE
  python3 -m installer apply --source .gpu/cosmos_predict2-1.0.9.tar.gz --target $TREE 2>&1 | tee -a "$LOG" | tail -1
  mkdir -p $TREE/datasets/smoke
  cp -r .gpu/data/datasets/smoke/cosmos_nemo_assets $TREE/datasets/cosmos_nemo_assets
  cp -r .gpu/data/datasets/smoke/cosmos_nemo_assets_images $TREE/datasets/cosmos_nemo_assets_images
  cp -r .gpu/smoke/datasets/smoke/. $TREE/datasets/smoke/
  (cd $TREE && python3 -c "
import hashlib, torch, sys
sys.path.insert(0, '.')
from scripts.make_smoke_dataset import write_random_vae
p = write_random_vae('.', 0)
sd = torch.load(p, map_location='cpu'); h = hashlib.sha256()
for k in sorted(sd): h.update(sd[k].numpy().tobytes())
print('vae sha256', h.hexdigest()[:16], '(CPU here: ecd60cbc068c8cbe)')
import megatron.core, hydra, omegaconf, loguru, fvcore, iopath, decord, wandb, webdataset, diffusers, qwen_vl_utils
from cosmos_predict2.configs.base.config import make_config
print('imports ok')
") 2>&1 | tee -a "$LOG" | grep -E "vae|imports|Error|error" 
}

stage_dit480() { (cd $TREE && runlog dit480 python3 $REPO/bench/bench_dit.py --res 480 --variants ${DIT480_VARIANTS:-anchor,ours,ours_upsac,ours_linsa,ours_nosac}); }
stage_dit720() { (cd $TREE && runlog dit720 python3 $REPO/bench/bench_dit.py --res 720 --variants ${DIT720_VARIANTS:-anchor,ours,ours_linsa}); }
stage_prof720() { (cd $TREE && runlog prof720 python3 $REPO/bench/bench_dit.py --res 720 --variants ${PROF_VARIANTS:-ours} --warmup 2 --steps 2 --profile); }
stage_fwd720() { (cd $TREE && runlog fwd720 python3 $REPO/bench/bench_dit.py --fwd --res 720 --variants ${FWD720_VARIANTS:-anchor,ours} --steps 3); }
stage_t2i_bare() { (cd $TREE && runlog t2i_bare python3 $REPO/bench/bench_dit.py --net t2i --optimizer --variants ${T2I_VARIANTS:-ours_unfused,ours} --warmup 3 --steps ${T2I_STEPS:-10} ${T2I_ARGS:-}); }
stage_infer() { fa4_tile_env; (cd $TREE && runlog infer python3 $REPO/bench/bench_infer.py --video datasets/cosmos_nemo_assets_images/images/smoke_000.jpg --steps ${INFER_STEPS:-35} --videos ${INFER_VIDEOS:-1}); }
stage_parity() {
  (cd $TREE && runlog parity python3 $REPO/bench/parity/parity_dit.py --init $REPO/.gpu/parity_init.pt --out $OUT/parity_cuda.json)
  python3 bench/parity/parity_dit.py --compare .gpu/parity_cpu.json $OUT/parity_cuda.json --tol 1e-4 2>&1 | tee -a "$LOG"
  grep -h '^{' "$LOG" > "$RES"
}

train_e2e() {  # train_e2e NAME NPROC EXP ITERS overrides...  (E2E_LOGGING_ITER= empty: the experiment's own)
  local name=$1 nproc=$2 exp=$3 iters=$4; shift 4
  local logit=${E2E_LOGGING_ITER-1}
  # earlier runs' checkpoints (2B: ~30 GB each with masters, moments and EMA) filled a warm machine's disk after
  # about four runs; their logs and metrics stay
  find /tmp/e2e -mindepth 2 -type d -name checkpoints -prune -exec rm -rf {} + 2>/dev/null
  mkdir -p /tmp/e2e/$name
  local stop_rows=$iters; [ -n "${E2E_KEEP_SAVE:-}" ] && stop_rows=$((iters + 1))  # one more: never reached
  # stopped once the last iteration's metrics line is written (before the final checkpoint save, which the suite
  # does not measure and which takes a 2B run longer than its iterations): rc 0 then; E2E_KEEP_SAVE=1 keeps the save
  (cd $TREE && COSMOS_TRAIN_METRICS=/tmp/e2e/$name/metrics.jsonl IMAGINAIRE_OUTPUT_ROOT=/tmp/e2e/$name \
     python3 $REPO/bench/device/run_until_rows.py --metrics-dir /tmp/e2e/$name --rows $stop_rows \
       --timeout ${E2E_TIMEOUT:-400} -- \
     bash train.sh --EXP=$exp --nproc_per_node=$nproc --fresh -- \
     model.config.model_manager_config.dit_path="" model.config.pipe_config.tokenizer.vae_pth=checkpoints/smoke/tokenizer.pth \
     trainer.max_iter=$iters ${logit:+trainer.logging_iter=$logit} checkpoint.save_iter=100000 dataloader_train.num_workers=${E2E_WORKERS:-2} "$@") \
     > /tmp/e2e/$name/log.txt 2>&1
  local rc=$?
  grep -a -E "Iteration [0-9]+:|peak_gpu_mem|out of memory|Error|error:|latents:|training loader:|run_until_rows:" /tmp/e2e/$name/log.txt \
    | tail -40 >> "$LOG"
  tail -c 60000 /tmp/e2e/$name/log.txt > "$OUT/$name.log.txt"  # the run's own log (binary-safe), for failures
  local mfile; mfile=$(find /tmp/e2e/$name -name "*.metrics.jsonl" | head -1)  # train.sh's per-run metrics file
  python3 - "$name" "$rc" "${mfile:-none}" "$exp" "$nproc" <<'PY' | tee -a "$LOG"
import json, statistics, sys, os
name, rc, path, exp, nproc = sys.argv[1:6]
rows = [json.loads(l) for l in open(path)] if os.path.exists(path) else []
st = [r["step_time_s"] for r in rows if r.get("step_time_s") is not None and r["step_time_s"] == r["step_time_s"]]
tail = st[5:] or st
loss = [r.get("loss") for r in rows]
print(json.dumps(dict(bench="e2e", name=name, exp=exp, nproc=int(nproc), rc=int(rc), iters=len(rows),
      step_s_median=statistics.median(tail) if tail else None, step_s_mean=statistics.mean(tail) if tail else None,
      step_s_first=st[:3], step_s_all=st,
      loss_first=loss[:3], loss_last=loss[-3:], finite=all(l is not None and l == l and abs(l) != float("inf") for l in loss) and bool(loss),
      peak_mem_gib=max((r.get("peak_device_bytes") or r.get("peak_mem_bytes") or 0) for r in rows) / 2**30 if rows else None,
      peak_reserved_gib=max((r.get("peak_mem_reserved_bytes") or 0) for r in rows) / 2**30 if rows else None,
      alloc_conf=os.environ.get("PYTORCH_CUDA_ALLOC_CONF"), metrics_sync=os.environ.get("COSMOS_METRICS_SYNC"),
      peak_reserved_note="see log", last_row=rows[-1] if rows else None)))
PY
  grep -h '^{' "$LOG" > "$RES"
}
stage_e2e_video() { ensure_site; train_e2e v2w_2b_720 1 predict2_video2world_training_2b_cosmos_nemo_assets ${E2E_ITERS:-20} model_parallel.context_parallel_size=1 ${E2E_VIDEO_EXTRA:-}; }
stage_e2e_video_auto() {  # upstream's SAC policy first; if that runs out of memory, full per-block recompute
  ensure_site
  # H200, 2026-11-26: first step 69 s (compile + warm-up), then ~16.5 s; 132 GB peak, so 80 GB cards take the fallback
  E2E_TIMEOUT=${E2E_TIMEOUT_1:-480} train_e2e v2w_2b_720 1 predict2_video2world_training_2b_cosmos_nemo_assets ${E2E_ITERS:-20} model_parallel.context_parallel_size=1
  if grep -q -i "out of memory" /tmp/e2e/v2w_2b_720/log.txt; then
    log "v2w_2b_720 ran out of memory: retrying with sac_config.mode=block_wise"
    train_e2e v2w_2b_720_blockwise 1 predict2_video2world_training_2b_cosmos_nemo_assets ${E2E_ITERS:-20} model_parallel.context_parallel_size=1 model.config.pipe_config.net.sac_config.mode=block_wise
  fi
}
V2W=predict2_video2world_training_2b_cosmos_nemo_assets
LATENTS=datasets/cosmos_nemo_assets/latents_93x704x1280
stage_encode() {  # the latent cache of the 720p set (scripts/encode_latents.py; the same VAE checkpoint as training)
  ensure_site
  (cd $TREE && runlog encode python3 -m scripts.encode_latents --EXP=$V2W -- \
     model.config.pipe_config.tokenizer.vae_pth=checkpoints/smoke/tokenizer.pth)
}
breakdown() {  # breakdown NAME: train.sh's report (step breakdown table) into the log, metrics into $OUT
  sed -n '/^steps [0-9]/,/^report:/p' /tmp/e2e/$1/log.txt | tr -d '\000' | tee -a "$LOG"
  find /tmp/e2e/$1 -name "*.metrics.jsonl" -exec cp {} "$OUT/$1.metrics.jsonl" \;
}
stage_e2e_fly() {  # 2B Video2World 720p CP=1 through train.sh, VAE encode on the fly (new loader, step breakdown)
  ensure_site
  train_e2e v2w_720_fly 1 $V2W ${E2E_ITERS:-20} model_parallel.context_parallel_size=1; breakdown v2w_720_fly
}
stage_e2e_cache() {  # the same from the latent cache (run stage encode first)
  ensure_site
  train_e2e v2w_720_cache 1 $V2W ${E2E_ITERS:-20} model_parallel.context_parallel_size=1 \
    +dataloader_train.dataset.latent_cache_dir=$LATENTS +dataloader_train.sampler.dataset.latent_cache_dir=$LATENTS
  breakdown v2w_720_cache
}
stage_e2e_lean() {  # the latent-cache run with checkpointing mode attention_only (patch 0062): peak memory and step
  ensure_site
  train_e2e v2w_720_lean 1 $V2W ${E2E_ITERS:-20} model_parallel.context_parallel_size=1 \
    model.config.pipe_config.net.sac_config.mode=attention_only \
    +dataloader_train.dataset.latent_cache_dir=$LATENTS +dataloader_train.sampler.dataset.latent_cache_dir=$LATENTS
  breakdown v2w_720_lean
}
stage_e2e_t2i() { ensure_site; train_e2e t2i_2b 1 predict2_text2image_training_2b_cosmos_nemo_assets ${E2E_ITERS:-20} ${E2E_T2I_EXTRA:-}; breakdown t2i_2b; }
T2I=predict2_text2image_training_2b_cosmos_nemo_assets
T2I_LATENTS=datasets/cosmos_nemo_assets_images/latents_1x768x1360
stage_encode_t2i() {  # the latent cache of the Text2Image image set (scripts/encode_latents.py, same VAE as training)
  ensure_site
  (cd $TREE && runlog encode_t2i python3 -m scripts.encode_latents --EXP=$T2I -- \
     model.config.pipe_config.tokenizer.vae_pth=checkpoints/smoke/tokenizer.pth)
}
t2i_cache_args() { echo +dataloader_train.dataset.latent_cache_dir=$T2I_LATENTS +dataloader_train.sampler.dataset.latent_cache_dir=$T2I_LATENTS; }
stage_e2e_t2i_cache() {  # Text2Image from the latent cache (run stage encode_t2i first)
  ensure_site; train_e2e t2i_2b_cache 1 $T2I ${E2E_ITERS:-20} $(t2i_cache_args) ${E2E_T2I_EXTRA:-}; breakdown t2i_2b_cache
}
t2i_bare_run() {  # t2i_bare_run NAME ARGS...: the bare Text2Image 2B step (bench_dit, forward+backward+FusedAdam)
  local name=$1; shift
  (cd $TREE && runlog $name python3 $REPO/bench/bench_dit.py --net t2i --optimizer --warmup 3 --steps ${T2I_STEPS:-30} "$@")
}
stage_e2e_t2i_sync1() {  # the same with every step timed (six device synchronizations per step)
  ensure_site
  COSMOS_STEP_TIMING_EVERY=1 train_e2e t2i_2b_sync1 1 predict2_text2image_training_2b_cosmos_nemo_assets ${E2E_ITERS:-20} ${E2E_T2I_EXTRA:-}
  breakdown t2i_2b_sync1
}
stage_e2e_cp2() {  # two GPUs; falls back to per-block recompute if upstream's SAC policy runs out of memory
  ensure_site
  train_e2e v2w_2b_720_cp2 2 predict2_video2world_training_2b_cosmos_nemo_assets ${E2E_CP2_ITERS:-10} model_parallel.context_parallel_size=2
  if grep -q -i "out of memory" /tmp/e2e/v2w_2b_720_cp2/log.txt; then
    log "v2w_2b_720_cp2 ran out of memory: retrying with sac_config.mode=block_wise"
    train_e2e v2w_2b_720_cp2_blockwise 2 predict2_video2world_training_2b_cosmos_nemo_assets ${E2E_CP2_ITERS:-10} model_parallel.context_parallel_size=2 model.config.pipe_config.net.sac_config.mode=block_wise
  fi
}
# the machine's host speed on the step's Python (BENCHMARKS 3t): GradClip's and the EMA update's module walks, FusedAdam's
# per-parameter host work, the checkpointing policy's answers, each before and after, on this host's CPU (seconds)
stage_monitor() { ensure_site; (cd $TREE && runlog host_monitor python3 $REPO/bench/bench_device_monitor.py); }
stage_host() {
  ensure_site
  (cd $TREE && runlog host_walks python3 $REPO/bench/bench_grad_clip_host.py \
    && runlog host_adam python3 $REPO/bench/bench_adam_host.py && runlog host_sac python3 $REPO/bench/bench_sac_policy.py) \
    && stage_monitor
}
stage_cudatests() { COSMOS_TEST_TREE=$TREE runlog cudatests python3 tests/ops/test_cuda.py ${CUDA_TESTS:-}; }  # CUDA_TESTS: name parts
# FlashAttention-4 (optional flash_cute attention backend). Its CuTe DSL's cu13 libraries (92 MB as a wheel, 61 MiB
# as .fa4a/cu13.tar.xz) fill a device call's carry alone, so they travel in a call of their own (carry [".fa4a"],
# stage fa4_unpack), and the next call on the same warm machine (carry [".gpu"], with the small wheels in
# .gpu/fa4whl) runs stage fa4. Make both with bench/device/prepare_fa4_carry.sh.
stage_fa4_unpack() { mkdir -p /tmp/fa4libs && tar xJf .fa4a/cu13.tar.xz -C /tmp/fa4libs && du -sh /tmp/fa4libs | tee -a "$LOG"; }
stage_fa4() {
  ensure_site || return 1
  [ -d /tmp/fa4libs/nvidia_cutlass_dsl ] || { log "error: /tmp/fa4libs is missing (stage fa4). Run stage fa4_unpack in the call before, on the same machine."; return 1; }
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/fa4whl/*.whl 2>&1 | tail -3 | tee -a "$LOG"
  cp -a /tmp/fa4libs/. /tmp/site/
  # the CuTe DSL finds its `cutlass` package through a .pth file, which --target installs do not run
  FA4_PATH=/tmp/site/nvidia_cutlass_dsl/dsl_packages
  export PYTHONPATH=/tmp/site:$FA4_PATH
  python3 -c "import flash_attn.cute, torch; q = torch.randn(1, 512, 2, 128, device='cuda', dtype=torch.bfloat16); o = flash_attn.cute.flash_attn_func(q, q, q); o = o[0] if isinstance(o, tuple) else o; print('fa4 ok', tuple(o.shape), flash_attn.cute.__version__)" 2>&1 | tail -5 | tee -a "$LOG"
}
# FA4 forward tilings side by side at the 2B 720p self-attention shape (bench_ops.py --only fa4_tiles). The fastest,
# if it beats FA4's own choice by 1 % or more, goes to /tmp/fa4_fwd_tile; later stages of this call and of later
# calls on the same machine run with COSMOS_FLASH_CUTE_FWD_TILE set to it (unless already set).
FA4_TILES=${FA4_TILES:-"128x176;128x160;128x192;128x144;128x112;128x176,rs=0;128x128,rs=0;128x128,overlap=0;192x128,threads=512;192x128,rs=0,threads=512"}
stage_fa4_tiles() {
  runlog fa4_tiles python3 bench/bench_ops.py --only fa4_tiles --models 2B --seqs ${FA4_TILE_SEQS:-84480} --budget-s 1 --fa4-fwd-tiles "$FA4_TILES"
  python3 - "$RES" <<'PY' | tee -a "$LOG"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"fa4_fwd_tile' in l]
best = [r for r in rows if r["bench"] == "fa4_fwd_tile_best"]
default = [r for r in rows if r.get("impl") == "default" and "ms" in r]
if best and default and best[-1]["impl"] != "default" and best[-1]["ms"] <= 0.99 * default[-1]["ms"]:
    open("/tmp/fa4_fwd_tile", "w").write(best[-1]["impl"])
    print(f"fa4 forward tile: {best[-1]['impl']} {best[-1]['ms']:.3f} ms vs default {default[-1]['ms']:.3f} ms")
else:
    print("fa4 forward tile: FA4's default kept")
PY
}
fa4_tile_env() {
  if [ -z "${COSMOS_FLASH_CUTE_FWD_TILE:-}" ] && [ -s /tmp/fa4_fwd_tile ]; then
    export COSMOS_FLASH_CUTE_FWD_TILE=$(cat /tmp/fa4_fwd_tile); log "COSMOS_FLASH_CUTE_FWD_TILE=$COSMOS_FLASH_CUTE_FWD_TILE"
  fi
}
stage_fwd720_tile() {  # the no-grad 720p pass with FA4 at its default tiling and at the chosen one, one run each
  (cd $TREE && COSMOS_FLASH_CUTE_FWD_TILE= runlog fwd720_fa4_default python3 $REPO/bench/bench_dit.py --fwd --res 720 --variants ours_fa4 --steps 3)
  fa4_tile_env
  [ -n "${COSMOS_FLASH_CUTE_FWD_TILE:-}" ] && (cd $TREE && runlog fwd720_fa4_tile python3 $REPO/bench/bench_dit.py --fwd --res 720 --variants ours_fa4 --steps 3)
  return 0
}
stage_cp_parity() { (cd $TREE && runlog cp_parity torchrun --nproc_per_node=2 $REPO/bench/parity/cp_parity_cuda.py --frames 8 --res 480); }

# Trainer host overhead (bench/trainer_overhead.py). t2i_overhead: per-phase ops/syncs (count mode, eager, slow) and
# host ms (--time, compiled) of train.sh's trainer vs the bare step on the 2B Text2Image net. e2e_t2i_before: stage
# e2e_t2i on a copy of the tree without the trainer-overhead changes (their four patches reversed, local_shard =
# to_local()), for a before/after pair in one call.
stage_t2i_overhead() {
  ensure_site
  (cd $TREE && runlog t2i_overhead_count python3 $REPO/bench/trainer_overhead.py --full --iters ${OVH_ITERS:-4})
  (cd $TREE && runlog t2i_overhead_time python3 $REPO/bench/trainer_overhead.py --full --time --iters ${OVH_TIME_ITERS:-8})
}
stage_t2i_fsdp_ab() {  # host ms per phase (--time): bare step, trainer from the latent cache with and without FSDP2
  ensure_site
  local o="--full --time --iters ${OVH_TIME_ITERS:-12}"
  (cd $TREE && runlog t2i_ab_bare python3 $REPO/bench/trainer_overhead.py $o --side bare)
  (cd $TREE && COSMOS_FSDP_ONE_DEVICE=1 runlog t2i_ab_fsdp python3 $REPO/bench/trainer_overhead.py $o --side trainer -- $(t2i_cache_args))
  (cd $TREE && runlog t2i_ab_nofsdp python3 $REPO/bench/trainer_overhead.py $o --side trainer -- $(t2i_cache_args))
  (cd $TREE && COSMOS_FSDP_ONE_DEVICE=1 TRAINER_OVERHEAD_KEEP_UNSHARDED=1 runlog t2i_ab_keep python3 $REPO/bench/trainer_overhead.py $o --side trainer -- $(t2i_cache_args))
}
stage_t2i_gc_ab() {  # Python's GC policy (portable/gc_policy.py) off and on: bare step and train.sh from the cache
  ensure_site
  lscpu 2>/dev/null | grep -E "^(Model name|CPU\(s\)|Thread|Core|Socket|NUMA node\(s\)|CPU max MHz)" | tee -a "$LOG"
  t2i_bare_run t2i_bare_gc0 --variants ours --gc-every 0
  t2i_bare_run t2i_bare_gc50 --variants ours --gc-every 50
  COSMOS_GC_EVERY=0 train_e2e t2i_cache_gc0 1 $T2I ${E2E_ITERS:-20} $(t2i_cache_args) ${E2E_T2I_EXTRA:-}; breakdown t2i_cache_gc0
  train_e2e t2i_cache_gc50 1 $T2I ${E2E_ITERS:-20} $(t2i_cache_args) ${E2E_T2I_EXTRA:-}; breakdown t2i_cache_gc50
}
# t2i_nosac: Text2Image 2B without activation checkpointing (upstream's experiment uses mm_only; on CPU that doubles
# the step's host work, BENCHMARKS 3f): the bare step both ways in one process, and train.sh from the latent cache
# both ways (run stage encode_t2i first).
stage_t2i_nosac() {
  ensure_site
  t2i_bare_run t2i_bare_sac --variants ours,ours_nosac --gc-every 50
  train_e2e t2i_cache_mmonly 1 $T2I ${E2E_ITERS:-40} $(t2i_cache_args); breakdown t2i_cache_mmonly
  train_e2e t2i_cache_nosac 1 $T2I ${E2E_ITERS:-40} $(t2i_cache_args) model.config.pipe_config.net.sac_config.mode=none
  breakdown t2i_cache_nosac
}
stage_t2i_cb() {  # compiled blocks (portable/block_compile.py): the bare step four ways, then train.sh from the cache
  ensure_site
  t2i_bare_run t2i_bare_cb --variants ${CB_VARIANTS:-ours,ours_cb,ours_nosac,ours_nosac_cb} --gc-every 50
  COSMOS_COMPILE_BLOCKS=1 train_e2e t2i_cache_cb 1 $T2I ${E2E_ITERS:-40} $(t2i_cache_args) ${CB_E2E_EXTRA:-}
  breakdown t2i_cache_cb
}
stage_t2i_cb_profile() {  # train.sh with compiled blocks, a profiler trace (callbacks named; PROFILE_STACK=1: Python frames), its idle gaps
  ensure_site
  COSMOS_COMPILE_BLOCKS=1 COSMOS_PROFILE_STEPS=${PROFILE_STEPS:-2} COSMOS_PROFILE_WARMUP=${PROFILE_WARMUP:-12} \
    COSMOS_PROFILE_STACK=${PROFILE_STACK:-0} train_e2e t2i_cb_prof 1 $T2I ${PROFILE_ITERS:-18} $(t2i_cache_args) ${CB_E2E_EXTRA:-}
  local tr; tr=$(find /tmp/e2e/t2i_cb_prof -name "*trace-rank0.json" | head -1)
  [ -n "$tr" ] || { log "error: no trace written by t2i_cb_prof"; return 1; }
  gzip -c "$tr" > $OUT/t2i_cb_prof.trace.json.gz
  runlog trace_gaps python3 $REPO/bench/trace_gaps.py "$tr" --min-gap-ms ${GAP_MS:-0.2} --top ${GAP_TOP:-25}
}
stage_t2i_cb_overhead() {  # host ms per phase (--time), compiled blocks on both sides: bare step, trainer from the cache
  ensure_site
  local o="--full --time --iters ${OVH_TIME_ITERS:-10}"
  (cd $TREE && COSMOS_COMPILE_BLOCKS=1 runlog t2i_cb_ovh_bare python3 $REPO/bench/trainer_overhead.py $o --side bare)
  (cd $TREE && COSMOS_COMPILE_BLOCKS=1 runlog t2i_cb_ovh_trainer python3 $REPO/bench/trainer_overhead.py $o --side trainer -- $(t2i_cache_args))
}
# t2i_fsdp_bare: the bare Text2Image 2B step (compiled blocks) plain, in FSDP2 with upstream's per-module units on a
# one-device mesh (as the trainer wraps it on one GPU) and with the root unit only, one process (BENCHMARKS 3h).
stage_t2i_fsdp_bare() { ensure_site; t2i_bare_run t2i_fsdp_bare --variants ${FSDP_VARIANTS:-ours_cb,ours_cb_fsdp,ours_cb_fsdproot} --gc-every 50; }
# t2i_units_overhead: host ms per phase (trainer_overhead.py --time, compiled blocks) of the trainer from the cache
# with upstream's per-block FSDP2 units, with one unit for the whole DiT (TRAINER_OVERHEAD_ONE_UNIT=1) and without
# FSDP (the default on one process since portable/fsdp_policy.py; the other two set COSMOS_FSDP_ONE_DEVICE=1), UNITS_REPS alternating rounds, and the bare step's
# (BENCHMARKS 3h: train.sh showed no gain from one unit, one run each).
stage_t2i_units_overhead() {
  ensure_site
  local o="--full --time --iters ${OVH_TIME_ITERS:-10}" r
  (cd $TREE && COSMOS_COMPILE_BLOCKS=1 runlog t2i_units_ovh_bare python3 $REPO/bench/trainer_overhead.py $o --side bare)
  for r in $(seq 1 ${UNITS_REPS:-1}); do
    (cd $TREE && COSMOS_COMPILE_BLOCKS=1 COSMOS_FSDP_ONE_DEVICE=1 runlog t2i_units_ovh_blocks_$r \
      python3 $REPO/bench/trainer_overhead.py $o --side trainer -- $(t2i_cache_args))
    (cd $TREE && COSMOS_COMPILE_BLOCKS=1 COSMOS_FSDP_ONE_DEVICE=1 TRAINER_OVERHEAD_ONE_UNIT=1 runlog t2i_units_ovh_root_$r \
      python3 $REPO/bench/trainer_overhead.py $o --side trainer -- $(t2i_cache_args))
    (cd $TREE && COSMOS_COMPILE_BLOCKS=1 runlog t2i_units_ovh_nofsdp_$r \
      python3 $REPO/bench/trainer_overhead.py $o --side trainer -- $(t2i_cache_args))
  done
}
# t2i_fsdp_e2e: train.sh from the latent cache in FSDP2 on the one-device mesh (COSMOS_FSDP_ONE_DEVICE=1, per-block
# units, as upstream) and as the plain module (the default on one process, portable/fsdp_policy.py), FSDP_REPS
# alternating rounds, with the bare step.
stage_t2i_fsdp_e2e() {
  ensure_site
  local r
  for r in $(seq 1 ${FSDP_REPS:-2}); do
    t2i_bare_run fsdp_bare_$r --variants ${RATIO_VARIANT:-ours_cb} --gc-every 50
    COSMOS_FSDP_ONE_DEVICE=1 COSMOS_STEP_TIMING_EVERY=10 train_e2e fsdp_t2i_on_$r 1 $T2I ${E2E_ITERS:-40} $(t2i_cache_args)
    COSMOS_STEP_TIMING_EVERY=10 train_e2e fsdp_t2i_off_$r 1 $T2I ${E2E_ITERS:-40} $(t2i_cache_args)
  done
}
# t2i_plain_fused: train.sh from the latent cache (plain module on one GPU) with the fused AdamW kernel
# (COSMOS_FUSED_ADAM=1)
stage_t2i_plain_fused() {
  ensure_site
  COSMOS_FUSED_ADAM=1 COSMOS_STEP_TIMING_EVERY=10 train_e2e fused_t2i_plain 1 $T2I ${E2E_ITERS:-40} $(t2i_cache_args)
}
# t2i_fused_bare: the bare step (compiled blocks) with FusedAdam's foreach update and with torch's fused AdamW kernel
# (COSMOS_FUSED_ADAM=1), then fused with GradClip and the EMA update (--trainer-work), one process each. t2i_fused_e2e: train.sh from the latent cache, plain module, both ways, and
# with GradClip's host read taken out (force_finite=False: the clip without upstream's nan_to_num, to price that read).
stage_t2i_fused_bare() {
  ensure_site
  [ -n "${SKIP_FOREACH_BARE:-}" ] || COSMOS_FUSED_ADAM=0 t2i_bare_run t2i_bare_foreach --variants ${RATIO_VARIANT:-ours_cb} --gc-every 50
  COSMOS_FUSED_ADAM=1 t2i_bare_run t2i_bare_fused --variants ${RATIO_VARIANT:-ours_cb} --gc-every 50
  # + the trainer's intrinsic work (GradClip, EMA update): splits train.sh's excess into that work and the rest
  COSMOS_FUSED_ADAM=1 COSMOS_EMA_OVERLAP=1 t2i_bare_run t2i_bare_fused_work --variants ${RATIO_VARIANT:-ours_cb} --gc-every 50 --trainer-work
  COSMOS_FUSED_ADAM=1 COSMOS_EMA_OVERLAP=0 t2i_bare_run t2i_bare_fused_work_inline --variants ${RATIO_VARIANT:-ours_cb} --gc-every 50 --trainer-work
}
stage_t2i_fused_e2e() {
  ensure_site
  local v
  for v in ${FUSED_E2E_RUNS:-fused foreach fused_noread}; do
    case $v in
      fused|fused[0-9]) COSMOS_FUSED_ADAM=1 COSMOS_EMA_OVERLAP=1 COSMOS_STEP_TIMING_EVERY=10 train_e2e t2i_plain_$v 1 $T2I ${E2E_ITERS:-40} $(t2i_cache_args); breakdown t2i_plain_$v ;;
      # fused: the EMA update on patch 0049's side stream (COSMOS_EMA_OVERLAP=1); fused_inline: in line (the default)
      fused_inline*) COSMOS_FUSED_ADAM=1 COSMOS_EMA_OVERLAP=0 COSMOS_STEP_TIMING_EVERY=10 train_e2e t2i_plain_$v 1 $T2I ${E2E_ITERS:-40} $(t2i_cache_args); breakdown t2i_plain_$v ;;
      foreach) COSMOS_FUSED_ADAM=0 COSMOS_STEP_TIMING_EVERY=10 train_e2e t2i_plain_foreach 1 $T2I ${E2E_ITERS:-40} $(t2i_cache_args); breakdown t2i_plain_foreach ;;
      fused_noread) COSMOS_FUSED_ADAM=1 COSMOS_STEP_TIMING_EVERY=10 train_e2e t2i_plain_fused_noread 1 $T2I ${E2E_ITERS:-40} $(t2i_cache_args) trainer.callbacks.grad_clip.force_finite=False; breakdown t2i_plain_fused_noread ;;
    esac
  done
}
stage_t2i_fused_profile() {  # t2i_cb_profile with the fused AdamW kernel
  COSMOS_FUSED_ADAM=1 stage_t2i_cb_profile
}
# t2i_gap_diff: where train.sh's Text2Image step differs from the bare step + GradClip + EMA (in line): both under
# torch.profiler for PROFILE_STEPS steps (bench_dit.py --profile-trace; train.sh --profile_steps after
# PROFILE_WARMUP steps), then bench/trace_gaps.py --compare: each side's mean step (span, device busy and idle) and
# the kernels whose device time differs most. Traces stay on the machine (they can exceed what a call returns).
stage_t2i_gap_diff() {
  ensure_site
  local n=${PROFILE_STEPS:-3}
  rm -f /tmp/bare_work.trace.json
  COSMOS_EMA_OVERLAP=0 t2i_bare_run t2i_bare_work_prof --variants ${RATIO_VARIANT:-ours_cb} --gc-every 50 --trainer-work \
    --profile --profile-steps $n --profile-trace /tmp/bare_work.trace.json
  # the experiment's own logging_iter unless E2E_LOGGING_ITER is given: at 1, DeviceMonitor (~14 ms of host) and
  # GradClip's log (a host read of the norm) run every step, which the timed runs do not have
  E2E_LOGGING_ITER=${E2E_LOGGING_ITER-} COSMOS_PROFILE_STEPS=$n COSMOS_PROFILE_WARMUP=${PROFILE_WARMUP:-12} \
    train_e2e t2i_gap_prof 1 $T2I $(( ${PROFILE_WARMUP:-12} + n + 3 )) $(t2i_cache_args)
  local tr; tr=$(find /tmp/e2e/t2i_gap_prof -name "*trace-rank0.json" | head -1)
  [ -n "$tr" ] && [ -s /tmp/bare_work.trace.json ] || { log "error: a trace is missing (t2i_gap_diff)"; return 1; }
  ls -la "$tr" /tmp/bare_work.trace.json | tee -a "$LOG"
  runlog t2i_gap_diff python3 $REPO/bench/trace_gaps.py "$tr" --compare /tmp/bare_work.trace.json \
    --min-gap-ms ${GAP_MS:-0.2} --top ${GAP_TOP:-30}
}
stage_t2i_work_bare() {  # the bare step with FusedAdam's default kernel, without and with GradClip + EMA (in line)
  ensure_site
  t2i_bare_run t2i_bare --variants ${RATIO_VARIANT:-ours_cb} --gc-every 50
  COSMOS_EMA_OVERLAP=0 t2i_bare_run t2i_bare_work --variants ${RATIO_VARIANT:-ours_cb} --gc-every 50 --trainer-work
}
# t2i_work_paths: the trainer's work (GradClip + EMA) with the EMA update as portable/lerp_kernel.py's one Triton
# launch in line (new), as copy + foreach lerp (old, COSMOS_EMA_KERNEL=0) and as the kernel on a side stream
# overlapped with the next forward (ovl, COSMOS_EMA_OVERLAP=1), the kernel with GradClip's finite check before the
# optimizer step (late0, COSMOS_CLIP_LATE_CHECK=0), with torch's fused AdamW kernel instead of portable/adamw_kernel.py
# (tadam, COSMOS_ADAM_KERNEL=0; bare_tadam: the bare step so), the check settled before zero_grad rather than at the
# next step's start (zg, COSMOS_CLIP_SETTLE_NEXT_STEP=0), beside the bare step (bare), one process each (PATHS_BARE_RUNS,
# default "bare old new"; SKIP_PATHS_BARE=1: none); then train.sh from the latent cache the same ways
# (PATHS_E2E_RUNS: new*|old*|ovl*|late0*|tadam*|zg*, in the order given; none: no run); the breakdown times every 10th step,
# a name ending in _everyN every N-th (new_every1: every step, as train.sh by default)
stage_t2i_work_paths() {
  ensure_site
  local v env runs=${PATHS_BARE_RUNS:-bare old new}
  [ -n "${SKIP_PATHS_BARE:-}" ] && runs=
  for v in $runs; do
    if [ $v = bare ]; then t2i_bare_run t2i_bare --variants ${RATIO_VARIANT:-ours_cb} --gc-every 50; continue; fi
    if [ $v = bare_tadam ]; then  # the bare step with torch's fused AdamW kernel (portable/adamw_kernel.py off)
      COSMOS_ADAM_KERNEL=0 t2i_bare_run t2i_bare_tadam --variants ${RATIO_VARIANT:-ours_cb} --gc-every 50; continue; fi
    case $v in old|new|ovl|late0|tadam|zg) env=$(t2i_paths_env $v) ;;
      *) log "error: unknown bare run $v (bare|bare_tadam|old|new|ovl|late0|tadam|zg)"; continue ;; esac
    (export $env; t2i_bare_run t2i_work_$v --variants ${RATIO_VARIANT:-ours_cb} --gc-every 50 --trainer-work)
  done
  for v in ${PATHS_E2E_RUNS:-new old}; do
    [ $v = none ] && continue
    env=$(t2i_paths_env $v) || { log "error: unknown run $v (new*|old*|ovl*|late0*|tadam*|zg*|none)"; continue; }
    local every=10; case $v in *_every[0-9]*) every=${v##*_every} ;; esac  # e.g. new_every1: every step timed
    (export $env; COSMOS_STEP_TIMING_EVERY=$every train_e2e t2i_paths_$v 1 $T2I ${E2E_ITERS:-40} $(t2i_cache_args))
    breakdown t2i_paths_$v
  done
}
# t2i_ratio: the Text2Image target (train.sh's mean step <= 1.04x the bare step): train.sh from the latent cache with
# its defaults (every step timed; RATIO_EVERY=10: every 10th) against the bare step (bench_dit, FusedAdam, the GC
# policy train.sh uses, no GradClip/EMA), alternated RATIO_ROUNDS times (default 3) in one call so that each pair
# sees the same card state; then one row (bench t2i_ratio, bench/device/ratio_rows.py): each round's ratio of
# train.sh's mean steady step (after its first 5) to the bare step's mean, and the rounds pooled (run stage
# encode_t2i first). RATIO_RUNS (default "e2e"): train.sh runs per round, by name: e2e (the defaults), noclip
# (GradClip's callback taken out: what its finite check's host wait costs), ondev (COSMOS_CLIP_ON_DEVICE=1, the
# default since 3s: its non-finite treatment on the device, no host wait), skipredo (COSMOS_CLIP_ON_DEVICE=0: the
# check's flag read at the next step's start, a skipped step redone), everyN (steps timed every N-th).
stage_t2i_ratio() {
  ensure_site
  local i v
  # a first bench_dit process in a call pays the compile and ran 5-10 % slower than later ones (3q, call 1): a
  # short warm-up run, not paired with anything
  T2I_STEPS=5 t2i_bare_run t2i_ratio_warm --variants ${RATIO_VARIANT:-ours_cb} --gc-every 50
  for i in $(seq 1 ${RATIO_ROUNDS:-3}); do
    t2i_bare_run t2i_ratio_bare$i --variants ${RATIO_VARIANT:-ours_cb} --gc-every 50
    for v in ${RATIO_RUNS:-e2e}; do
      local every=${RATIO_EVERY:-1} extra= envs=
      case $v in e2e) ;; noclip) extra='~trainer.callbacks.grad_clip' ;; every[0-9]*) every=${v#every} ;;
        ondev) envs=COSMOS_CLIP_ON_DEVICE=1 ;;
        skipredo) envs=COSMOS_CLIP_ON_DEVICE=0 ;;
        *) log "error: unknown run $v (e2e|noclip|ondev|skipredo|everyN)"; continue ;; esac
      (if [ -n "$envs" ]; then export $envs; fi
       COSMOS_STEP_TIMING_EVERY=$every train_e2e t2i_ratio_${v}_r$i 1 $T2I ${E2E_ITERS:-25} $(t2i_cache_args) $extra)
      breakdown t2i_ratio_${v}_r$i
    done
  done
  python3 $REPO/bench/device/ratio_rows.py "$RES" $(for v in ${RATIO_RUNS:-e2e}; do echo --e2e-prefix t2i_ratio_${v}_r; done) \
    --bare-variant ${RATIO_VARIANT:-ours_cb} 2>&1 | tee -a "$LOG"
  grep -h '^{' "$LOG" > "$RES"
}
# t2i_stall_profile: train.sh (its defaults, from the latent cache) under torch.profiler for STALL_STEPS steps
# (default 5) after STALL_WARMUP (default 9), i.e. iterations 10-14: the logging iteration, the two after it and the
# one-time optimizer stall at iteration 12 that first runs showed (3r, 3s); then bench/trace_gaps.py on the trace: per
# step, the device's idle gaps and what the host was doing. Run it as the call's first train.sh run.
stage_t2i_stall_profile() {
  ensure_site
  local n=${STALL_STEPS:-5} w=${STALL_WARMUP:-9}
  E2E_LOGGING_ITER=${E2E_LOGGING_ITER-} COSMOS_PROFILE_STEPS=$n COSMOS_PROFILE_WARMUP=$w \
    train_e2e t2i_stall_prof 1 $T2I $(( w + n + 3 )) $(t2i_cache_args)
  breakdown t2i_stall_prof
  local tr; tr=$(find /tmp/e2e/t2i_stall_prof -name "*trace-rank0.json" | head -1)
  [ -n "$tr" ] || { log "error: no trace (t2i_stall_profile)"; return 1; }
  ls -la "$tr" | tee -a "$LOG"
  runlog t2i_stall_gaps python3 $REPO/bench/trace_gaps.py "$tr" --min-gap-ms ${GAP_MS:-1} --top ${GAP_TOP:-12} \
    --host-in-gaps ${GAP_HOST:-3}
}
stage_t2i_syncs() {  # where train.sh's steps make the host wait for the device (bench/device/sync_probe.py)
  ensure_site
  mkdir -p /tmp/e2e
  SYNC_PROBE_OUT=/tmp/e2e/t2i_syncs.json SYNC_PROBE_FROM=${SYNC_FROM:-6} PYTHONPATH=$REPO/bench/device:$PYTHONPATH \
    train_e2e t2i_syncs 1 $T2I ${SYNC_ITERS:-24} $(t2i_cache_args) '++trainer.callbacks.sync_probe={_target_:sync_probe.SyncProbe}'
  cp /tmp/e2e/t2i_syncs.json "$OUT/" 2>/dev/null
  runlog t2i_syncs_sites python3 $REPO/bench/device/sync_probe.py /tmp/e2e/t2i_syncs.json
}
# the environment of one t2i_work_paths run, by its name (a suffix allowed: new2, old2, ...)
t2i_paths_env() {
  case $1 in
    new*) echo COSMOS_EMA_OVERLAP=0 ;;
    old*) echo COSMOS_EMA_OVERLAP=0 COSMOS_EMA_KERNEL=0 ;;
    ovl*) echo COSMOS_EMA_OVERLAP=1 ;;
    late0*) echo COSMOS_EMA_OVERLAP=0 COSMOS_CLIP_LATE_CHECK=0 ;;
    tadam*) echo COSMOS_EMA_OVERLAP=0 COSMOS_ADAM_KERNEL=0 ;;  # torch's fused AdamW kernel, not adamw_kernel.py
    zg*) echo COSMOS_EMA_OVERLAP=0 COSMOS_CLIP_SETTLE_NEXT_STEP=0 ;;  # GradClip's check settled before zero_grad
    *) return 1 ;;
  esac
}
# t2i_async_e2e: train.sh from the latent cache with the step clock marking step ends by device events and no host
# read at the step end (the default since patch 0050) and with COSMOS_METRICS_SYNC=1 (a synchronize at every step
# end, as before), alternated in one call.
stage_t2i_async_e2e() {
  ensure_site
  local v sync
  for v in ${ASYNC_E2E_RUNS:-async sync async2 sync2}; do
    case $v in async*) sync=0 ;; sync*) sync=1 ;; *) log "error: unknown run $v (async*|sync*)"; continue ;; esac
    COSMOS_METRICS_SYNC=$sync COSMOS_STEP_TIMING_EVERY=10 train_e2e t2i_$v 1 $T2I ${E2E_ITERS:-40} $(t2i_cache_args)
    breakdown t2i_$v
  done
}
# v2w_alloc: 2B Video2World 720p CP=1, VAE on the fly, with train.sh's allocator default (expandable segments; this
# script's own export taken away) and with PYTORCH_CUDA_ALLOC_CONF=expandable_segments:False: peak allocated and
# reserved from metrics.jsonl
stage_v2w_alloc() {
  ensure_site
  local v
  for v in ${ALLOC_RUNS:-default plain}; do
    case $v in default|plain) ;; *) log "error: unknown run $v (default|plain)"; continue ;; esac
    (if [ $v = default ]; then unset PYTORCH_CUDA_ALLOC_CONF  # train.sh's own default
     else export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:False; fi
     COSMOS_STEP_TIMING_EVERY=1 train_e2e v2w_alloc_$v 1 $V2W ${E2E_ITERS:-8} model_parallel.context_parallel_size=1)
    breakdown v2w_alloc_$v
  done
}
stage_e2e_t2i_before() {
  ensure_site
  command -v patch >/dev/null || { log "error: no patch(1) on this machine (stage e2e_t2i_before)"; return 1; }
  rm -rf /tmp/tree_before && cp -r $TREE /tmp/tree_before || return 1
  for n in loss-log-one-finite-check grad-clip-finite-on-local-shards dtensor-ema-update-local-shards \
           low-precision-callback-skips-written-back-masters; do
    local ok=0 f  # the series of the tree's pin: the copy of the patch that reverses cleanly
    for f in $REPO/patches/*/*-$n.patch; do
      if (cd /tmp/tree_before && patch -R -p1 -s --dry-run < "$f" >/dev/null 2>&1); then
        (cd /tmp/tree_before && patch -R -p1 -s --no-backup-if-mismatch < "$f") && ok=1 && break
      fi
    done
    [ $ok = 1 ] || { log "error: could not reverse $n in /tmp/tree_before"; return 1; }
  done
  sed -i 's/local = getattr(t, "_local_tensor", None)/local = None/' /tmp/tree_before/cosmos_predict2/portable/shards.py
  TREE=/tmp/tree_before train_e2e t2i_2b_before 1 predict2_text2image_training_2b_cosmos_nemo_assets ${E2E_ITERS:-20} ${E2E_T2I_EXTRA:-}
  breakdown t2i_2b_before
}

ensure_site
for s in "$@"; do
  log "stage $s"
  stage_$s
done
log "done"
echo "# ===== results ====="
grep -h '^{' "$LOG" | python3 -c "
import json, sys
for l in sys.stdin:
    try: r = json.loads(l)
    except Exception: continue
    keep = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items() if k not in ('losses', 'rel', 'step_s_all', 'last_row')}
    print(json.dumps(keep)[:400])
" | tail -60
