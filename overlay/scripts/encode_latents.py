"""Write the latent cache of a Video2World or Text2Image training set: one `<clip>.pt` per clip (or image), the VAE
encode done once.

    python -m scripts.encode_latents --EXP=<experiment> [--dataset_dir DIR] [--out DIR] [-- key=value ...]

Reads the experiment's training dataset config (dataset_dir, num_frames, video_size) and pipeline config (VAE
checkpoint, precision, sigma_data), decodes frames [0, num_frames) of every clip that has a T5 embedding, and stores
exactly what training's `pipe.encode(video)` gives for it (cosmos_predict2/data/latent_cache.py has the format).
Default output: <dataset_dir>/latents_<num_frames>x<H>x<W>. Train from it with
    bash train.sh --EXP=<experiment> -- +dataloader_train.dataset.latent_cache_dir=<out>
(plus `+dataloader_train.sampler.dataset.latent_cache_dir=<out>` where the experiment builds its sampler from a
second copy of the dataset config, as the Cosmos-NeMo-Assets ones do). For a Text2Image experiment it encodes every
image of the dataset's images/ (as its ImageDataset builds it); default output <dataset_dir>/latents_1x<H>x<W>.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

from scripts.user_errors import UserError

CONFIG = "cosmos_predict2/configs/base/config.py"
PRECISIONS = {"bfloat16": "bfloat16", "float16": "float16", "float32": "float32", "fp32": "float32",
              "bf16": "bfloat16", "fp16": "float16"}


def _fail(what: str, where: str, todo: str) -> int:
    """Print the one error line (UserError's formatter) and return the exit status 2."""
    print(UserError(what, where, todo).line(), file=sys.stderr)
    return 2


def _parse(argv):
    p = argparse.ArgumentParser(description="Encode a Video2World or Text2Image training set into a latent cache.")
    p.add_argument("--EXP", required=True, help="training experiment whose dataset and VAE to use")
    p.add_argument("--dataset_dir", default=None, help="dataset directory (default: the experiment's)")
    p.add_argument("--out", default=None, help="cache directory (default: <dataset_dir>/latents_<T>x<H>x<W>)")
    p.add_argument("--force", action="store_true", help="re-encode clips whose file already exists")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides after '--'")
    return p.parse_args(argv)


def encode_clip(tokenizer, frames_T_H_W_C, video_size, dtype, device, sigma_data):
    """The latent training's pipe.encode gives for these frames (normalisation as the pipeline does it)."""
    import torch

    from cosmos_predict2.data import clip_io

    clip = clip_io.frames_to_clip(frames_T_H_W_C, video_size).permute(1, 0, 2, 3)[None]  # [1, C, T, H, W] uint8
    x = clip.to(device=device, dtype=dtype) / 127.5 - 1.0  # Video2WorldPipeline._normalize_video_databatch_inplace
    with torch.no_grad():
        return (tokenizer.encode(x) * sigma_data).contiguous().float()[0]  # pipe.encode(...).contiguous().float()


def main(argv=None) -> int:
    args = _parse(argv)
    import torch
    from decord import VideoReader, cpu

    from cosmos_predict2.data import latent_cache
    from cosmos_predict2.portable import device as dev
    from imaginaire.lazy_config import instantiate
    from imaginaire.utils.config_helper import get_config_module, override

    opts = [o for o in (args.opts or []) if o != "--"]
    try:
        config = importlib.import_module(get_config_module(CONFIG)).make_config()
        config = override(config, ["--", f"experiment={args.EXP}", *opts])
    except Exception as e:  # hydra's own messages are multi-line
        return _fail(f"cannot load experiment {args.EXP}: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
                     "--EXP", "Pass a training experiment name, e.g. one listed by bash train.sh --help")
    ds = config.dataloader_train.dataset
    pipe_cfg = config.model.config.pipe_config
    dataset_dir = args.dataset_dir or ds.dataset_dir
    if "image_size" in ds and "num_frames" not in ds:  # a Text2Image experiment: upstream's ImageDataset
        return encode_images(args, ds, pipe_cfg, dataset_dir)
    num_frames, video_size = int(ds.num_frames), (int(ds.video_size[0]), int(ds.video_size[1]))
    video_dir, t5_dir = os.path.join(dataset_dir, "videos"), os.path.join(dataset_dir, "t5_xxl")
    if not os.path.isdir(video_dir):
        return _fail("no videos/ directory", dataset_dir, "Pass --dataset_dir=<dataset with videos/ and t5_xxl/>")
    clips = sorted(os.path.join(video_dir, f) for f in os.listdir(video_dir) if f.endswith(".mp4")
                   and os.path.exists(os.path.join(t5_dir, f[: -len(".mp4")] + ".pickle")))
    if not clips:
        return _fail("no clip with a T5 embedding", dataset_dir, "Run scripts/get_t5_embeddings.py first")
    out = args.out or os.path.join(dataset_dir, f"latents_{num_frames}x{video_size[0]}x{video_size[1]}")
    os.makedirs(out, exist_ok=True)
    prec = PRECISIONS.get(str(pipe_cfg.precision))
    if prec is None:
        return _fail(f"unknown pipeline precision {pipe_cfg.precision}", "model.config.pipe_config.precision",
                     "Use bfloat16, float16 or float32")
    dtype, device = getattr(torch, prec), dev.get_device()
    vae = pipe_cfg.tokenizer.vae_pth
    t0 = time.perf_counter()
    tokenizer = instantiate(pipe_cfg.tokenizer)
    print(f"VAE {vae} on {device} ({prec}), {len(clips)} clip(s), {num_frames} frames at {video_size[0]}x"
          f"{video_size[1]} -> {out}", flush=True)
    done = 0
    for path in clips:
        dst = latent_cache.cache_file(out, path)
        if os.path.exists(dst) and not args.force:
            continue
        vr = VideoReader(path, ctx=cpu(0), num_threads=2)
        if len(vr) < num_frames:
            print(f"warning: skipping {path}: {len(vr)} frames, at least {num_frames} are required", flush=True)
            continue
        frames = vr.get_batch(list(range(num_frames))).asnumpy()
        try:
            fps = float(vr.get_avg_fps())
        except Exception:  # as upstream's reader: unknown FPS counts as 16
            fps = 16.0
        del vr
        lat = encode_clip(tokenizer, frames, video_size, dtype, device, float(pipe_cfg.sigma_data))
        latent_cache.save(dst, lat, num_frames=num_frames, video_size=video_size, vae=vae, fps=fps, start_frame=0,
                          precision=prec)
        done += 1
    dev.synchronize()
    print(f"encoded {done} clip(s) in {time.perf_counter() - t0:.1f} s; train with "
          f"+dataloader_train.dataset.latent_cache_dir={out}", flush=True)
    return 0


def encode_images(args, ds, pipe_cfg, dataset_dir) -> int:
    """The Text2Image side: one latent per image of upstream's ImageDataset, from the image tensor that dataset
    builds (resize to image_size, [-1, 1]), encoded as Text2ImagePipeline.encode does in training."""
    import torch

    from cosmos_predict2.data import latent_cache
    from cosmos_predict2.data.dataset_image import ImageDataset
    from cosmos_predict2.portable import device as dev
    from imaginaire.lazy_config import instantiate

    image_size = (int(ds.image_size[0]), int(ds.image_size[1]))
    if not os.path.isdir(os.path.join(dataset_dir, "images")):
        return _fail("no images/ directory", dataset_dir, "Pass --dataset_dir=<dataset with images/ and t5_xxl/>")
    dataset = ImageDataset(dataset_dir, list(image_size))
    if not dataset.image_paths:
        return _fail("no image with a T5 embedding", dataset_dir, "Run scripts/get_t5_embeddings.py first")
    out = args.out or os.path.join(dataset_dir, f"latents_1x{image_size[0]}x{image_size[1]}")
    os.makedirs(out, exist_ok=True)
    device, vae = dev.get_device(), pipe_cfg.tokenizer.vae_pth
    t0 = time.perf_counter()
    tokenizer = instantiate(pipe_cfg.tokenizer)
    print(f"VAE {vae} on {device}, {len(dataset.image_paths)} image(s) at {image_size[0]}x{image_size[1]} -> {out}",
          flush=True)
    done = 0
    for path in dataset.image_paths:
        dst = latent_cache.cache_file(out, path)
        if os.path.exists(dst) and not args.force:
            continue
        x = dataset._get_image(path)[None, :, None].to(device)  # [1, C, 1, H, W] as the pipeline sees the batch
        with torch.no_grad():
            lat = (tokenizer.encode(x) * float(pipe_cfg.sigma_data)).contiguous().float()[0]
        latent_cache.save(dst, lat, num_frames=1, video_size=image_size, vae=vae, fps=16.0, start_frame=0,
                          precision=str(pipe_cfg.precision))
        done += 1
    dev.synchronize()
    print(f"encoded {done} image(s) in {time.perf_counter() - t0:.1f} s; train with "
          f"+dataloader_train.dataset.latent_cache_dir={out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
