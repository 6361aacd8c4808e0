"""The support table: the ONE place that says which versions the overlay supports (doctor checks against it,
README quotes `python -m installer doctor --table`)."""

from __future__ import annotations

PYTHON = ((3, 10), (3, 11))  # inclusive
TORCH = ((2, 7, 1), (2, 13, 99))  # inclusive; newer: warn, older: fail
# torch_npu release -> (the torch it requires, the CANN it pairs with), exactly as each wheel states it: its
# Requires-Dist (torch==2.7.1 on aarch64, torch==2.7.1+cpu on x86_64) and the CANN table of its README (METADATA).
# Other 2.7.1.postN releases exist on PyPI; they are not in this table until their pairing has been read the same way.
TORCH_NPU = {
    "2.7.1": ("2.7.1", "8.3.RC1"),  # branch v2.7.1-7.2.0; the release this overlay is tested against
    "2.7.1.post2": ("2.7.1", "8.5.0"),  # branch v2.7.1-7.3.0
}
TORCH_NPU_FOR_TORCH = {(2, 7, 1): "2.7.1"}  # torch release -> the torch_npu release we recommend for it
CANN = TORCH_NPU[TORCH_NPU_FOR_TORCH[(2, 7, 1)]][1]
# Ascend SoC names (torch.npu.get_device_name) -> product line; the same table as portable/device.py NPU_PRODUCTS
# (a test checks they agree). torch_npu 2.7.1 _op_plugin_docs: npu_fusion_attention on Atlas A2 training parts,
# npu_rotary_mul 'interleave' on A2/A3, on the first Atlas training series only 'half' mode (head_dim 128).
NPU_PRODUCTS = (
    (r"Ascend910B\d", "Atlas A2 training"),
    (r"Ascend910_93\d*", "Atlas A3 training"),
    (r"Ascend910(A|B|ProA|ProB|PremiumA)", "Atlas training (910A)"),
)
NPU_TRAINING_PRODUCTS = ("Atlas A2 training", "Atlas A3 training")
NPU_LIMITED = {
    "Atlas training (910A)": "no npu_fusion_attention (attention runs the fp32 math path: slower, memory "
    "quadratic in sequence length), npu_rotary_mul only in 'half' mode with head_dim 128; a bf16 training run there is untested",
}
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
    "npu": f"Ascend NPU ({' / '.join(NPU_TRAINING_PRODUCTS)} parts): torch 2.7.1 + torch_npu 2.7.1, CANN {CANN}",
    "cuda": "NVIDIA CUDA: no TransformerEngine, apex or flash-attn needed",
    "cpu": "CPU: tiny configs only (smoke tests), no real experiment fits",
}


def cann_for_torch_npu(version: str) -> str | None:
    row = TORCH_NPU.get(version)
    return row[1] if row else None


def npu_product(soc: str | None) -> str | None:
    import re

    for pattern, product in NPU_PRODUCTS:
        if soc and re.fullmatch(pattern, soc):
            return product
    return None


def _v(t) -> str:
    return ".".join(str(x) for x in t)


def table_markdown() -> str:
    rows = [
        ("Python", f"{_v(PYTHON[0])} – {_v(PYTHON[1])}"),
        ("torch", f"{_v(TORCH[0])} – {TORCH[1][0]}.{TORCH[1][1]}.x"),
        ("torch_npu (NPU)", ", ".join(f"{v} with torch {_v(t)}" for t, v in TORCH_NPU_FOR_TORCH.items())),
        ("CANN (NPU)", CANN),
        ("torch_npu / CANN pairs", ", ".join(f"{n} + CANN {c}" for n, (_, c) in TORCH_NPU.items())),
        ("Ascend parts", ", ".join(NPU_TRAINING_PRODUCTS) + "; Atlas training (910A) with a warning"),
    ]
    rows += [(d, f">= {m}" + ("" if req else " (optional)")) for d, _, m, req, _ in LIBRARIES]
    rows.append(("video decoding", " or ".join(VIDEO_DECODERS)))
    rows.append(("ffmpeg libraries", " or ".join(FFMPEG_PROVIDERS) + " (warning only)"))
    rows += [(k, v) for k, v in OPTIONAL.items()]
    rows += [(f"device {k}", v) for k, v in DEVICES.items()]
    out = ["| component | supported |", "|---|---|"]
    out += [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(out)
