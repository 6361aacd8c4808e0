"""Latent cache: the VAE encode moved from every training step to data preparation (patch 0034 hooks it in).

Written by `python -m scripts.encode_latents` (one file per clip, `<cache dir>/<clip stem>.pt`), read by the video
dataset when it is given `latent_cache_dir` (override `+dataloader_train.dataset.latent_cache_dir=DIR`, and the
same for `dataloader_train.sampler.dataset` where an experiment holds a second copy of the dataset config).

A file is a torch.save'd dict: the header below plus `latent`, the float32 tensor [C, T', H', W'] that training's
`pipe.encode(video)` gives for the clip's window [start_frame, start_frame + num_frames) (normalisation to [-1, 1]
in the pipeline's precision, the VAE's posterior mean, times sigma_data: nothing random). Training checks format,
version, num_frames and video_size against its own config and the VAE checkpoint name against the pipeline's, and
stops with one error line on a mismatch.

What the cache cannot hold: upstream's only per-sample augmentation of a video is the random window start in a
clip longer than num_frames. A cache holds one window per clip (start 0), so training from it sees that window
only; clips of exactly num_frames frames lose nothing. Anything random in the pipeline after the encode (noise,
sigma, number of conditional frames) is drawn in training as before.

Text2Image (patch 0041): the same file format for one image, num_frames 1 and video_size = the dataset's
image_size, latent [C, 1, H', W'] = what Text2ImagePipeline.encode gives for the image the dataset builds (resize to
image_size, [-1, 1]). Image datasets have no random augmentation, so training from the cache loses nothing.
"""

from __future__ import annotations

import os

import torch

from ..portable.user_error import line

FORMAT = "cosmos-predict2-overlay/latent-cache"
VERSION = 1
LATENT_KEY = "video_latent"
VAE_KEY = "video_latent_vae"


def cache_file(cache_dir: str, video_path: str) -> str:
    return os.path.join(cache_dir, os.path.splitext(os.path.basename(video_path))[0] + ".pt")


def vae_name(vae_pth) -> str:
    return os.path.basename(str(vae_pth or ""))


def save(path: str, latent: torch.Tensor, *, num_frames: int, video_size, vae: str, fps: float,
         start_frame: int = 0, precision: str = "") -> None:
    rec = {
        "format": FORMAT, "version": VERSION, "num_frames": int(num_frames),
        "video_size": [int(video_size[0]), int(video_size[1])], "vae": vae_name(vae), "fps": float(fps),
        "start_frame": int(start_frame), "precision": str(precision), "shape": list(latent.shape),
        "latent": latent.detach().to("cpu", torch.float32).contiguous(),
    }
    tmp = path + ".tmp"
    torch.save(rec, tmp)
    os.replace(tmp, path)


def _fail(what: str, where: str, todo: str) -> ValueError:
    """A ValueError holding the one error line (a builtin type: DataLoader workers rebuild it from its text)."""
    return ValueError(line(what, where, todo))


def load(path: str, num_frames: int, video_size) -> dict:
    redo = "Re-run python -m scripts.encode_latents for this dataset and config"
    if not os.path.isfile(path):
        raise _fail("latent cache file is missing", path, redo)
    try:
        rec = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated / not a torch file
        raise _fail(f"latent cache file is unreadable: {type(e).__name__}", path, redo) from None
    if not isinstance(rec, dict) or rec.get("format") != FORMAT:
        raise _fail("not a latent cache file", path, redo)
    if rec.get("version") != VERSION:
        raise _fail(f"latent cache version {rec.get('version')}, this tree reads {VERSION}", path, redo)
    want = {"num_frames": int(num_frames), "video_size": [int(video_size[0]), int(video_size[1])]}
    for k, v in want.items():
        if rec.get(k) != v:
            raise _fail(f"latent cache has {k}={rec.get(k)}, training wants {v}", path, redo)
    lat = rec.get("latent")
    if not isinstance(lat, torch.Tensor) or list(lat.shape) != list(rec.get("shape", [])) or lat.dim() != 4:
        raise _fail("latent cache tensor does not match its header shape", path, redo)
    return rec


class LatentCache:
    """The dataset side: checks every clip has a file (and the first header) when the dataset is built."""

    def __init__(self, cache_dir: str, num_frames: int, video_size, video_paths: list[str], kind: str = "clip"):
        self.cache_dir = cache_dir
        self.num_frames = int(num_frames)
        self.video_size = (int(video_size[0]), int(video_size[1]))
        if not os.path.isdir(cache_dir):
            raise _fail("latent cache directory does not exist", cache_dir,
                        "Write it with python -m scripts.encode_latents or drop latent_cache_dir")
        missing = [p for p in video_paths if not os.path.isfile(cache_file(cache_dir, p))]
        if missing:
            raise _fail(f"{len(missing)} of {len(video_paths)} {kind}s have no latent file, e.g. "
                        f"{os.path.basename(missing[0])}", cache_dir, "Re-run python -m scripts.encode_latents")
        if video_paths:
            load(cache_file(cache_dir, video_paths[0]), self.num_frames, self.video_size)
        try:
            from imaginaire.utils import log

            what = f"window [0, {self.num_frames}) per clip" if kind == "clip" else "one latent per image"
            log.info(f"latent cache {cache_dir}: {len(video_paths)} {kind}(s), {what}; "
                     "the VAE does not encode during training")
        except ImportError:  # pragma: no cover
            pass

    def sample(self, dataset, index: int) -> dict:
        """The training sample of clip `index` of upstream's video Dataset, with the latent instead of pixels."""
        video_path = dataset.video_paths[index]
        rec, t5_path, t5, mask = self._read(dataset, video_path, self.num_frames)
        h, w = self.video_size
        return {
            # upstream's model tells video from image batches by this key and reads its batch size; the pixels
            # are never read when the latent is present, so a [C, T, 1, 1] placeholder stands in for them
            "video": torch.zeros(3, self.num_frames, 1, 1, dtype=torch.uint8),
            LATENT_KEY: rec["latent"],
            VAE_KEY: rec["vae"],
            "video_name": {"video_path": video_path, "t5_embedding_path": t5_path},
            "t5_text_embeddings": t5,
            "t5_text_mask": mask,
            "fps": rec["fps"],
            "image_size": torch.tensor([h, w, h, w]),
            "num_frames": self.num_frames,
            "padding_mask": torch.zeros(1, h, w),
        }

    def sample_image(self, dataset, index: int) -> dict:
        """The training sample of image `index` of upstream's ImageDataset, with the latent instead of pixels."""
        rec, _, t5, mask = self._read(dataset, dataset.image_paths[index], 1)
        h, w = self.video_size
        return {
            # the batch key tells the pipeline it is an image batch; its pixels are never read when the latent is there
            "images": torch.zeros(3, 1, 1),
            LATENT_KEY: rec["latent"],
            VAE_KEY: rec["vae"],
            "t5_text_embeddings": t5,
            "t5_text_mask": mask,
            "fps": torch.ones(1, dtype=torch.float) * 16,  # upstream's dummy FPS for images
            "image_size": torch.tensor([h, w, h, w]),
            "num_frames": torch.ones(1),
            "padding_mask": torch.zeros(1, h, w),
        }

    def _read(self, dataset, path: str, num_frames: int):
        """The checked cache record of a clip or image, its T5 embedding padded to the dataset's token count and the
        mask (as upstream's datasets build them); the sample counts as good for the dataset's bad-sample skipping."""
        import numpy as np

        from cosmos_predict2.data import clip_io
        from cosmos_predict2.data.dataset_utils import _NUM_T5_TOKENS, _T5_EMBED_DIM

        rec = load(cache_file(self.cache_dir, path), num_frames, self.video_size)
        t5_path = os.path.join(dataset.t5_dir, os.path.splitext(os.path.basename(path))[0] + ".pickle")
        t5 = clip_io.load_t5(t5_path)
        n_tokens = t5.shape[0]
        if n_tokens < _NUM_T5_TOKENS:
            t5 = np.concatenate([t5, np.zeros((_NUM_T5_TOKENS - n_tokens, _T5_EMBED_DIM), dtype=np.float32)], axis=0)
        mask = torch.zeros(_NUM_T5_TOKENS, dtype=torch.int64)
        mask[:n_tokens] = 1
        clip_io.mark_good(dataset)
        return rec, t5_path, torch.from_numpy(t5), mask


_announced = False


def latent_from_batch(pipe, data_batch: dict):
    """Training side (Video2World and Text2Image pipelines): the cached latent of this batch, or None to encode on
    the fly."""
    global _announced
    lat = data_batch.get(LATENT_KEY)
    if not _announced:
        _announced = True
        from imaginaire.utils import log

        log.info("latents: " + ("read from the latent cache (no VAE encode in the training step)" if lat is not None
                                else "VAE encode on the fly in every training step"))
    if lat is None:
        return None
    want = vae_name(getattr(getattr(getattr(pipe, "config", None), "tokenizer", None), "vae_pth", ""))
    got = data_batch.get(VAE_KEY)
    got = got[0] if isinstance(got, (list, tuple)) and got else got
    if want and got and got != want:
        raise _fail(f"latent cache was encoded with VAE {got}, this run uses {want}", "latent_cache_dir",
                    "Re-run python -m scripts.encode_latents with this config")
    return lat.to(device=pipe.tensor_kwargs["device"]).contiguous().float()
