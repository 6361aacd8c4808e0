"""Write the tiny synthetic datasets and the random VAE checkpoint that the *_smoke experiments read.

    python -m scripts.make_smoke_dataset [--root .] [--videos 2] [--frames 13] [--size 64] [--width W] [--seed 0]

Layout (what upstream's dataset readers load):
    datasets/smoke/cosmos_nemo_assets/{videos/*.mp4, t5_xxl/*.pickle, metas/*.txt}
    datasets/smoke/cosmos_nemo_assets_images/{images/*.jpg, t5_xxl/*.pickle}
    checkpoints/smoke/tokenizer.pth   random Wan2.1 VAE state dict (fp32, like the released one)
Videos get exactly the smoke experiments' num_frames (13) by default: one frame window, deterministic data (the
video-dataset-exact-num-frames patch made upstream's reader accept that; it needed strictly more).
"""

from __future__ import annotations

import os
import pickle
import sys

import numpy as np

if __package__ != "scripts":  # loaded by path: the tree root makes `scripts` a package, as under -m
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scripts.user_errors import OneLineParser, UserError, run_main  # noqa: E402

SMOKE_VIDEO_DIR = "datasets/smoke/cosmos_nemo_assets"
SMOKE_IMAGE_DIR = "datasets/smoke/cosmos_nemo_assets_images"
SMOKE_VAE = "checkpoints/smoke/tokenizer.pth"
T5_DIM = 1024


def _write_mp4(path: str, frames: np.ndarray, fps: int = 16) -> None:
    import av

    with av.open(path, mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _moving_pattern(rng: np.random.Generator, frames: int, size: int, width: int | None = None) -> np.ndarray:
    """Smooth colour gradients that drift over time: compressible, and not constant (never train on zeros)."""
    width = width or size
    y, x = np.mgrid[0:size, 0:width].astype(np.float32) / size
    phase = rng.uniform(0, 2 * np.pi, size=3)
    out = np.empty((frames, size, width, 3), dtype=np.uint8)
    for t in range(frames):
        for c in range(3):
            out[t, :, :, c] = 127.5 + 127.5 * np.sin(2 * np.pi * (x + y * (c + 1) / 3) + phase[c] + 0.3 * t)
    return out


def _write_t5(path: str, rng: np.random.Generator) -> None:
    tokens = int(rng.integers(8, 24))
    with open(path, "wb") as f:
        pickle.dump([rng.standard_normal((tokens, T5_DIM)).astype(np.float32) * 0.1], f)


def write_video_dataset(root: str, videos: int, frames: int, size: int, rng: np.random.Generator,
                        width: int | None = None) -> str:
    base = os.path.join(root, SMOKE_VIDEO_DIR)
    for sub in ("videos", "t5_xxl", "metas"):
        os.makedirs(os.path.join(base, sub), exist_ok=True)
    for i in range(videos):
        stem = f"smoke_{i:03d}"
        _write_mp4(os.path.join(base, "videos", stem + ".mp4"), _moving_pattern(rng, frames, size, width))
        _write_t5(os.path.join(base, "t5_xxl", stem + ".pickle"), rng)
        with open(os.path.join(base, "metas", stem + ".txt"), "w") as f:
            f.write(f"a synthetic moving colour pattern number {i}\n")
    return base


def write_image_dataset(root: str, images: int, size: int, rng: np.random.Generator, width: int | None = None) -> str:
    import imageio.v3 as iio

    base = os.path.join(root, SMOKE_IMAGE_DIR)
    for sub in ("images", "t5_xxl"):
        os.makedirs(os.path.join(base, sub), exist_ok=True)
    for i in range(images):
        stem = f"smoke_{i:03d}"
        iio.imwrite(os.path.join(base, "images", stem + ".jpg"), _moving_pattern(rng, 1, size, width)[0], extension=".jpg")
        _write_t5(os.path.join(base, "t5_xxl", stem + ".pickle"), rng)
    return base


def write_random_vae(root: str, seed: int) -> str:
    """Upstream's Wan2.1 VAE has a fixed architecture and needs a state-dict file; a random one drives tests."""
    import torch

    from cosmos_predict2.tokenizers.tokenizer import VAE_

    path = os.path.join(root, SMOKE_VAE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.manual_seed(seed)
    vae = VAE_(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
               temperal_downsample=[False, True, True], dropout=0.0)
    # fp32 like the released Wan2.1 VAE: upstream loads it on rank 0 only and broadcasts it into the other ranks'
    # fp32 modules, so another dtype makes the ranks' broadcasts differ and hang.
    state = vae.state_dict()
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def _bad_flag(what: str, where: str, todo: str) -> UserError:
    e = UserError(what, where, todo)
    e.exit_code = 2  # a usage error, as argparse's
    return e


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=".", help="tree root to write under (default: current directory)")
    p.add_argument("--videos", type=int, default=2)
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--frames", type=int, default=13,
                   help="frames per video (>= 13, the smoke num_frames; 13 leaves one frame window: deterministic data)")
    p.add_argument("--size", type=int, default=64, help="height (and width unless --width) in pixels, a multiple of 16")
    p.add_argument("--width", type=int, default=None, help="width in pixels, a multiple of 16 (default: --size); "
                   "e.g. --size 704 --width 1280 --frames 94 for real 720p Video2World runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-vae", action="store_true", help="do not write checkpoints/smoke/tokenizer.pth (about 0.5 GB)")
    a = p.parse_args(argv)
    for flag, val in (("--size", a.size), ("--width", a.width if a.width is not None else a.size)):
        if val % 16 or val <= 0:
            raise _bad_flag(f"{val} is not a positive multiple of 16", flag,
                            "pass a multiple of 16 (the VAE and the patching need it)")
    if a.frames < 13:
        raise _bad_flag(f"{a.frames} frames are fewer than the smoke experiments' num_frames", "--frames",
                        "pass --frames 13 or more")
    for flag, val in (("--videos", a.videos), ("--images", a.images)):
        if val < 1:
            raise _bad_flag(f"{val} is not a positive count", flag, "pass 1 or more")
    rng = np.random.default_rng(a.seed)
    print(write_video_dataset(a.root, a.videos, a.frames, a.size, rng, a.width))
    print(write_image_dataset(a.root, a.images, a.size, rng, a.width))
    if not a.skip_vae:
        print(write_random_vae(a.root, a.seed))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
