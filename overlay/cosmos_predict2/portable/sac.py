"""Which ops selective activation checkpointing should treat as "attention" (and therefore save).

Upstream's policies save ops whose name contains "flash_attn" only, so with torch SDPA or
torch_npu.npu_fusion_attention the attention (the costliest op of a block) would be recomputed in backward.
`is_attention_op(func)` recognises upstream's flash-attn ops and every op a registered attention backend declares
in its `saved_ops` (portable/attention.py): a backend registered there is saved here without editing this file.

`attention_only_context_fn` is the checkpointing mode "attention_only" (patch sac-attention-only-mode): it saves
each block's self-attention output and recomputes everything else, every matmul included.
"""

from __future__ import annotations

import collections

from . import attention

# flash-attn 2/3 registered ops: upstream's original rule (not a portable backend, kept for upstream's nets).
_UPSTREAM_FRAGMENTS = ("flash_attn",)


def attention_op_fragments() -> tuple[str, ...]:
    """Name fragments of the forward attention ops as they reach a checkpoint policy (str(func) of an OpOverload,
    e.g. "aten._scaled_dot_product_cudnn_attention.default", "npu.npu_fusion_attention.default")."""
    return _UPSTREAM_FRAGMENTS + attention.saved_op_fragments()


# The answer per op, kept while the registry is unchanged: a checkpoint policy asks for every op a block dispatches
# (4,531 per step of the 28-block 2B Text2Image net with eager blocks), and naming the op and matching every
# backend's fragments cost ~5 us each, 25 ms of host time per step on a 2-core CPU (bench/bench_sac_policy.py).
_answers: dict = {}
_answers_for: dict = {}  # the attention.BACKENDS the answers were computed from (a copy)


def _is_attention_name(name: str) -> bool:
    if "backward" in name or "_grad" in name:
        return False
    return any(fragment in name for fragment in attention_op_fragments())


def is_attention_op(func) -> bool:
    """True for a forward attention op of a registered backend or flash-attn; never for a backward op."""
    global _answers_for
    if attention.BACKENDS != _answers_for:  # a backend registered, replaced or removed since: ask again
        _answers.clear()
        _answers_for = dict(attention.BACKENDS)
    try:
        return _answers[func]
    except KeyError:
        answer = _answers[func] = _is_attention_name(str(func))
        return answer
    except TypeError:  # an unhashable op object
        return _is_attention_name(str(func))


def attention_only_context_fn():
    """Checkpoint contexts that save the self-attention forward of each block and recompute everything else.

    Upstream's predict2_2b_720 policy also saves 7 of the block's 16 matmul outputs (8 D values per token, the MLP's
    4D-wide first layer among them): 10 D values per token and block in all against 2 here (bench/bench_sac_modes.py
    measures both). Recomputing those matmuls costs 16 D^2 more FLOPs per token and block, about 3 % of a 720p
    Video2World step's FLOPs, where attention is 86 % of them. Which attention is the self one follows upstream's
    predict2 policies: a block runs self- then cross-attention, and the first of each pair is saved (cross-attention
    over the 512 text tokens is cheap to recompute)."""
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

    seen = collections.Counter()  # attention ops per pass (forward / recompute), mod 2

    def policy_fn(ctx, func, *args, **kwargs):
        if is_attention_op(func):
            phase = "recompute" if ctx.is_recompute else "forward"
            seen[phase] = (seen[phase] + 1) % 2
            if seen[phase]:
                return CheckpointPolicy.MUST_SAVE
        return CheckpointPolicy.PREFER_RECOMPUTE

    return create_selective_checkpoint_contexts(policy_fn)


__all__ = ["attention_only_context_fn", "attention_op_fragments", "is_attention_op"]
