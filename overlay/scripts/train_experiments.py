"""The experiment table of train.sh: what the launcher needs to know about each experiment, the override keys the
checks understand, and the data-preparation commands the hints name (scripts/train_preflight.py's first part).

EXPERIMENTS is the single table; tests/launcher checks it against upstream's own config objects in an applied tree.
"""

from __future__ import annotations

from dataclasses import dataclass

CONFIG_FILE = "cosmos_predict2/configs/base/config.py"
METRICS_CALLBACK = "cosmos_predict2.portable.metrics.TrainMetricsCallback"
STEP_TIMING_CALLBACK = "cosmos_predict2.portable.step_timing.StepTimingCallback"
GC_CALLBACK = "cosmos_predict2.portable.gc_policy.GarbageCollectionCallback"

# Wan2.1 VAE: 4x temporal compression with the first frame kept, so N frames -> (N - 1) / 4 + 1 latent frames.
VAE_TEMPORAL_COMPRESSION = 4

DOWNLOAD_VIDEO = "python -m installer download --dataset cosmos-nemo-assets"
T5_VIDEO = "python -m scripts.get_t5_embeddings_from_cosmos_nemo_assets --dataset_path datasets/cosmos_nemo_assets"
EXTRACT_IMAGES = (
    "python -m scripts.extract_images_from_videos --input_dataset_dir datasets/cosmos_nemo_assets "
    "--output_dataset_dir datasets/cosmos_nemo_assets_images --stride 30"
)
T5_IMAGES = (
    "python -m scripts.get_t5_embeddings_from_cosmos_nemo_assets --dataset_path datasets/cosmos_nemo_assets_images "
    "--is_image"
)
MAKE_SMOKE = "python -m scripts.make_smoke_dataset"


@dataclass(frozen=True)
class Experiment:
    task: str  # "video2world" | "text2image"
    size: str  # "2B" | "14B" (the seed model family; smoke nets are tiny but keep the family's code path)
    cp: int  # model_parallel.context_parallel_size
    num_heads: int  # model.config.pipe_config.net.num_heads
    num_frames: int | None  # dataloader_train.dataset.num_frames (video only)
    fsdp_shard_size: int  # model.config.fsdp_shard_size
    batch_size: int  # dataloader_train.batch_size (per data-parallel rank)
    dataset_dir: str
    dit_path: str  # "" = random init (smoke)
    vae_path: str
    job: tuple[str, str, str]  # project, group, name
    max_iter: int  # trainer.max_iter (a resumed run at or past it trains nothing)

    @property
    def smoke(self) -> bool:
        return self.dit_path == ""

    @property
    def model_id(self) -> str:
        return f"{self.size}-{'Video2World' if self.task == 'video2world' else 'Text2Image'}"


def _seed(task: str, size: str, cp: int) -> Experiment:
    video = task == "video2world"
    model_dir = f"checkpoints/nvidia/Cosmos-Predict2-{size}-{'Video2World' if video else 'Text2Image'}"
    shard = {("video2world", "2B"): 8, ("video2world", "14B"): 32, ("text2image", "2B"): 1, ("text2image", "14B"): 8}
    return Experiment(
        task=task,
        size=size,
        cp=cp,
        num_heads={"2B": 16, "14B": 40}[size],
        num_frames=93 if video else None,
        fsdp_shard_size=shard[(task, size)],
        batch_size=1,
        dataset_dir="datasets/cosmos_nemo_assets" if video else "datasets/cosmos_nemo_assets_images",
        dit_path=f"{model_dir}/{'model-720p-16fps.pt' if video else 'model.pt'}",
        vae_path=f"{model_dir}/tokenizer/tokenizer.pth",
        job=("posttraining", task, f"{size.lower()}_cosmos_nemo_assets"),
        max_iter=1000,
    )


def _smoke(seed: Experiment) -> Experiment:
    video = seed.task == "video2world"
    return Experiment(
        task=seed.task,
        size=seed.size,
        cp=1,
        num_heads=4,
        num_frames=13 if video else None,
        fsdp_shard_size=seed.fsdp_shard_size,
        batch_size=1,
        dataset_dir="datasets/smoke/cosmos_nemo_assets" if video else "datasets/smoke/cosmos_nemo_assets_images",
        dit_path="",
        vae_path="checkpoints/smoke/tokenizer.pth",
        job=(seed.job[0], f"{seed.task}_smoke", f"{seed.job[2]}_smoke"),
        max_iter=3,
    )


_SEEDS = {
    "predict2_text2image_training_2b_cosmos_nemo_assets": _seed("text2image", "2B", 1),
    "predict2_text2image_training_14b_cosmos_nemo_assets": _seed("text2image", "14B", 1),
    "predict2_video2world_training_2b_cosmos_nemo_assets": _seed("video2world", "2B", 2),
    "predict2_video2world_training_14b_cosmos_nemo_assets": _seed("video2world", "14B", 8),
}
EXPERIMENTS: dict[str, Experiment] = {**_SEEDS, **{f"{k}_smoke": _smoke(v) for k, v in _SEEDS.items()}}

# Override keys the checks below understand (anything else passes through to upstream's config system untouched).
K_CP = "model_parallel.context_parallel_size"
K_HEADS = "model.config.pipe_config.net.num_heads"
K_FRAMES = "dataloader_train.dataset.num_frames"
K_SHARD = "model.config.fsdp_shard_size"
K_BATCH = "dataloader_train.batch_size"
K_DATASET = "dataloader_train.dataset.dataset_dir"
K_SAMPLER_DATASET = "dataloader_train.sampler.dataset.dataset_dir"
K_DIT = "model.config.model_manager_config.dit_path"
K_VAE = "model.config.pipe_config.tokenizer.vae_pth"
K_JOB = ("job.project", "job.group", "job.name")
K_MAX_ITER = "trainer.max_iter"
# train.sh --resume=<checkpoint>: the checkpoint file name the patched Checkpointer.load takes instead of the latest
ENV_RESUME = "COSMOS_RESUME_CHECKPOINT"

NPU_ENV_DEFAULTS = {
    "TASK_QUEUE_ENABLE": "2",  # level-2 task queue: operator dispatch pipelined with the host
    "CPU_AFFINITY_CONF": "2",  # 2 = fine-grained core binding (CANN docs; 1 is coarse)
    "HCCL_WHITELIST_DISABLE": "1",
    "HCCL_CONNECT_TIMEOUT": "1200",  # model load on 8 ranks can exceed the 120 s default
    "HCCL_DETERMINISTIC": "false",
    "PYTORCH_NPU_ALLOC_CONF": "expandable_segments:True",
}
# The allocator setting bench/ measured every CUDA figure of BENCHMARKS.md with (the 2B Video2World 720p run at CP=1:
# 131.2 GiB allocated, 134.9 GiB reserved with it, 135.4 GiB without, of a 140 GiB H200; BENCHMARKS 3k).
CUDA_ENV_DEFAULTS = {
    "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
}


def latent_frames(exp: Experiment, num_frames: int | None) -> int:
    """Latent T the DiT sees: (N-1)/4+1 for video; 1 for images (text2image never splits time)."""
    if exp.task != "video2world":
        return 1
    return (num_frames - 1) // VAE_TEMPORAL_COMPRESSION + 1
