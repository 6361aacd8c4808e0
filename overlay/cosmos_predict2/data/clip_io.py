"""Cheap, robust per-clip reading for upstream's video/image datasets (hooked in by patches 0030-0033).

- `start_frame(total, n)`: a random window start; a clip with exactly `n` frames is enough (upstream called
  np.random.randint(0, 0), which raises).
- `frames_to_clip(frames_T_H_W_C, size)`: uint8 [T,H,W,C] -> uint8 [T,C,H,W] at `size`. A clip already at the
  target size is returned as it is (upstream converted 93 frames to float, resized each with antialias to the
  same size and converted back: the same bytes, several seconds of CPU per 720p clip). Otherwise one batched
  resize in float, with upstream's arithmetic (so the pixels equal upstream's).
- `load_t5(path)`: the [n_tokens, 1024] float array of a T5 pickle; an empty, truncated or malformed file raises
  ValueError with one line naming the file (upstream: a bare EOFError / AssertionError naming nothing).
- `skip_bad(dataset, paths, index, exc)`: the replacement index after a bad sample, with one warning naming the
  file and the reason; after `MAX_CONSECUTIVE_BAD` bad samples in a row it raises one line instead of looping
  (upstream's error path referenced `self.samples`, which does not exist, so one bad clip ended training).
"""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import torch

from ..portable.user_error import line  # builtin types here: DataLoader workers rebuild them from the text

MAX_CONSECUTIVE_BAD = 16
REDO = "Re-create it with scripts/get_t5_embeddings.py"


def start_frame(total_frames: int, num_frames: int) -> int:
    if total_frames < num_frames:
        raise ValueError(f"{total_frames} frames, at least {num_frames} are required")
    return int(np.random.randint(0, total_frames - num_frames + 1))


def frames_to_clip(frames: np.ndarray, size) -> torch.Tensor:
    """uint8 [T,H,W,C] (decord/numpy) -> uint8 [T,C,H,W] at size (H, W)."""
    clip = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.uint8)).permute(0, 3, 1, 2)
    h, w = int(size[0]), int(size[1])
    if tuple(clip.shape[-2:]) == (h, w):
        return clip.contiguous()
    import torchvision.transforms.functional as F

    # upstream's ToTensorVideo + Resize_Preprocess + clamp(x*255).to(uint8), as one batched call
    resized = F.resize(clip.float() / 255.0, [h, w], antialias=True)
    return torch.clamp(resized * 255.0, 0, 255).to(torch.uint8)


def load_t5(path: str) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            raw = pickle.load(f)
    except FileNotFoundError:
        raise ValueError(line("T5 embedding file is missing", path, REDO)) from None
    except (EOFError, pickle.UnpicklingError, AttributeError, ImportError, IndexError, ValueError) as e:
        kind = "empty" if isinstance(e, EOFError) else "not a readable pickle"
        raise ValueError(line(f"T5 embedding file is {kind}", path, REDO)) from None
    emb = raw[0] if isinstance(raw, list) and len(raw) == 1 else None
    if not isinstance(emb, np.ndarray) or emb.ndim != 2:
        raise ValueError(line("T5 embedding file does not hold [array(n_tokens, dim)]", path, REDO))
    return emb


def skip_bad(dataset, paths, index: int, exc: BaseException) -> int:
    """Warn once for the bad sample `paths[index]`; return the index to try instead."""
    bad = getattr(dataset, "_consecutive_bad", 0) + 1
    dataset._consecutive_bad = bad
    dataset.wrong_number = getattr(dataset, "wrong_number", 0) + 1
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if bad > MAX_CONSECUTIVE_BAD or len(paths) < 2:
        raise RuntimeError(line(f"{bad} unreadable samples in a row, the last {paths[index]} ({reason})",
                                f"dataset {getattr(dataset, 'dataset_dir', '?')}", "Fix or remove the bad files"))
    warnings.warn(f"skipping unreadable sample {paths[index]}: {reason}", stacklevel=2)
    other = int(np.random.randint(len(paths) - 1))
    return other if other < index % len(paths) else other + 1


def mark_good(dataset) -> None:
    dataset._consecutive_bad = 0
