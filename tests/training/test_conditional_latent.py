"""Video2World inference encodes only its conditioning frames (patch 0040, pipelines/conditional_latent.py).

With the smoke experiment's real Wan2.1 VAE (random weights, random per-frame latent statistics so that the image
and video normalisations differ), on CPU in fp32: the leading latent frames of encode_leading_frames equal those
of upstream's full `Video2WorldPipeline.encode`, the later ones are zero, and the cases it must not shortcut (an
image, no count, a count that needs every frame) give the full encode."""

import subprocess
import sys

from .trainer_runs import cpu_env

EXP = "predict2_video2world_training_2b_cosmos_nemo_assets_smoke"

SCRIPT = r"""
import importlib, sys, types, torch
from imaginaire.lazy_config import instantiate
from imaginaire.utils.config_helper import get_config_module, override
from cosmos_predict2.pipelines.video2world import Video2WorldPipeline
from cosmos_predict2.pipelines.conditional_latent import encode_leading_frames

config = importlib.import_module(get_config_module("cosmos_predict2/configs/base/config.py")).make_config()
config = override(config, ["--", "experiment=" + sys.argv[1]])
pipe_cfg = config.model.config.pipe_config
tok = instantiate(pipe_cfg.tokenizer)
tok.to(dtype=torch.float32)
torch.manual_seed(0)
m = tok.model
m.video_mean = torch.randn_like(m.video_mean)
m.video_std = torch.rand_like(m.video_std) + 0.5
m.img_mean, m.img_std = m.video_mean[:, :, :1] + 1.0, m.video_std[:, :, :1] * 2.0  # unlike the video statistics
pipe = types.SimpleNamespace(tokenizer=tok, sigma_data=float(pipe_cfg.sigma_data))
pipe.encode = lambda state: Video2WorldPipeline.encode(pipe, state)  # upstream's encode, this tokenizer

calls = []
real_encode = pipe.encode
pipe.encode = lambda state: calls.append(state.shape[2]) or real_encode(state)
video = torch.rand(1, 3, 17, 64, 64) * 2 - 1  # 17 frames -> 5 latent frames
full = real_encode(video)
assert full.shape[2] == 5, full.shape
for n, pixels in ((1, 5), (2, 5), (3, 9), (torch.tensor([2, 1]), 5)):
    calls.clear()
    got = encode_leading_frames(pipe, video, n)
    k = int(n.max()) if isinstance(n, torch.Tensor) else n
    assert calls == [pixels], (n, calls)  # only the frames the leading latents depend on
    assert got.shape == full.shape
    err = (got[:, :, :k] - full[:, :, :k]).abs().max().item()
    assert err <= 1e-5 * full[:, :, :k].abs().max().item(), (n, err)
    assert got[:, :, k:].abs().max().item() == 0.0
for n, x in ((None, video), (5, video), (1, video[:, :, :1]), (2, video[:, :, :5])):
    calls.clear()
    got = encode_leading_frames(pipe, x, n)
    assert calls == [x.shape[2]], (n, calls)  # the whole input, as upstream
print("ok")
"""


def test_inference_encodes_only_conditioning_frames(smoke_tree):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, EXP], cwd=smoke_tree, env=cpu_env(smoke_tree),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout[-3000:] + proc.stderr[-3000:]
