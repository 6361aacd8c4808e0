"""train.sh refuses bad input before torchrun starts: one `error:` line, exit != 0, nothing created.

"torchrun never started" is shown by the output root staying absent: train.sh creates the job's log directory
(and tee the log file) only right before it runs torchrun, and every run here points IMAGINAIRE_OUTPUT_ROOT at a
fresh directory. These tests run the real train.sh against a skeleton tree (layout only); no training happens.
"""

from __future__ import annotations

import os

import pytest

from launcher_helpers import SMOKE, make_real_dataset, refused, run_train_sh

V2W_2B = "predict2_video2world_training_2b_cosmos_nemo_assets"
V2W_14B = "predict2_video2world_training_14b_cosmos_nemo_assets"
T2I_2B = "predict2_text2image_training_2b_cosmos_nemo_assets"
T2I_14B = "predict2_text2image_training_14b_cosmos_nemo_assets"
ALL = [T2I_2B, T2I_14B, V2W_2B, V2W_14B, *SMOKE.values()]


def test_unknown_experiment_lists_all_valid_ones(skeleton_tree):
    line = refused(skeleton_tree, ["--EXP=predict2_video2world_training_7b", "--nproc_per_node=1"])
    assert "predict2_video2world_training_7b" in line
    assert "Did you mean predict2_video2world_training_2b_cosmos_nemo_assets?" in line
    for name in ALL:
        assert name in line


def test_missing_experiment(skeleton_tree):
    assert "--EXP" in refused(skeleton_tree, ["--nproc_per_node=1"])


@pytest.mark.parametrize("flag", ["--bogus=1", "--nproc-per-node=2", "--EX=x", "positional"])
def test_unknown_flag(skeleton_tree, flag):
    line = refused(skeleton_tree, [f"--EXP={SMOKE['v2w_2b']}", flag])
    assert flag in line and "--help" in line


@pytest.mark.parametrize("flag,fragment", [
    ("--nproc_per_node=0", "nproc_per_node >= 1"),
    ("--nproc_per_node=two", "not a non-negative integer"),
    ("--nproc_per_node=-1", "not a non-negative integer"),
    ("--nproc_per_node=1.5", "not a non-negative integer"),
    ("--nnodes=0", "nnodes >= 1"),
    ("--nnodes=", "not a non-negative integer"),
    ("--node_rank=1", "0 <= node_rank <= 0"),
    ("--node_rank=x", "not a non-negative integer"),
    ("--master_port=0", "1 <= master_port <= 65535"),
    ("--master_port=65536", "1 <= master_port <= 65535"),
    ("--master_port=http", "not a non-negative integer"),
    ("--hccl_if_ip=300.1.1.1", "not an IPv4 address"),
    ("--hccl_if_ip=host.local", "not an IPv4 address"),
    ("--hccl_if_ip=::1", "not an IPv4 address"),
    ("--master_addr=a b", "not a host name or IP"),
])
def test_bad_values(skeleton_tree, flag, fragment):
    line = refused(skeleton_tree, [f"--EXP={SMOKE['v2w_2b']}", "--nproc_per_node=1", flag])
    assert fragment in line, line
    assert flag.split("=")[0] in line


def test_node_rank_must_be_below_nnodes(skeleton_tree):
    line = refused(skeleton_tree, [f"--EXP={SMOKE['v2w_2b']}", "--nnodes=2", "--node_rank=2",
                                   "--master_addr=10.0.0.1"])
    assert "0 <= node_rank <= 1" in line


def test_multi_node_needs_master_addr(skeleton_tree):
    line = refused(skeleton_tree, [f"--EXP={SMOKE['v2w_2b']}", "--nnodes=2", "--node_rank=1"])
    assert "--master_addr" in line


def test_world_not_divisible_by_experiment_cp(skeleton_tree):
    make_real_dataset(skeleton_tree, "video2world")
    line = refused(skeleton_tree, [f"--EXP={V2W_2B}", "--nproc_per_node=3"])
    assert "world size 3" in line and "context parallel size 2" in line and "from the experiment" in line


def test_world_not_divisible_by_override_cp(skeleton_tree):
    line = refused(skeleton_tree, [f"--EXP={SMOKE['v2w_2b']}", "--nproc_per_node=3", "--",
                                   "model_parallel.context_parallel_size=2"])
    assert "world size 3" in line and "N in {1}" in line


def test_heads_not_divisible_by_cp(skeleton_tree):
    # 14B: 40 heads; 16 ranks with CP 16 fit the world but not the heads
    line = refused(skeleton_tree, [f"--EXP={V2W_14B}", "--nproc_per_node=8", "--nnodes=2", "--master_addr=10.0.0.1",
                                   "--", "model_parallel.context_parallel_size=16"])
    assert "40 attention heads" in line and "N in {1, 2, 4, 8}" in line


def test_latent_frames_not_divisible_by_cp(skeleton_tree):
    # 2B: 16 heads divide by 16, but 93 frames -> 24 latent frames do not
    line = refused(skeleton_tree, [f"--EXP={V2W_2B}", "--nproc_per_node=8", "--nnodes=2", "--master_addr=10.0.0.1",
                                   "--", "model_parallel.context_parallel_size=16"])
    assert "24 latent frames" in line and "93 frames" in line and "N in {1, 2, 4, 8}" in line


def test_latent_frames_follow_num_frames_override(skeleton_tree):
    # 61 frames -> 16 latent frames: CP 8 fits 14B's 40 heads and 16 frames; 57 frames -> 15 does not
    line = refused(skeleton_tree, [f"--EXP={V2W_14B}", "--nproc_per_node=8", "--",
                                   "dataloader_train.dataset.num_frames=57"])
    assert "15 latent frames" in line
    line = refused(skeleton_tree, [f"--EXP={V2W_14B}", "--nproc_per_node=8", "--",
                                   "dataloader_train.dataset.num_frames=62"])
    assert "not 4k+1" in line


def test_smoke_latent_frames(skeleton_tree):
    # the smoke videos: 13 frames -> 4 latent frames, 4 heads: CP 4 fits, CP 8 does not
    line = refused(skeleton_tree, [f"--EXP={SMOKE['v2w_2b']}", "--nproc_per_node=8", "--",
                                   "model_parallel.context_parallel_size=8"])
    assert "4 attention heads" in line


@pytest.mark.parametrize("mode,why", [("atention_only", "is not one of none, linear_selfattn, mm_only"),
                                      ("block_wise", "gives block_wise no checkpoint function")])
def test_unknown_checkpointing_mode_is_refused_before_torchrun(skeleton_tree, mode, why):
    """Upstream would fail only once the net is built (ValueError "Invalid mode"; block_wise later, a TypeError)."""
    line = refused(skeleton_tree, [f"--EXP={SMOKE['v2w_2b']}", "--",
                                   f"model.config.pipe_config.net.sac_config.mode={mode}"])
    assert f"checkpointing mode '{mode}' " in line and why in line and "attention_only keeps the least" in line, line


def test_text2image_cannot_use_cp(skeleton_tree):
    line = refused(skeleton_tree, [f"--EXP={SMOKE['t2i_2b']}", "--nproc_per_node=2", "--",
                                   "model_parallel.context_parallel_size=2"])
    assert "1 latent frame" in line


def test_fsdp_shard_must_tile_world(skeleton_tree):
    make_real_dataset(skeleton_tree, "video2world")
    line = refused(skeleton_tree, [f"--EXP={V2W_2B}", "--nproc_per_node=12"])
    assert "FSDP shard size 8" in line


def test_valid_parallel_layout_reaches_data_check(skeleton_tree):
    # 14B, 8 ranks, CP 8: 40 heads and 24 latent frames divide -> the next check (data) speaks
    line = refused(skeleton_tree, [f"--EXP={V2W_14B}", "--nproc_per_node=8"])
    assert "dataset directory" in line


def test_missing_video_dataset_names_path_and_commands(skeleton_tree):
    line = refused(skeleton_tree, [f"--EXP={V2W_14B}", "--nproc_per_node=8"])
    assert os.path.join(skeleton_tree, "datasets/cosmos_nemo_assets") in line
    assert "python -m installer download --dataset cosmos-nemo-assets" in line
    assert "python -m scripts.get_t5_embeddings_from_cosmos_nemo_assets --dataset_path datasets/cosmos_nemo_assets" in line


def test_missing_image_dataset_names_extract_command(skeleton_tree):
    line = refused(skeleton_tree, [f"--EXP={T2I_2B}", "--nproc_per_node=1"])
    assert os.path.join(skeleton_tree, "datasets/cosmos_nemo_assets_images") in line
    assert "python -m scripts.extract_images_from_videos" in line and "--is_image" in line


def test_empty_dataset_dir(skeleton_tree):
    os.makedirs(os.path.join(skeleton_tree, "datasets/cosmos_nemo_assets/videos"))
    line = refused(skeleton_tree, [f"--EXP={V2W_14B}", "--nproc_per_node=8"])
    assert "has no videos/*.mp4" in line


def test_dataset_without_t5_embeddings(skeleton_tree):
    make_real_dataset(skeleton_tree, "video2world")
    os.remove(os.path.join(skeleton_tree, "datasets/cosmos_nemo_assets/t5_xxl/a.pickle"))
    line = refused(skeleton_tree, [f"--EXP={V2W_14B}", "--nproc_per_node=8"])
    assert "t5_xxl/*.pickle" in line and "get_t5_embeddings_from_cosmos_nemo_assets" in line


def test_missing_smoke_dataset_points_to_generator(skeleton_tree):
    import shutil

    shutil.rmtree(os.path.join(skeleton_tree, "datasets/smoke"))
    line = refused(skeleton_tree, [f"--EXP={SMOKE['v2w_14b']}"])
    assert "python -m scripts.make_smoke_dataset" in line


def test_dataset_dir_override_is_checked(skeleton_tree):
    line = refused(skeleton_tree, [f"--EXP={SMOKE['v2w_2b']}", "--", "dataloader_train.dataset.dataset_dir=/nonexistent/x",
                                   "dataloader_train.sampler.dataset.dataset_dir=/nonexistent/x"])
    assert "/nonexistent/x does not exist" in line


def test_dataset_dir_override_needs_sampler_copy(skeleton_tree):
    line = refused(skeleton_tree, [f"--EXP={SMOKE['v2w_2b']}", "--", "dataloader_train.dataset.dataset_dir=/data/x"])
    assert "dataloader_train.sampler.dataset.dataset_dir=/data/x" in line


@pytest.mark.parametrize("exp,nproc,task,file,model", [
    (V2W_2B, 2, "video2world", "checkpoints/nvidia/Cosmos-Predict2-2B-Video2World/model-720p-16fps.pt", "2B-Video2World"),
    (V2W_14B, 8, "video2world", "checkpoints/nvidia/Cosmos-Predict2-14B-Video2World/model-720p-16fps.pt", "14B-Video2World"),
    (T2I_2B, 1, "text2image", "checkpoints/nvidia/Cosmos-Predict2-2B-Text2Image/model.pt", "2B-Text2Image"),
    (T2I_14B, 8, "text2image", "checkpoints/nvidia/Cosmos-Predict2-14B-Text2Image/model.pt", "14B-Text2Image"),
])
def test_missing_checkpoint(skeleton_tree, exp, nproc, task, file, model):
    make_real_dataset(skeleton_tree, task)
    line = refused(skeleton_tree, [f"--EXP={exp}", f"--nproc_per_node={nproc}"])
    assert os.path.join(skeleton_tree, file) in line
    assert f"python -m installer download --model {model}" in line


def test_missing_tokenizer_after_model(skeleton_tree):
    make_real_dataset(skeleton_tree, "video2world")
    d = os.path.join(skeleton_tree, "checkpoints/nvidia/Cosmos-Predict2-2B-Video2World")
    os.makedirs(d)
    with open(os.path.join(d, "model-720p-16fps.pt"), "wb") as f:
        f.write(b"x")
    line = refused(skeleton_tree, [f"--EXP={V2W_2B}", "--nproc_per_node=2"])
    assert os.path.join(d, "tokenizer/tokenizer.pth") in line


def test_missing_smoke_vae(skeleton_tree):
    os.remove(os.path.join(skeleton_tree, "checkpoints/smoke/tokenizer.pth"))
    line = refused(skeleton_tree, [f"--EXP={SMOKE['t2i_2b']}"])
    assert "checkpoints/smoke/tokenizer.pth" in line and "make_smoke_dataset" in line


@pytest.mark.parametrize("override,fragment", [
    ("trainer.max_iter", "not key=value"),
    ("experiment=predict2_text2image_training_2b_cosmos_nemo_assets", "--EXP="),
    ("model_parallel.context_parallel_size=0", "not a positive integer"),
])
def test_bad_overrides(skeleton_tree, override, fragment):
    assert fragment in refused(skeleton_tree, [f"--EXP={SMOKE['v2w_2b']}", "--", override])


def test_not_a_tree(tmp_path):
    line = refused(str(tmp_path), [f"--EXP={SMOKE['v2w_2b']}"])
    assert "not a cosmos-predict2 tree" in line


def test_forced_npu_absent_fails_before_torchrun(skeleton_tree):
    """COSMOS_DEVICE=npu on a host without torch_npu: the device layer's own line, before anything starts."""
    line = refused(skeleton_tree, [f"--EXP={SMOKE['v2w_2b']}"], env={"COSMOS_DEVICE": "npu"})
    assert "COSMOS_DEVICE=npu" in line


def test_bad_cosmos_device(skeleton_tree):
    assert "COSMOS_DEVICE=tpu" in refused(skeleton_tree, [f"--EXP={SMOKE['v2w_2b']}"], env={"COSMOS_DEVICE": "tpu"})


@pytest.mark.parametrize("value", ["abc", "-1", "2.5", ""])
def test_bad_gc_every(skeleton_tree, value):
    line = refused(skeleton_tree, [f"--EXP={SMOKE['t2i_2b']}"], env={"COSMOS_GC_EVERY": value})
    assert f"COSMOS_GC_EVERY={value!r} is not a step count" in line and "(environment)" in line


def test_help_lists_flags_and_experiments():
    r = run_train_sh(["--help"], timeout=60)
    assert r.returncode == 0, r.stderr
    for flag in ("--EXP", "--nproc_per_node", "--nnodes", "--node_rank", "--master_addr", "--master_port",
                 "--hccl_if_ip", "--tree", "--dry-run"):
        assert flag in r.stdout
    for name in ALL:
        assert name in r.stdout


def test_python_without_torch(skeleton_tree, tmp_path):
    """PYTHON pointing at an interpreter without torch: one line naming it, before anything starts."""
    import subprocess
    import sys

    venv = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    bare = str(venv / "bin" / "python")
    line = refused(skeleton_tree, [f"--EXP={SMOKE['v2w_2b']}"], env={"PYTHON": bare})
    assert f"{bare} cannot import torch" in line


def test_tree_without_device_layer_is_refused(skeleton_tree):
    os.remove(os.path.join(skeleton_tree, "cosmos_predict2/portable/device.py"))
    line = refused(skeleton_tree, [f"--EXP={SMOKE['v2w_2b']}", "--nproc_per_node=1"])
    assert "has no cosmos_predict2/portable/device.py" in line and "installer apply" in line


@pytest.mark.parametrize("name,value", [("COSMOS_COMPILE_BLOCKS", "2"), ("COSMOS_COMPILE_BLOCKS", "maybe"),
                                        ("COSMOS_FUSED_ADAM", "yes please"), ("COSMOS_FSDP_ONE_DEVICE", "sometimes"),
                                        ("COSMOS_EMA_OVERLAP", "later"), ("COSMOS_METRICS_SYNC", "always")])
def test_bad_switch(skeleton_tree, name, value):
    """Read by the device layer's one boolean parser (env_flag) before torchrun starts."""
    line = refused(skeleton_tree, [f"--EXP={SMOKE['t2i_2b']}"], env={name: value})
    assert f"{name}={value!r} is not a boolean (environment)" in line
