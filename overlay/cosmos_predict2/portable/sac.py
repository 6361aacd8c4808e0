"""Which ops selective activation checkpointing should treat as "attention" (and therefore save).

Upstream's policies save ops whose name contains "flash_attn" only, so with torch SDPA or
torch_npu.npu_fusion_attention the attention (the costliest op of a block) would be recomputed in backward.
`is_attention_op(func)` also recognises the aten SDPA kernels and the NPU fusion-attention ops.
"""

from __future__ import annotations

# Name fragments of the forward attention ops as they reach a checkpoint policy (str(func) of an OpOverload,
# e.g. "aten._scaled_dot_product_cudnn_attention.default", "npu.npu_fusion_attention.default").
_ATTENTION_OP_FRAGMENTS = (
    "flash_attn",  # flash-attn 2/3 registered ops (upstream's original rule)
    "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_flash_attention",  # also matches _scaled_dot_product_flash_attention_for_cpu
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_fused_attention_overrideable",
    "_scaled_dot_product_attention_math",  # only seen where the composite is not decomposed first
    "npu_fusion_attention",  # torch_npu forward op (its grad op is a backward op and never reaches the policy)
    "npu_flash_attention",
)

# SDPA's math fallback normally decomposes into matmuls/softmax before a policy sees it, so there is no single
# op to save there. Backward ops never reach a forward policy; the name test below excludes them regardless.


def is_attention_op(func) -> bool:
    """True for a forward attention op (aten SDPA kernels, NPU fusion attention, flash-attn)."""
    name = str(func)
    if "backward" in name or "_grad" in name:
        return False
    return any(fragment in name for fragment in _ATTENTION_OP_FRAGMENTS)


__all__ = ["is_attention_op"]
