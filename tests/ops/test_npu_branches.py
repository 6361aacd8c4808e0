"""NPU branches of the portable ops, run against tests/doubles/fake_torch_npu.py.

Every test here uses a TEST DOUBLE of torch_npu (not torch_npu): it implements torch_npu's documented math and
argument contracts on host tensors and records each call. The tests check what the portable layer passes to the
NPU kernels (layout, explicit scale, output index, inverted causal mask, rotary mode, dtype casts) and that the
NPU path gives the same results as the CPU path.
"""

from __future__ import annotations

import math

import pytest
import torch

from portable_loader import load_portable, unload


def calls(pkg, op):
    return [c for c in pkg.fake.CALLS if c["op"] == op]


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
    out = npu_portable.attention.attention(q, k, v, causal=causal)
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
    assert out.shape == (B, S, H, D) and out.dtype == dtype
    cpu = portable.attention.attention(q, k, v, causal=causal)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(out.float(), cpu.float(), **tol)


def test_attention_npu_scale_dropout_and_forcing(portable, npu_portable, monkeypatch):
    """Uses the torch_npu TEST DOUBLE: a caller's softmax_scale and dropout reach the kernel; forcing works."""
    q, k, v = (torch.randn(1, 8, 2, 16) for _ in range(3))
    out = npu_portable.attention.attention(q, k, v, softmax_scale=0.2, q_scale=0.5)
    call = calls(npu_portable, "npu_fusion_attention")[-1]
    assert call["scale"] == pytest.approx(0.2)
    torch.testing.assert_close(out, portable.attention.attention(q, k, v, softmax_scale=0.2, q_scale=0.5),
                               atol=1e-5, rtol=1e-5)
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
    out = dpa(q, k, v)
    assert out.shape == (2, 12, 64) and calls(npu_portable, "npu_fusion_attention")
    cpu = portable.attention.DotProductAttention(4, 16, qkv_format="bshd", attn_mask_type="no_mask")(q, k, v)
    torch.testing.assert_close(out.float(), cpu.float(), atol=2e-2, rtol=2e-2)


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
    out = npu_portable.rope.apply_rotary_pos_emb(t, freqs, tensor_format=fmt, fused=True)
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
    monkeypatch.setenv("COSMOS_NPU_ROPE_NATIVE_DTYPE", "1")
    out = npu_portable.rope.apply_rotary_pos_emb(t, freqs, "bshd")
    assert calls(npu_portable, "npu_rotary_mul")[-1]["dtype"] == torch.bfloat16
    cpu = portable.rope.apply_rotary_pos_emb(t, freqs, "bshd")
    torch.testing.assert_close(out.float(), cpu.float(), atol=3e-2, rtol=2e-2)
    monkeypatch.delenv("COSMOS_NPU_ROPE_NATIVE_DTYPE")
    part = _freqs(32, 32)
    out = npu_portable.rope.apply_rotary_pos_emb(t, part, "bshd")
    assert torch.equal(out[..., 32:], t[..., 32:])
    assert torch.equal(out, portable.rope.apply_rotary_pos_emb(t, part, "bshd"))
    out = npu_portable.rope.apply_rotary_pos_emb(t, freqs, "bshd", interleaved=True)
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
        norm.weight.copy_(w)
        cpu_norm.weight.copy_(w)
    x = torch.randn(3, 5, 64).to(xdtype)
    out = norm(x)
    (call,) = calls(npu_portable, "npu_rms_norm")
    assert call["dtype"] == wdtype and call["epsilon"] == 1e-6
    assert out.dtype == wdtype
    assert torch.equal(out, cpu_norm(x))
