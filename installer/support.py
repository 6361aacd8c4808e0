"""The support table: the ONE place that says which versions the overlay supports (doctor checks against it,
README quotes `python -m installer doctor --table`)."""

from __future__ import annotations

PYTHON = ((3, 10), (3, 11))  # inclusive
TORCH = ((2, 7, 1), (2, 13, 99))  # inclusive; newer: warn, older: fail
TORCH_NPU_FOR_TORCH = {(2, 7, 1): "2.7.1"}  # torch release -> torch_npu release built for it
CANN = "8.3.RC1"
# (distribution, import name, minimum version, required for training, why)
LIBRARIES = (
    ("transformers", "transformers", "4.51.0", True, "Qwen2.5-VL and T5 modules are imported by every experiment"),
    ("diffusers", "diffusers", "0.34.0", True, "Cosmos2 pipelines and schedulers"),
    ("megatron-core", "megatron.core", "0.12.0", True, "upstream's parallel state and FSDP helpers"),
)
VIDEO_DECODERS = ("decord", "av")  # one of them is needed by the video datasets
FFMPEG_PROVIDERS = ("av", "imageio_ffmpeg")  # for writing videos (inference, reports)
OPTIONAL = {
    "apex": "not needed: the overlay ships a portable FusedAdam with fp32 master weights",
    "transformer_engine": "not needed: RMSNorm, attention and RoPE come from cosmos_predict2/portable",
    "flash_attn": "not needed: attention goes through SDPA / npu_fusion_attention",
}
DEVICES = {
    "npu": f"Ascend NPU: torch 2.7.1 + torch_npu 2.7.1, CANN {CANN}",
    "cuda": "NVIDIA CUDA: no TransformerEngine, apex or flash-attn needed",
    "cpu": "CPU: tiny configs only (smoke tests), no real experiment fits",
}


def _v(t) -> str:
    return ".".join(str(x) for x in t)


def table_markdown() -> str:
    rows = [
        ("Python", f"{_v(PYTHON[0])} – {_v(PYTHON[1])}"),
        ("torch", f"{_v(TORCH[0])} – {TORCH[1][0]}.{TORCH[1][1]}.x"),
        ("torch_npu (NPU)", ", ".join(f"{v} with torch {_v(t)}" for t, v in TORCH_NPU_FOR_TORCH.items())),
        ("CANN (NPU)", CANN),
    ]
    rows += [(d, f">= {m}" + ("" if req else " (optional)")) for d, _, m, req, _ in LIBRARIES]
    rows.append(("video decoding", " or ".join(VIDEO_DECODERS)))
    rows.append(("ffmpeg libraries", " or ".join(FFMPEG_PROVIDERS) + " (warning only)"))
    rows += [(k, v) for k, v in OPTIONAL.items()]
    rows += [(f"device {k}", v) for k, v in DEVICES.items()]
    out = ["| component | supported |", "|---|---|"]
    out += [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(out)
