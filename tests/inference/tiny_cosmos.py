"""Test-side access to the tiny random pipelines (built by overlay/scripts/tiny_pipelines.py, which the scripts'
--tiny uses too), and real-size configs without weights for --random_weights timing runs."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dataprep"))
from dataprep_helpers import build_tiny_t5, tiny_pipelines  # noqa: E402


def tiny_components(kind: str, t5_dir: Path | None = None):
    return tiny_pipelines().tiny_components(kind, t5_dir)


def save_tiny_pipeline(kind: str, dst: Path, t5_dir: Path | None = None) -> Path:
    """The overlay's builder, with the tests' tiny T5 (tests/dataprep's vocabulary) when none is given."""
    if t5_dir is None:
        t5_dir = build_tiny_t5(dst.parent / f"{dst.name}-t5")
    return tiny_pipelines().save_tiny_pipeline(kind, dst, t5_dir)


# Real Cosmos-Predict2 sizes (the parameters diffusers' public conversion script uses for these checkpoints).
_REAL = {
    "2B": dict(num_attention_heads=16, attention_head_dim=128, num_layers=28),
    "14B": dict(num_attention_heads=40, attention_head_dim=128, num_layers=36),
}
_ROPE = {"Text2Image": (1.0, 4.0, 4.0), "2B-Video2World": (1.0, 3.0, 3.0), "14B-Video2World": (20 / 24, 2.0, 2.0)}
# google-t5/t5-11b's encoder
_T5_11B = dict(vocab_size=32128, d_model=1024, d_kv=128, d_ff=65536, num_layers=24, num_heads=128,
               relative_attention_num_buckets=32, feed_forward_proj="relu", layer_norm_epsilon=1e-6,
               pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)


def write_real_size_configs(name: str, dst: Path) -> Path:
    """A diffusers folder with the REAL architecture configs of `name` (2B|14B-Text2Image|Video2World) and no
    weights, for `--random_weights` runs on a machine without hub access (timing and memory at real size). The
    tokenizer is the tiny T5-style one (T5's sentencepiece model cannot be fetched here); prompts are padded to
    512 tokens either way, so the encoder's cost is the real one."""
    import torch
    from diffusers import AutoencoderKLWan, CosmosTransformer3DModel, FlowMatchEulerDiscreteScheduler
    from transformers import T5Config

    size, kind = name.split("-", 1)
    rope = _ROPE["Text2Image"] if kind == "Text2Image" else _ROPE[name]
    dst.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):  # configs only: nothing is allocated
        CosmosTransformer3DModel(
            in_channels=16 + (1 if kind == "Video2World" else 0), out_channels=16, mlp_ratio=4.0,
            text_embed_dim=1024, adaln_lora_dim=256, max_size=(128, 240, 240), patch_size=(1, 2, 2),
            rope_scale=rope, concat_padding_mask=True, extra_pos_embed_type=None, **_REAL[size],
        ).save_config(dst / "transformer")
        AutoencoderKLWan().save_config(dst / "vae")  # diffusers' defaults are the Wan2.1 VAE
    T5Config(**_T5_11B).save_pretrained(dst / "text_encoder")
    FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True).save_pretrained(dst / "scheduler")
    import tempfile

    from transformers import T5TokenizerFast

    with tempfile.TemporaryDirectory() as tmp:
        T5TokenizerFast.from_pretrained(build_tiny_t5(Path(tmp), d_model=8)).save_pretrained(dst / "tokenizer")
    cls = "Cosmos2TextToImagePipeline" if kind == "Text2Image" else "Cosmos2VideoToWorldPipeline"
    index = {
        "_class_name": cls, "safety_checker": [None, None],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "T5EncoderModel"], "tokenizer": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "CosmosTransformer3DModel"], "vae": ["diffusers", "AutoencoderKLWan"],
    }
    (dst / "model_index.json").write_text(json.dumps(index, indent=2))
    return dst


if __name__ == "__main__":
    # python tests/inference/tiny_cosmos.py video2world /tmp/tiny-v2w         tiny random pipeline with weights
    # python tests/inference/tiny_cosmos.py --real-configs 2B-Video2World DIR  real-size configs, no weights
    if sys.argv[1] == "--real-configs":
        print(write_real_size_configs(sys.argv[2], Path(os.path.abspath(sys.argv[3]))))
    else:
        print(save_tiny_pipeline(sys.argv[1], Path(os.path.abspath(sys.argv[2]))))
