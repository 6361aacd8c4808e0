"""Portable ops and device layer for Cosmos-Predict2 on Ascend NPU, CUDA without TransformerEngine/apex, and CPU.

Modules (import them directly; this package imports nothing eagerly so that `device` detection happens once,
when first needed):
- device:     DEVICE_TYPE detected once (COSMOS_DEVICE forces it), streams, memory stats, dist backend.
- precision:  the compute dtype, decided once: bf16 on NPU/CUDA and bf16-native CPUs, else fp32 (COSMOS_CPU_DTYPE).
- attention:  attention() with named backends (COSMOS_ATTN_BACKEND), DotProductAttention (TE drop-in).
- rope:       apply_rotary_pos_emb() with TE fused-kernel numerics and a per-freqs cos/sin cache.
- rmsnorm:    RMSNorm with TE module semantics (ones init, fp32 math, _extra_state).
- te_compat:  `pytorch` namespace for `te.pytorch.RMSNorm`.
- optim:      FusedAdam (AdamW with fp32 master weights, DTensor/FSDP2 aware).
- sac:        is_attention_op() for selective activation checkpointing policies (op names from attention's registry).
- autoload:   one-line diagnosis when `import torch` fails inside torch_npu's autoload (standard library only).
- ema_overlap: the one-device EMA update on a CUDA side stream, waited for before the next parameter write.
The other modules (adaln, block_compile, fsdp_policy, shards, step_timing, ...) are listed in README's overlay table.
Only torch and the standard library are imported (torch_npu only inside a try).
"""

__all__ = ["device", "precision", "attention", "rope", "rmsnorm", "te_compat", "optim", "sac", "autoload", "ema_overlap"]
