"""Selective activation checkpointing: the portable attention's op is recognised and saved (CPU, real SAC)."""

from __future__ import annotations

import functools

import torch
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts


def test_known_op_names(portable):
    is_att = portable.sac.is_attention_op
    aten = torch.ops.aten
    for op in (aten._scaled_dot_product_cudnn_attention.default, aten._scaled_dot_product_flash_attention.default,
               aten._scaled_dot_product_efficient_attention.default,
               aten._scaled_dot_product_flash_attention_for_cpu.default):
        assert is_att(op), op
    assert is_att("npu.npu_fusion_attention.default") and is_att("flash_attn_3::fwd")
    for op in (aten.mm.default, aten._softmax.default, aten._scaled_dot_product_flash_attention_backward.default,
               "npu.npu_fusion_attention_grad.default"):
        assert not is_att(op), op


def test_policy_saves_portable_attention_under_real_sac(portable):
    seen = {"portable": [], "upstream_rule": []}

    def policy(ctx, func, *args, **kwargs):
        if not ctx.is_recompute:
            if portable.sac.is_attention_op(func):
                seen["portable"].append(str(func))
            if "flash_attn" in str(func):  # upstream's rule
                seen["upstream_rule"].append(str(func))
        return CheckpointPolicy.MUST_SAVE if portable.sac.is_attention_op(func) else CheckpointPolicy.PREFER_RECOMPUTE

    def block(x):
        q = k = v = x.unflatten(-1, (2, 8))
        return portable.attention.attention(q, k, v).flatten(-2).sum()

    x = torch.randn(1, 16, 16, requires_grad=True)
    ctx_fn = functools.partial(create_selective_checkpoint_contexts, policy)
    checkpoint(block, x, use_reentrant=False, context_fn=ctx_fn).backward()
    assert x.grad is not None
    assert seen["portable"], "the attention op of the CPU path was not recognised"
    assert seen["upstream_rule"] == [], "upstream's 'flash_attn' rule would have recomputed it"


def test_sac_follows_the_backend_registry(portable):
    """A backend registered in portable/attention.py is saved by checkpointing without touching sac.py."""
    att = portable.attention
    assert portable.sac.is_attention_op("npu.npu_fusion_attention.default")
    assert not portable.sac.is_attention_op("myns.my_new_attention.default")
    att.register(att.Backend("mine", ("cpu",), lambda q, k, v, p: "not for auto use", lambda q, k, v, p: q,
                             saved_ops=("my_new_attention",)))
    try:
        assert portable.sac.is_attention_op("myns.my_new_attention.default")
        assert not portable.sac.is_attention_op("myns.my_new_attention_backward.default")
    finally:
        del att.BACKENDS["mine"]
    assert not portable.sac.is_attention_op("myns.my_new_attention.default")


def test_answers_are_kept_per_op_until_the_registry_changes(portable):
    """A checkpoint policy asks about every op of every block at every step: each op is named and matched once
    (bench/bench_sac_policy.py), and asked again after a backend is registered or removed."""
    named = []

    class Op:  # an op object as the policies receive one, hashable by identity, counting how often it is named
        def __init__(self, name):
            self.name = name

        def __str__(self):
            named.append(self.name)
            return self.name

    att, sac = portable.attention, portable.sac
    mm, mine = Op("aten.mm.default"), Op("myns.my_kept_attention.default")
    for _ in range(50):
        assert not sac.is_attention_op(mm) and not sac.is_attention_op(mine)
    assert sorted(named) == ["aten.mm.default", "myns.my_kept_attention.default"]
    att.register(att.Backend("kept", ("cpu",), lambda q, k, v, p: "not for auto use", lambda q, k, v, p: q,
                             saved_ops=("my_kept_attention",)))
    try:
        assert sac.is_attention_op(mine) and sac.is_attention_op(mine) and not sac.is_attention_op(mm)
        assert named.count("myns.my_kept_attention.default") == 2
    finally:
        del att.BACKENDS["kept"]
    assert not sac.is_attention_op(mine)
    assert named.count("myns.my_kept_attention.default") == 3


def test_attention_only_saves_the_first_attention_of_each_pair_and_no_matmul(portable, monkeypatch):
    """Checkpointing mode attention_only (patch sac-attention-only-mode): of a block's self- then cross-attention the
    first is saved, in the forward and again in the recomputation; every matmul is recomputed. Asked through the
    policy that portable.sac hands to torch, with the ops a block dispatches."""
    import torch.utils.checkpoint as tc

    policies = []
    real = tc.create_selective_checkpoint_contexts
    monkeypatch.setattr(tc, "create_selective_checkpoint_contexts", lambda fn: (policies.append(fn), real(fn))[1])
    portable.sac.attention_only_context_fn()  # one block's call: a fresh count
    (policy,) = policies

    class Ctx:
        def __init__(self, is_recompute):
            self.is_recompute = is_recompute

    aten = torch.ops.aten
    sdpa = aten._scaled_dot_product_flash_attention_for_cpu.default
    block = [aten.mm.default, aten.mm.default, sdpa, aten.mm.default, aten.addmm.default, sdpa, aten.mm.default,
             aten.gelu.default, aten.mm.default]
    save = CheckpointPolicy.MUST_SAVE
    for recompute in (False, True):
        got = [policy(Ctx(recompute), op) for op in block]
        assert [i for i, g in enumerate(got) if g == save] == [2], (recompute, got)
        assert all(g == CheckpointPolicy.PREFER_RECOMPUTE for i, g in enumerate(got) if i != 2)
