"""TEST DOUBLE of the `cosmos_guardrail` package (PyPI cosmos-guardrail), used only by tests/inference.

The real CosmosSafetyChecker downloads several GB of guardrail models (Llama-Guard, SigLIP classifier, RetinaFace),
which a CPU test cannot do. This double keeps the real class's interface and contract as diffusers and our
scripts use it:
  - CosmosSafetyChecker(checkpoint_id=...) is a torch.nn.Module (so a pipeline's .to(device) would move it);
  - .to(device=None, dtype=None) moves its parameters;
  - check_text_safety(prompt) -> bool: False when the prompt contains BLOCKED_WORD (the real one: blocklist + LLM);
  - check_video_safety(frames uint8 [T, H, W, C]) -> None when the video is judged unsafe (here: env
    FAKE_GUARDRAIL_BLOCK_VIDEO=1), else the frames with "faces" pixelated (here: the top-left BLUR x BLUR square
    replaced by its mean colour, the way the real RetinaFace filter pixelates detected faces).
Every call is appended as one JSON line to $FAKE_GUARDRAIL_LOG so tests can check what the scripts did with it.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch

BLOCKED_WORD = "blocked"
BLUR = 16


def _log(**event) -> None:
    path = os.environ.get("FAKE_GUARDRAIL_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(event) + "\n")


class CosmosSafetyChecker(torch.nn.Module):
    def __init__(self, checkpoint_id: str = "nvidia/Cosmos-Guardrail1", *args, **kwargs) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        _log(event="init", checkpoint_id=checkpoint_id)

    def to(self, device=None, dtype=None, *args, **kwargs):
        _log(event="to", device=str(device))
        return super().to(device=device, dtype=dtype) if (device or dtype) else self

    def check_text_safety(self, prompt: str) -> bool:
        safe = BLOCKED_WORD not in prompt.lower()
        _log(event="text", prompt=prompt, safe=safe, param_device=str(self.weight.device))
        return safe

    def check_video_safety(self, frames: np.ndarray):
        _log(event="video", shape=list(frames.shape), dtype=str(frames.dtype), param_device=str(self.weight.device))
        if os.environ.get("FAKE_GUARDRAIL_BLOCK_VIDEO") == "1":
            return None
        out = frames.copy()
        region = out[:, :BLUR, :BLUR, :]
        out[:, :BLUR, :BLUR, :] = region.reshape(region.shape[0], -1, region.shape[-1]).mean(axis=1)[:, None, None, :]
        return out

    @property
    def device(self) -> torch.device:
        return self.weight.device
