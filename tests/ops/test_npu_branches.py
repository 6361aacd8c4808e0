"""NPU branches of the portable ops, run against tests/doubles/fake_torch_npu.py.

Every test here uses a TEST DOUBLE of torch_npu (not torch_npu): it binds arguments through the real wheel's op
schemas, refuses tensors not marked as NPU tensors (`fake.to_npu`), overrides F.scaled_dot_product_attention on
NPU tensors like torch_npu does, implements the documented math on host memory and records each call. The tests
check what the portable layer passes to the NPU kernels (layout, explicit scale, output index, inverted causal
mask, rotary mode, dtype casts), that the NPU path gives the same results as the CPU path, and the NPU-only rules
(the math backend is really math, head and SoC limits).
"""

from __future__ import annotations

import math
import sys

import pytest
import torch

from portable_loader import load_portable, unload


def calls(pkg, op):
    return [c for c in pkg.fake.CALLS if c["op"] == op]


def host(t):
    return t.as_subclass(torch.Tensor)


def test_run_peak_survives_per_interval_resets(npu_portable, monkeypatch):
    """Uses the torch_npu TEST DOUBLE with a stateful peak counter: upstream's DeviceMonitor resets the counter at
    each of its logs (through portable.device); the run's peak must still reach our metrics."""
    dev, npu = npu_portable.device, npu_portable.fake.npu
    state = {"peak": 0, "alloc": 0}

    def alloc(n):
        state["alloc"] = n
        state["peak"] = max(state["peak"], n)

    monkeypatch.setattr(npu, "max_memory_allocated", lambda *a: state["peak"])
    monkeypatch.setattr(npu, "max_memory_reserved", lambda *a: state["peak"])
    monkeypatch.setattr(npu, "reset_peak_memory_stats", lambda *a: state.update(peak=state["alloc"]))
    monkeypatch.setattr(dev, "_folded_peaks", {"peak": 0, "peak_reserved": 0})
    alloc(900)
    alloc(100)
    dev.reset_peak_memory_stats()  # what DeviceMonitor does after its log
    alloc(300)
    assert dev.memory_stats()["peak"] == 300  # per-interval peak, as upstream expects
    assert dev.peak_memory_since_start()["peak"] == 900


def test_detection_and_device_helpers(portable, npu_portable, monkeypatch):
    """Uses the torch_npu TEST DOUBLE: detection picks npu, helpers go to torch.npu, dispatch ignores torch.cuda."""
    dev = npu_portable.device
    assert dev.DEVICE_TYPE == "npu" and dev.device_type() == "npu" and dev.is_npu()
    assert dev.dist_backend() == "hccl"
    assert dev.npu_module() is npu_portable.fake
    assert dev.memory_stats() == {"allocated": 11, "reserved": 22, "peak": 33, "peak_reserved": 44}
    assert dev.total_memory_gib() == 64.0 and portable.device.total_memory_gib() is None  # preflight's card size
    s = dev.new_stream()
    with dev.stream(s):
        pass
    dev.wait_stream(s)
    assert calls(npu_portable, "wait_stream")
    dev.set_device(3)
    assert calls(npu_portable, "set_device")[-1]["index"] == 3
    # transfer_to_npu makes torch.cuda.is_available() True on NPU hosts: auto-detection must still say npu
    monkeypatch.delenv("COSMOS_DEVICE")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    again = load_portable("cosmos_portable_autodetect")
    try:
        assert again.device.DEVICE_TYPE == "npu"
    finally:
        unload("cosmos_portable_autodetect")
    assert portable.device.DEVICE_TYPE == "cpu"


def test_forced_device_errors(monkeypatch):
    """No torch_npu double installed here: forcing npu/cuda on this CPU host must fail with one clear line."""
    monkeypatch.setitem(__import__("sys").modules, "torch_npu", None)  # import torch_npu -> ImportError
    cases = [("npu", "torch_npu cannot be imported"), ("tpu", "not a device kind")]
    if not torch.cuda.is_available():
        cases.append(("cuda", "torch.cuda.is_available"))
    for value, msg in cases:
        monkeypatch.setenv("COSMOS_DEVICE", value)
        with pytest.raises(RuntimeError, match=msg) as info:
            load_portable("cosmos_portable_forced")
        assert "\n" not in str(info.value) and str(info.value).startswith("error: ")
        unload("cosmos_portable_forced")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
def test_attention_npu_fusion(portable, npu_portable, dtype, causal):
    """Uses the torch_npu TEST DOUBLE: npu_fusion_attention gets BSND, head_num, an explicit 1/sqrt(D) scale,
    keep_prob 1, and for causal the inverted (True = masked out) compressed mask; output [0] equals the CPU path."""
    B, S, H, D = 2, 19, 4, 32
    q, k, v = (torch.randn(B, S, H, D).to(dtype) for _ in range(3))
    out = npu_portable.attention.attention(*map(npu_portable.fake.to_npu, (q, k, v)), causal=causal)
    (call,) = calls(npu_portable, "npu_fusion_attention")
    assert call["input_layout"] == "BSND" and call["head_num"] == H and call["shape"] == (B, S, H, D)
    assert call["scale"] == pytest.approx(1.0 / math.sqrt(D))  # the kernel's default would be 1.0
    assert call["keep_prob"] == 1.0 and call["dtype"] == dtype
    if causal:
        mask = call["atten_mask"]
        assert call["sparse_mode"] == 2 and mask.dtype == torch.bool and mask.shape == (2048, 2048)
        assert mask[0, 1] and not mask[1, 0] and not mask[5, 5]  # True above the diagonal = masked out
    else:
        assert call["atten_mask"] is None
    assert out.shape == (B, S, H, D) and out.dtype == dtype and isinstance(out, npu_portable.fake.NpuTensor)
    cpu = portable.attention.attention(q, k, v, causal=causal)
    out = host(out)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(out.float(), cpu.float(), **tol)


def test_attention_npu_scale_dropout_and_forcing(portable, npu_portable, monkeypatch):
    """Uses the torch_npu TEST DOUBLE: a caller's softmax_scale and dropout reach the kernel; forcing works."""
    hq, hk, hv = (torch.randn(1, 8, 2, 16) for _ in range(3))
    q, k, v = map(npu_portable.fake.to_npu, (hq, hk, hv))
    out = npu_portable.attention.attention(q, k, v, softmax_scale=0.2, q_scale=0.5)
    call = calls(npu_portable, "npu_fusion_attention")[-1]
    assert call["scale"] == pytest.approx(0.2)
    q, k, v = hq, hk, hv
    torch.testing.assert_close(host(out), portable.attention.attention(q, k, v, softmax_scale=0.2, q_scale=0.5),
                               atol=1e-5, rtol=1e-5)
    q, k, v = map(npu_portable.fake.to_npu, (hq, hk, hv))
    npu_portable.attention.attention(q, k, v, dropout_p=0.25)
    assert calls(npu_portable, "npu_fusion_attention")[-1]["keep_prob"] == pytest.approx(0.75)
    monkeypatch.setenv("COSMOS_ATTN_BACKEND", "sdpa_cpu")
    with pytest.raises(RuntimeError, match="needs device cpu, running on npu"):
        npu_portable.attention.attention(q, k, v)
    monkeypatch.setenv("COSMOS_ATTN_BACKEND", "math")
    n = len(calls(npu_portable, "npu_fusion_attention"))
    npu_portable.attention.attention(q, k, v)
    assert len(calls(npu_portable, "npu_fusion_attention")) == n


def test_dot_product_attention_npu(portable, npu_portable):
    """Uses the torch_npu TEST DOUBLE: the TE drop-in goes through npu_fusion_attention and returns [B,S,H*D]."""
    dpa = npu_portable.attention.DotProductAttention(4, 16, num_gqa_groups=4, attention_dropout=0,
                                                     qkv_format="bshd", attn_mask_type="no_mask")
    q, k, v = (torch.randn(2, 12, 4, 16).bfloat16() for _ in range(3))
    out = dpa(*map(npu_portable.fake.to_npu, (q, k, v)))
    assert out.shape == (2, 12, 64) and calls(npu_portable, "npu_fusion_attention")
    cpu = portable.attention.DotProductAttention(4, 16, qkv_format="bshd", attn_mask_type="no_mask")(q, k, v)
    torch.testing.assert_close(host(out).float(), cpu.float(), atol=2e-2, rtol=2e-2)


def _freqs(S, D):
    inv = 1.0 / (10000 ** (torch.arange(0, D, 2, dtype=torch.float32) / D))
    half = torch.outer(torch.arange(S, dtype=torch.float32) + torch.rand(1) * 30, inv)
    return torch.cat([half, half], -1)[:, None, None, :].contiguous()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("fmt", ["bshd", "sbhd"])
def test_rope_npu_rotary_mul(portable, npu_portable, dtype, fmt):
    """Uses the torch_npu TEST DOUBLE: npu_rotary_mul in mode 'half' with cos/sin [1,S,1,D] on a BSND view, run
    in fp32 (input upcast), so the result equals the CPU path (TE's fp32 math, one cast) exactly."""
    B, S, H, D = 2, 16, 3, 64
    t = torch.randn((B, S, H, D) if fmt == "bshd" else (S, B, H, D)).to(dtype)
    freqs = _freqs(S, D)
    to_npu = npu_portable.fake.to_npu
    out = host(npu_portable.rope.apply_rotary_pos_emb(to_npu(t), to_npu(freqs), tensor_format=fmt, fused=True))
    (call,) = calls(npu_portable, "npu_rotary_mul")
    assert call["rotary_mode"] == "half" and call["r_shape"] == (1, S, 1, D) and call["dtype"] == torch.float32
    assert call["shape"] == (B, S, H, D)
    assert out.dtype == dtype and out.shape == t.shape
    cpu = portable.rope.apply_rotary_pos_emb(t, freqs, tensor_format=fmt, fused=True)
    assert torch.equal(out, cpu)


def test_rope_npu_native_dtype_partial_and_interleave(portable, npu_portable, monkeypatch):
    """Uses the torch_npu TEST DOUBLE: the opt-in native-dtype kernel gets bf16 cos/sin (documented difference:
    close to, not equal to, TE's fp32 result); partial rotary passes the tail; interleaved uses 'interleave'."""
    t = torch.randn(1, 32, 2, 64).bfloat16()
    freqs = _freqs(32, 64)
    to_npu = npu_portable.fake.to_npu
    monkeypatch.setenv("COSMOS_NPU_ROPE_NATIVE_DTYPE", "1")
    out = host(npu_portable.rope.apply_rotary_pos_emb(to_npu(t), to_npu(freqs), "bshd"))
    assert calls(npu_portable, "npu_rotary_mul")[-1]["dtype"] == torch.bfloat16
    cpu = portable.rope.apply_rotary_pos_emb(t, freqs, "bshd")
    torch.testing.assert_close(out.float(), cpu.float(), atol=3e-2, rtol=2e-2)
    monkeypatch.delenv("COSMOS_NPU_ROPE_NATIVE_DTYPE")
    part = _freqs(32, 32)
    out = host(npu_portable.rope.apply_rotary_pos_emb(to_npu(t), to_npu(part), "bshd"))
    assert torch.equal(out[..., 32:], t[..., 32:])
    assert torch.equal(out, portable.rope.apply_rotary_pos_emb(t, part, "bshd"))
    out = host(npu_portable.rope.apply_rotary_pos_emb(to_npu(t), to_npu(freqs), "bshd", interleaved=True))
    assert calls(npu_portable, "npu_rotary_mul")[-1]["rotary_mode"] == "interleave"
    assert torch.equal(out, portable.rope.apply_rotary_pos_emb(t, freqs, "bshd", interleaved=True))


@pytest.mark.parametrize("wdtype,xdtype", [(torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16),
                                           (torch.bfloat16, torch.bfloat16)])
def test_rmsnorm_npu(portable, npu_portable, wdtype, xdtype):
    """Uses the torch_npu TEST DOUBLE: npu_rms_norm gets x cast to gamma's dtype (the kernel requires equal
    dtypes), output [0] in the weight dtype equals the CPU path."""
    norm = npu_portable.rmsnorm.RMSNorm(64, eps=1e-6, params_dtype=wdtype)
    cpu_norm = portable.rmsnorm.RMSNorm(64, eps=1e-6, params_dtype=wdtype)
    with torch.no_grad():
        w = torch.randn(64).to(wdtype)
        norm.weight = torch.nn.Parameter(npu_portable.fake.to_npu(w.clone()))  # the module moved to the NPU
        cpu_norm.weight.copy_(w)
    x = torch.randn(3, 5, 64).to(xdtype)
    out = host(norm(npu_portable.fake.to_npu(x)))
    (call,) = calls(npu_portable, "npu_rms_norm")
    assert call["dtype"] == wdtype and call["epsilon"] == 1e-6
    assert out.dtype == wdtype
    assert torch.equal(out, cpu_norm(x))


# ---------------------------------------------------------------- NPU-only rules (issue: math path, limits, SoC)


def test_math_backend_on_npu_is_really_math(portable, npu_portable, monkeypatch):
    """Uses the torch_npu TEST DOUBLE, which overrides F.scaled_dot_product_attention on NPU tensors like torch_npu
    (4-D, head_dim <= 512 -> npu_fusion_attention whatever sdpa_kernel says). COSMOS_ATTN_BACKEND=math and
    deterministic=True must not reach the fusion kernel, and must equal the CPU math result."""
    to_npu = npu_portable.fake.to_npu
    q, k, v = (torch.randn(2, 24, 4, 32) for _ in range(3))
    for causal in (False, True):
        ref = portable.attention.attention(q, k, v, causal=causal, deterministic=True)
        out = npu_portable.attention.attention(*map(to_npu, (q, k, v)), causal=causal, deterministic=True)
        assert calls(npu_portable, "npu_fusion_attention") == []
        torch.testing.assert_close(host(out), ref, atol=1e-5, rtol=1e-5)
    monkeypatch.setenv("COSMOS_ATTN_BACKEND", "math")
    out = npu_portable.attention.attention(*map(to_npu, (q.bfloat16(), k.bfloat16(), v.bfloat16())))
    assert calls(npu_portable, "npu_fusion_attention") == [] and out.dtype == torch.bfloat16
    # the double's override is real: plain SDPA on NPU tensors does go to the fusion kernel
    torch.nn.functional.scaled_dot_product_attention(*(to_npu(x.transpose(1, 2)) for x in (q, k, v)))
    assert calls(npu_portable, "npu_fusion_attention")[-1]["via"] == "sdpa"


def test_more_than_256_heads_on_npu_fall_back_to_math(portable, npu_portable):
    """Uses the torch_npu TEST DOUBLE (which, like npu_fusion_attention, refuses more than 256 query heads): the
    auto order skips the fusion kernel and the math fallback runs without it."""
    att = npu_portable.attention
    q, k, v = (torch.randn(1, 4, 300, 8) for _ in range(3))
    tq, tk, tv = map(npu_portable.fake.to_npu, (q, k, v))
    p = att.AttnParams(scale=0.3, causal=False, dropout_p=0.0, deterministic=False)
    assert "query heads <= 256" in att.BACKENDS["npu_fusion"].supports(tq, tk, tv, p)
    assert att.select_backend(tq, tk, tv, p) == "math"
    out = att.attention(tq, tk, tv)
    assert calls(npu_portable, "npu_fusion_attention") == []
    torch.testing.assert_close(host(out), portable.attention.attention(q, k, v), atol=1e-5, rtol=1e-5)
    with pytest.raises(RuntimeError, match="1..256 query heads"):
        npu_portable.fake.npu_fusion_attention(tq, tk, tv, 300, "BSND")


def test_value_head_dim_above_key_head_dim_is_refused(npu_portable):
    """Uses the torch_npu TEST DOUBLE: Dv > Dk is outside npu_fusion_attention's contract; the backend says so."""
    att = npu_portable.attention
    q, k = (npu_portable.fake.to_npu(torch.randn(1, 4, 2, 16)) for _ in range(2))
    v = npu_portable.fake.to_npu(torch.randn(1, 4, 2, 32))
    p = att.AttnParams(scale=0.25, causal=False, dropout_p=0.0, deterministic=False)
    assert "value head_dim <= key head_dim" in att.BACKENDS["npu_fusion"].supports(q, k, v, p)
    with pytest.raises(RuntimeError, match="Dq == Dk >= Dv"):
        npu_portable.fake.npu_fusion_attention(q, k, v, 2, "BSND")


def test_double_refuses_host_tensors_and_wrong_argument_names(npu_portable):
    """The TEST DOUBLE itself: host tensors are refused like on the real NPU, and arguments bind through the
    wheel's schema (an unknown keyword is a TypeError, the default scale is 1.0)."""
    fake = npu_portable.fake
    q = torch.randn(1, 4, 2, 16)
    with pytest.raises(RuntimeError, match="expected an NPU tensor"):
        fake.npu_fusion_attention(q, q, q, 2, "BSND")
    with pytest.raises(RuntimeError, match="expected an NPU tensor"):
        fake.npu_rms_norm(q, fake.to_npu(torch.ones(16)))
    t = fake.to_npu(q)
    with pytest.raises(TypeError):
        fake.npu_fusion_attention(t, t, t, 2, "BSND", softmax_scale=0.1)
    fake.npu_fusion_attention(t, t, t, 2, "BSND")
    assert calls(npu_portable, "npu_fusion_attention")[-1]["scale"] == 1.0


def test_910a_has_no_fusion_attention_and_half_mode_rope_only(portable, monkeypatch):
    """Uses the torch_npu TEST DOUBLE reporting SoC 'Ascend910A' (Atlas training series): npu_fusion_attention is
    refused with the SoC named and the math path runs; npu_rotary_mul is used for 'half' mode with head_dim 128
    only, the rest takes the torch path."""
    from portable_loader import PKG_NAME, load_fake_torch_npu, load_portable, unload
    import sys

    fake = load_fake_torch_npu()
    fake.DEVICE_NAME = "Ascend910A"
    monkeypatch.setitem(sys.modules, "torch_npu", fake)
    monkeypatch.setattr(torch, "npu", fake.npu, raising=False)
    monkeypatch.setenv("COSMOS_DEVICE", "npu")
    monkeypatch.delenv("COSMOS_ATTN_BACKEND", raising=False)
    name = PKG_NAME + "_npu910a"
    pkg = load_portable(name)
    try:
        att, to_npu = pkg.attention, fake.to_npu
        q, k, v = (torch.randn(1, 8, 2, 16) for _ in range(3))
        p = att.AttnParams(scale=0.25, causal=False, dropout_p=0.0, deterministic=False)
        why = att.BACKENDS["npu_fusion"].supports(*map(to_npu, (q, k, v)), p)
        assert why == "npu_fusion_attention needs an Atlas A2/A3 training part, this NPU is Ascend910A"
        out = att.attention(*map(to_npu, (q, k, v)))
        assert not [c for c in fake.CALLS if c["op"] == "npu_fusion_attention"]
        torch.testing.assert_close(host(out), portable.attention.attention(q, k, v), atol=1e-5, rtol=1e-5)
        monkeypatch.setenv("COSMOS_ATTN_BACKEND", "npu_fusion")
        with pytest.raises(RuntimeError, match="Atlas A2/A3 training part, this NPU is Ascend910A"):
            att.attention(*map(to_npu, (q, k, v)))
        t = torch.randn(1, 16, 2, 128)
        f = _freqs(16, 128)
        for interleaved, used in ((False, True), (True, False)):
            fake.CALLS.clear()
            out = pkg.rope.apply_rotary_pos_emb(to_npu(t), to_npu(f), "bshd", interleaved=interleaved)
            assert bool([c for c in fake.CALLS if c["op"] == "npu_rotary_mul"]) is used
            ref = portable.rope.apply_rotary_pos_emb(t, f, "bshd", interleaved=interleaved)
            torch.testing.assert_close(host(out), ref, atol=1e-6, rtol=1e-6)
        fake.CALLS.clear()
        pkg.rope.apply_rotary_pos_emb(to_npu(torch.randn(1, 16, 2, 64)), to_npu(_freqs(16, 64)), "bshd")
        assert not fake.CALLS  # head_dim 64: no kernel on 910A
    finally:
        unload(name)


def test_npu_product_table_agrees_with_doctor():
    """The SoC -> product table of the device layer and installer/support.py (doctor) say the same."""
    from portable_loader import load_with_device, ROOT
    import importlib.util

    spec = importlib.util.spec_from_file_location("support_under_test", ROOT / "installer" / "support.py")
    support = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(support)
    dev = load_with_device("cosmos_portable_products", "cpu").device
    names = ["Ascend910A", "Ascend910B", "Ascend910ProA", "Ascend910ProB", "Ascend910PremiumA", "Ascend910B1",
             "Ascend910B2", "Ascend910B3", "Ascend910B4", "Ascend910_9391", "Ascend910_9392", "Ascend310P3",
             "Ascend910C", ""]
    for n in names:
        assert dev.npu_product(n) == support.npu_product(n), n
    assert dev.npu_product("Ascend910B3") == "Atlas A2 training"
    assert dev.npu_product("Ascend910_9391") == "Atlas A3 training"
    assert dev.npu_product("Ascend910ProB") == "Atlas training (910A)"
    assert dev.npu_product("Ascend310P3") is None


def test_auto_order_comes_from_the_registry(portable, npu_portable):
    """Uses the torch_npu TEST DOUBLE for the NPU instance: the registered priorities give the documented orders."""
    q = torch.randn(1, 4, 2, 8)
    assert npu_portable.attention.auto_order(npu_portable.fake.to_npu(q)) == ["npu_fusion", "math"]
    assert npu_portable.attention.auto_order(q, deterministic=True) == ["math"]
    assert portable.attention.auto_order(q) == ["sdpa_cpu", "math"]
    assert portable.attention.auto_order(q, deterministic=True) == ["math"]


def test_preflight_reads_the_card_size_through_the_device_layer(npu_portable, tmp_path, monkeypatch):
    """Uses the torch_npu TEST DOUBLE (a 64 GiB card): without --device_memory_gib, train_preflight's memory check
    asks the tree's device layer for the card's size, so 2B Video2World at 720p on one such card is refused before
    torchrun with the one-line suggestion; --dry-run (planning for another host) does not read this host's card."""
    import argparse
    import importlib.util
    import shutil
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    (tmp_path / "cosmos_predict2" / "portable").mkdir(parents=True)
    shutil.copy(repo / "overlay/cosmos_predict2/portable/device.py", tmp_path / "cosmos_predict2/portable/")
    spec = importlib.util.spec_from_file_location("_preflight_under_test", repo / "overlay/scripts/train_preflight.py")
    pre = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, pre)  # its dataclasses look themselves up there
    spec.loader.exec_module(pre)
    name = "predict2_video2world_training_2b_cosmos_nemo_assets"
    a = argparse.Namespace(EXP=name, device_memory_gib=None, dry_run=False, skip_memory_check=False)
    with pytest.raises(pre.PreflightError, match=r"^error: .*64"):
        pre.memory_check(a, pre.EXPERIMENTS[name], "npu", 1, 1, {}, {}, str(tmp_path))
    a.dry_run = True
    assert "unknown" in pre.memory_check(a, pre.EXPERIMENTS[name], "npu", 1, 1, {}, {}, str(tmp_path))
