"""Tiny random Cosmos-Predict2 diffusers pipelines (text2image, video2world), built locally with no network and no
download: the `--tiny` demo of scripts/hf_text2image.py and scripts/hf_video2world.py, and the models the tests run
the scripts with. The output is noise (random weights); what is real is the whole path: tokenizer, T5 encoder,
Cosmos DiT, Wan VAE, scheduler, the diffusers pipeline and the PNG/mp4 writers.

Kept from the real models where it matters for the scripts: VAE 8x spatial / 4x temporal compression, 16 latent
channels, video2world's extra mask channel, T5-XXL's 1024-wide text embeddings. Everything else is shrunk (one DiT
block of 2x16 heads, a 1-layer T5, an 8-channel VAE). The RoPE tables cover latents of up to 8 frames and 16x16
patches: at most 256x256 pixels and 29 frames.

    python scripts/tiny_pipelines.py video2world DIR      # save one as a diffusers folder (usable as --model DIR)
"""

from __future__ import annotations

import json
import os
import string
import sys
from pathlib import Path

MAX_PIXELS = 256  # 16 patches x 2 x VAE 8
MAX_FRAMES = 29  # 8 latent frames
# Whole-word pieces of the tiny tokenizer; any other text falls back to single characters.
WORDS = ("A An a video of sks teal robot an image the moving colour pattern blocked keyword on with low quality "
         "blurry arm picks up red cube cup").split()


def tiny_t5(d_model: int = 1024, words: tuple[str, ...] | list[str] = WORDS):
    """(T5TokenizerFast, T5EncoderModel): a random 1-layer encoder with T5-XXL's hidden size and a T5-style
    tokenizer (Unigram pieces, "▁" word prefix, Metaspace, </s> appended), built in memory."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5Config, T5EncoderModel, T5TokenizerFast

    # Built like T5's own tokenizer: transformers 5 rebuilds every T5 tokenizer as exactly that and cannot load
    # another model type. Whole known words score above any split.
    pieces = ["<pad>", "</s>", "<unk>"] + [f"\u2581{w}" for w in dict.fromkeys(words)]
    pieces += ["\u2581"] + list(string.ascii_letters + string.digits + string.punctuation)
    tok = Tokenizer(models.Unigram([(w, 0.0 if i < 3 else -1.0 if w.startswith("\u2581") and len(w) > 1 else -5.0)
                                    for i, w in enumerate(pieces)], unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                                extra_ids=0)
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=len(pieces), d_model=d_model, d_kv=8, d_ff=64, num_layers=1, num_heads=2,
                   pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return tokenizer, T5EncoderModel(cfg).eval()


def build_tiny_t5(dst: Path, d_model: int = 1024, words=WORDS) -> Path:
    """tiny_t5() saved as a transformers folder (config, weights, tokenizer)."""
    tokenizer, model = tiny_t5(d_model, words)
    tokenizer.save_pretrained(dst)
    model.save_pretrained(dst)
    return Path(dst)


def tiny_components(kind: str, t5_dir: Path | None = None) -> dict:
    """The pipeline's components with random weights (seeded): T5 from t5_dir when given, else built in memory."""
    import torch
    from diffusers import AutoencoderKLWan, CosmosTransformer3DModel, FlowMatchEulerDiscreteScheduler

    if kind not in ("text2image", "video2world"):
        raise ValueError(f"kind must be text2image or video2world, not {kind!r}")
    if t5_dir is not None:
        from transformers import T5EncoderModel, T5TokenizerFast

        tokenizer, text_encoder = T5TokenizerFast.from_pretrained(t5_dir), T5EncoderModel.from_pretrained(t5_dir)
    else:
        tokenizer, text_encoder = tiny_t5()
    torch.manual_seed(0)
    transformer = CosmosTransformer3DModel(
        in_channels=16 + (1 if kind == "video2world" else 0),  # video2world: + the conditioning-mask channel
        out_channels=16,
        num_attention_heads=2,
        attention_head_dim=16,
        num_layers=1,
        mlp_ratio=2.0,
        text_embed_dim=1024,
        adaln_lora_dim=8,
        max_size=(8, 16, 16),
        patch_size=(1, 2, 2),
        rope_scale=(1.0, 1.0, 1.0) if kind == "text2image" else (1.0, 3.0, 3.0),
        concat_padding_mask=True,
        extra_pos_embed_type=None,
    )
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1, attn_scales=[],
                           temperal_downsample=[False, True, True], dropout=0.0)
    scheduler = FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True)
    return dict(text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, vae=vae, scheduler=scheduler)


def tiny_pipeline(kind: str, safety_checker, dtype=None, device=None):
    """A ready diffusers Cosmos2TextToImagePipeline / Cosmos2VideoToWorldPipeline, built in memory (no files)."""
    import diffusers

    cls = diffusers.Cosmos2TextToImagePipeline if kind == "text2image" else diffusers.Cosmos2VideoToWorldPipeline
    comps = tiny_components(kind)
    if dtype is not None:
        for name in ("text_encoder", "transformer", "vae"):
            comps[name] = comps[name].to(dtype)
    pipe = cls(**comps, safety_checker=safety_checker)
    return pipe.to(device) if device is not None else pipe


def save_tiny_pipeline(kind: str, dst: Path, t5_dir: Path | None = None) -> Path:
    """Write <dst>/{model_index.json, transformer/, vae/, text_encoder/, tokenizer/, scheduler/} in diffusers'
    layout, with safety_checker recorded as absent (the scripts always pass their own)."""
    dst = Path(dst)
    comps = tiny_components(kind, t5_dir)
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"):
        comps[name].save_pretrained(dst / name)
    import diffusers

    index = {
        "_class_name": "Cosmos2TextToImagePipeline" if kind == "text2image" else "Cosmos2VideoToWorldPipeline",
        "_diffusers_version": diffusers.__version__,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "CosmosTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLWan"],
    }
    (dst / "model_index.json").write_text(json.dumps(index, indent=2))
    return dst


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("text2image", "video2world"):
        if __package__ != "scripts":  # run as a file: the tree root makes `scripts` a package, as under -m
            sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        from scripts.user_errors import UserError, die

        die(UserError("usage: python scripts/tiny_pipelines.py text2image|video2world DIR", "command line",
                      "name the kind and the output folder").message, 2)
    print(save_tiny_pipeline(sys.argv[1], Path(os.path.abspath(sys.argv[2]))))
