"""Training from the latent cache (scripts/encode_latents.py + latent_cache_dir) equals encoding on the fly.

One 13-frame video (one frame window, so the on-the-fly reader and the cache hold the same frames), the same seed
and per-iteration seeding: the losses of 3 steps through upstream's trainer must agree. The smoke pipeline runs in
bfloat16 (its configured precision; fp32 training through the trainer is another patch's work), and the cache
stores the encoder's float32 output of the same bf16 computation, so the agreement is checked to 1e-6 relative.
"""

import math
import subprocess
import sys

import torch

from .trainer_runs import cpu_env, per_iteration_seed, tail, train, video_dataset_overrides

EXP = "predict2_video2world_training_2b_cosmos_nemo_assets_smoke"


def _encode(tree, dataset, out, exp=EXP):
    return subprocess.run([sys.executable, "-m", "scripts.encode_latents", f"--EXP={exp}", f"--dataset_dir={dataset}",
                           f"--out={out}"], cwd=tree, env=cpu_env(tree), capture_output=True, text=True, timeout=600)


def _fly_equals_cache(tree, exp, dataset, cache, tmp_path, seed):
    """3 trainer steps encoding on the fly and 3 from `cache`, same seed: the losses agree to 1e-6 relative, and
    each run says which source it uses."""
    common = [*video_dataset_overrides(dataset), per_iteration_seed(seed=seed), "trainer.max_iter=3"]
    fly, rows_fly = train(tree, exp, tmp_path / "fly", common)
    assert fly.returncode == 0, tail(fly)
    cached, rows_cache = train(tree, exp, tmp_path / "cache", [
        *common, f"+dataloader_train.dataset.latent_cache_dir={cache}",
        f"+dataloader_train.sampler.dataset.latent_cache_dir={cache}"])
    assert cached.returncode == 0, tail(cached)
    # the run says which source it uses
    assert "latents: VAE encode on the fly" in fly.stdout + fly.stderr
    assert "latents: read from the latent cache" in cached.stdout + cached.stderr
    a, b = [r["loss"] for r in rows_fly], [r["loss"] for r in rows_cache]
    assert len(a) == len(b) == 3 and all(math.isfinite(x) for x in a)
    assert all(math.isclose(x, y, rel_tol=1e-6) for x, y in zip(a, b)), (a, b)
    assert len(set(a)) == 3  # the steps differ from each other: equal losses are not a constant


def test_training_from_cache_equals_on_the_fly(smoke_tree, one_video_dataset, tmp_path):
    cache = tmp_path / "latents"
    r = _encode(smoke_tree, one_video_dataset, cache)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    files = list(cache.glob("*.pt"))
    assert len(files) == 1
    rec = torch.load(files[0], weights_only=True)
    assert rec["version"] == 1 and rec["num_frames"] == 13 and rec["video_size"] == [64, 64]
    assert rec["shape"] == [16, 4, 8, 8] and rec["latent"].dtype == torch.float32
    _fly_equals_cache(smoke_tree, EXP, one_video_dataset, cache, tmp_path, seed=5)


def test_cache_header_mismatch_is_one_error_line(smoke_tree, one_video_dataset, tmp_path):
    cache = tmp_path / "latents"
    assert _encode(smoke_tree, one_video_dataset, cache).returncode == 0
    f = next(cache.glob("*.pt"))
    rec = torch.load(f, weights_only=True)
    rec["num_frames"] = 21
    torch.save(rec, f)
    r = subprocess.run([sys.executable, "-c", (
        "import sys\nfrom cosmos_predict2.data.dataset_video import Dataset\n"
        "try:\n    Dataset(sys.argv[1], 13, (64, 64), latent_cache_dir=sys.argv[2])\n"
        "except ValueError as e:\n    print(e)\n"), str(one_video_dataset), str(cache)],
        cwd=smoke_tree, env=cpu_env(smoke_tree), capture_output=True, text=True, timeout=300)
    line = r.stdout.strip().splitlines()[-1]
    assert line == (f"error: latent cache has num_frames=21, training wants 13 ({f}). "
                    "Re-run python -m scripts.encode_latents for this dataset and config."), r.stdout + r.stderr


T2I = "predict2_text2image_training_2b_cosmos_nemo_assets_smoke"


def test_text2image_training_from_cache_equals_on_the_fly(smoke_tree, one_video_dataset, tmp_path):
    """Patch 0041: the same for Text2Image (one image; its dataset has no random augmentation)."""
    images = one_video_dataset.parent / "cosmos_nemo_assets_images"
    cache = tmp_path / "latents"
    r = _encode(smoke_tree, images, cache, exp=T2I)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    files = list(cache.glob("*.pt"))
    assert len(files) == 1
    rec = torch.load(files[0], weights_only=True)
    assert rec["num_frames"] == 1 and rec["latent"].dim() == 4 and rec["latent"].shape[1] == 1
    _fly_equals_cache(smoke_tree, T2I, images, cache, tmp_path, seed=7)
