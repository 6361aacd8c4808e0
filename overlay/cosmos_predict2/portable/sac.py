"""Which ops selective activation checkpointing should treat as "attention" (and therefore save).

Upstream's policies save ops whose name contains "flash_attn" only, so with torch SDPA or
torch_npu.npu_fusion_attention the attention (the costliest op of a block) would be recomputed in backward.
`is_attention_op(func)` recognises upstream's flash-attn ops and every op a registered attention backend declares
in its `saved_ops` (portable/attention.py): a backend registered there is saved here without editing this file.
"""

from __future__ import annotations

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


__all__ = ["attention_op_fragments", "is_attention_op"]
