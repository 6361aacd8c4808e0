"""Tiny, CPU-capable variants of the four Cosmos-NeMo-Assets post-training experiments.

Each `<seed experiment>_smoke` keeps its seed's model family, optimizer, scheduler, checkpointing, EMA and
parallelism code paths, and shrinks what makes it big: a 2-block 64-channel DiT with random init, 13-frame 64x64
videos (4 latent frames) or 64x64 images from `python -m scripts.make_smoke_dataset`, a random VAE checkpoint,
no T5 (training reads precomputed embeddings), context parallel 1 (override
`model_parallel.context_parallel_size=2` with 2 ranks to exercise it). Upstream registers every module in this
package, so dropping this file in is all it takes.

Precision follows the compute-dtype policy (`cosmos_predict2.portable.precision`): bfloat16 on NPU/CUDA and on CPUs
with native bf16, float32 on other CPUs (where emulated bf16 is 100-200x slower); `COSMOS_CPU_DTYPE=fp32|bf16`
(train.sh `--cpu_dtype=`) overrides it. The model and its pipeline get the same value.
"""

from hydra.core.config_store import ConfigStore
from megatron.core import parallel_state
from torch.utils.data import DataLoader, DistributedSampler

from cosmos_predict2.data.dataset_image import ImageDataset
from cosmos_predict2.data.dataset_video import Dataset
from cosmos_predict2.portable import precision
from imaginaire.lazy_config import LazyCall as L

SMOKE_VIDEO_DIR = "datasets/smoke/cosmos_nemo_assets"
SMOKE_IMAGE_DIR = "datasets/smoke/cosmos_nemo_assets_images"
SMOKE_VAE = "checkpoints/smoke/tokenizer.pth"
SMOKE_NUM_FRAMES = 13  # (13 - 1) / 4 + 1 = 4 latent frames: room for 1-2 conditional frames and CP=2
SMOKE_SIZE = (64, 64)


def _smoke_sampler(dataset) -> DistributedSampler:
    return DistributedSampler(
        dataset,
        num_replicas=parallel_state.get_data_parallel_world_size(),
        rank=parallel_state.get_data_parallel_rank(),
        shuffle=True,
        seed=0,
    )


def _loader(dataset) -> L:
    # num_workers=0: 2-core CI machines; the reader itself is upstream's.
    return L(DataLoader)(
        dataset=dataset,
        sampler=L(_smoke_sampler)(dataset=dataset),
        batch_size=1,
        drop_last=True,
        num_workers=0,
        pin_memory=False,
    )


_video_dataset = L(Dataset)(dataset_dir=SMOKE_VIDEO_DIR, num_frames=SMOKE_NUM_FRAMES, video_size=SMOKE_SIZE)
_image_dataset = L(ImageDataset)(dataset_dir=SMOKE_IMAGE_DIR, image_size=SMOKE_SIZE)

_TINY_NET = dict(model_channels=64, num_blocks=2, num_heads=4)


def _smoke(seed_model: str, size: str, task: str) -> dict:
    video = task == "video2world"
    dtype = precision.precision_name()  # decided once per process, at the first experiment
    pipe = dict(
        precision=dtype,
        net=dict(_TINY_NET),
        ema=dict(enabled=True),
        guardrail_config=dict(enabled=False),
        tokenizer=dict(vae_pth=SMOKE_VAE),
        text_encoder=dict(cosmos_t5_text_encoder=dict(ckpt_path="")),
    )
    if video:
        pipe.update(state_t=4, prompt_refiner_config=dict(enabled=False))
    return dict(
        defaults=[
            {"override /model": seed_model},
            {"override /optimizer": "fusedadamw"},
            {"override /scheduler": "lambdalinear"},
            {"override /ckpt_type": "standard"},
            {"override /dataloader_val": "mock" if video else "mock_image"},
            "_self_",
        ],
        job=dict(project="posttraining", group=f"{task}_smoke", name=f"{size}_cosmos_nemo_assets_smoke"),
        model=dict(
            config=dict(
                precision=dtype,
                pipe_config=pipe,
                model_manager_config=dict(dit_path=""),  # random init (fixed by the ema-and-random-init patch)
            )
        ),
        model_parallel=dict(context_parallel_size=1),
        dataloader_train=_loader(_video_dataset if video else _image_dataset),
        trainer=dict(
            distributed_parallelism="fsdp",
            max_iter=3,
            logging_iter=1,
            callbacks=dict(iter_speed=dict(hit_thres=2)),
        ),
        checkpoint=dict(save_iter=1000),
        optimizer=dict(lr=2 ** (-10)),
        scheduler=dict(warm_up_steps=[0], cycle_lengths=[1_000], f_max=[1.0], f_min=[0.0]),
    )


SMOKE_EXPERIMENTS = {
    "predict2_text2image_training_2b_cosmos_nemo_assets_smoke": _smoke("predict2_text2image_fsdp_2b", "2b", "text2image"),
    "predict2_text2image_training_14b_cosmos_nemo_assets_smoke": _smoke("predict2_text2image_fsdp_14b", "14b", "text2image"),
    "predict2_video2world_training_2b_cosmos_nemo_assets_smoke": _smoke("predict2_video2world_fsdp_2b", "2b", "video2world"),
    "predict2_video2world_training_14b_cosmos_nemo_assets_smoke": _smoke("predict2_video2world_fsdp_14b", "14b", "video2world"),
}

cs = ConfigStore.instance()
for _name, _node in SMOKE_EXPERIMENTS.items():
    cs.store(group="experiment", package="_global_", name=_name, node=_node)
