"""TEST DOUBLE of torch_npu. It is NOT torch_npu and runs nowhere but in tests on host (CPU) tensors.

It implements the documented math and argument contracts (torch_npu 2.7.1 / CANN 8.3 docs, as summarised in
docs/NPU_AND_ANCHOR facts) of the three ops the portable layer calls, so the NPU branches can be exercised off-NPU:
- npu_fusion_attention(query, key, value, head_num, input_layout, ..., atten_mask=None, scale=1.0,
  keep_prob=1.0, ..., sparse_mode=0) -> 7-tuple, attention output at [0]. Layouts BSH, SBH, BSND, BNSD.
  The default scale is 1.0 (NOT 1/sqrt(D)). atten_mask is True = masked OUT (inverted vs SDPA).
  sparse_mode 0: atten_mask broadcast to [B, N, Sq, Sk]; 2 (leftUpCausal) and 3 (rightDownCausal): atten_mask
  must be the compressed 2048x2048 upper-triangular mask and the causal pattern is implied.
- npu_rotary_mul(input, r1, r2, rotary_mode='half'|'interleave'): input * r1 + rotate(input) * r2, 4-D input,
  r1/r2 in the input's dtype and broadcastable to it.
- npu_rms_norm(x, gamma, epsilon=1e-6) -> (out, rstd); gamma must have x's dtype.
Every call is recorded in CALLS (op name + the arguments that matter) so tests can check what was passed.
The `npu` namespace stands in for `torch.npu` (device queries and streams), reporting one available device.
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import torch

CALLS: list[dict] = []
_LAYOUTS = ("BSH", "SBH", "BSND", "BNSD")


def _to_bnsd(x: torch.Tensor, layout: str, heads: int | None) -> torch.Tensor:
    if layout == "BNSD":
        return x
    if layout == "BSND":
        return x.transpose(1, 2)
    if layout == "BSH":
        b, s, h = x.shape
        return x.reshape(b, s, heads, h // heads).transpose(1, 2)
    if layout == "SBH":
        s, b, h = x.shape
        return x.reshape(s, b, heads, h // heads).permute(1, 2, 0, 3)
    raise ValueError(f"fake torch_npu: unsupported input_layout {layout}")


def _from_bnsd(x: torch.Tensor, layout: str) -> torch.Tensor:
    b, n, s, d = x.shape
    if layout == "BNSD":
        return x
    if layout == "BSND":
        return x.transpose(1, 2)
    if layout == "BSH":
        return x.transpose(1, 2).reshape(b, s, n * d)
    return x.permute(2, 0, 1, 3).reshape(s, b, n * d)  # SBH


def npu_fusion_attention(
    query,
    key,
    value,
    head_num,
    input_layout,
    pse=None,
    padding_mask=None,
    atten_mask=None,
    scale=1.0,
    keep_prob=1.0,
    pre_tockens=2147483647,
    next_tockens=2147483647,
    inner_precise=0,
    prefix=None,
    actual_seq_qlen=None,
    actual_seq_kvlen=None,
    sparse_mode=0,
    gen_mask_parallel=True,
    sync=False,
):
    if input_layout not in _LAYOUTS:
        raise ValueError(f"fake torch_npu: input_layout must be one of {_LAYOUTS}, got {input_layout}")
    if not (query.dtype == key.dtype == value.dtype) or query.dtype not in (
        torch.float16,
        torch.bfloat16,
        torch.float32,
    ):
        raise TypeError("fake torch_npu: q/k/v must share one of fp16/bf16/fp32")
    CALLS.append(
        dict(
            op="npu_fusion_attention",
            head_num=head_num,
            input_layout=input_layout,
            scale=scale,
            keep_prob=keep_prob,
            sparse_mode=sparse_mode,
            atten_mask=None if atten_mask is None else atten_mask.clone(),
            dtype=query.dtype,
            shape=tuple(query.shape),
        )
    )
    q = _to_bnsd(query, input_layout, head_num).float()
    d = q.shape[-1]
    kv_heads = {"BSND": key.shape[2], "BNSD": key.shape[1]}.get(input_layout) or key.shape[-1] // d
    k = _to_bnsd(key, input_layout, kv_heads).float()
    v = _to_bnsd(value, input_layout, kv_heads).float()
    if q.shape[1] != head_num:
        raise ValueError(f"fake torch_npu: head_num={head_num} but query has {q.shape[1]} heads")
    if head_num != kv_heads:
        k = k.repeat_interleave(head_num // kv_heads, dim=1)
        v = v.repeat_interleave(head_num // kv_heads, dim=1)
    sq, sk = q.shape[2], k.shape[2]
    scores = (q @ k.transpose(-1, -2)) * scale
    if sparse_mode == 0:
        if atten_mask is not None:
            scores = scores.masked_fill(atten_mask.bool(), float("-inf"))
    elif sparse_mode in (2, 3):
        if atten_mask is None or tuple(atten_mask.shape) != (2048, 2048):
            raise ValueError("fake torch_npu: sparse_mode 2/3 need the compressed 2048x2048 atten_mask")
        if not torch.equal(atten_mask.bool(), torch.triu(torch.ones_like(atten_mask, dtype=torch.bool), 1)):
            raise ValueError("fake torch_npu: the compressed mask must be upper-triangular (diagonal=1) True")
        i = torch.arange(sq)[:, None]
        j = torch.arange(sk)[None, :]
        masked = j > i if sparse_mode == 2 else j > i + (sk - sq)
        scores = scores.masked_fill(masked, float("-inf"))
    else:
        raise NotImplementedError(f"fake torch_npu: sparse_mode {sparse_mode} not modelled")
    smax = scores.amax(dim=-1, keepdim=True)
    probs = torch.softmax(scores, dim=-1)
    ssum = torch.exp(scores - smax).sum(dim=-1, keepdim=True)
    if keep_prob < 1.0:
        probs = torch.nn.functional.dropout(probs, p=1.0 - keep_prob)
    out = _from_bnsd((probs @ v), input_layout).to(query.dtype)
    empty = torch.empty(0)
    return out, smax, ssum, empty, 0, 0, 0


def _rotate(x, mode):
    if mode == "half":
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((-x2, x1), dim=-1)
    if mode == "interleave":
        return torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2)
    raise ValueError(f"fake torch_npu: rotary_mode must be 'half' or 'interleave', got {mode}")


def npu_rotary_mul(input, r1, r2, rotary_mode="half"):
    if input.dim() != 4 or r1.dim() != 4 or r2.dim() != 4:
        raise ValueError("fake torch_npu: npu_rotary_mul needs 4-D input, r1, r2")
    if not (input.dtype == r1.dtype == r2.dtype):
        raise TypeError(f"fake torch_npu: npu_rotary_mul dtypes differ ({input.dtype}, {r1.dtype}, {r2.dtype})")
    d = input.shape[-1]
    if d % 2 or d >= 896 or r1.shape[-1] != d:
        raise ValueError("fake torch_npu: last dim must be even, < 896 and equal in input and r1/r2")
    torch.broadcast_shapes(input.shape, r1.shape, r2.shape)
    CALLS.append(
        dict(op="npu_rotary_mul", rotary_mode=rotary_mode, dtype=input.dtype, shape=tuple(input.shape),
             r_shape=tuple(r1.shape))
    )
    x = input.float()
    return (x * r1.float() + _rotate(x, rotary_mode) * r2.float()).to(input.dtype)


def npu_rms_norm(x, gamma, epsilon=1e-6):
    if gamma.dtype != x.dtype:
        raise TypeError(f"fake torch_npu: npu_rms_norm needs gamma dtype == x dtype ({gamma.dtype} vs {x.dtype})")
    CALLS.append(dict(op="npu_rms_norm", dtype=x.dtype, epsilon=epsilon))
    x32 = x.float()
    rstd = torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + epsilon)
    return (x32 * rstd * gamma.float()).to(x.dtype), rstd


class _Stream:
    def wait_stream(self, other):
        CALLS.append(dict(op="wait_stream"))


_current = _Stream()
npu = SimpleNamespace(
    is_available=lambda: True,
    device_count=lambda: 1,
    current_device=lambda: 0,
    set_device=lambda i: CALLS.append(dict(op="set_device", index=i)),
    synchronize=lambda *a: None,
    Stream=_Stream,
    stream=lambda s: contextlib.nullcontext(),
    current_stream=lambda *a: _current,
    memory_allocated=lambda *a: 11,
    memory_reserved=lambda *a: 22,
    max_memory_allocated=lambda *a: 33,
    max_memory_reserved=lambda *a: 44,
    reset_peak_memory_stats=lambda *a: None,
    manual_seed_all=lambda s: None,
    empty_cache=lambda: None,
)

__version__ = "0.0-test-double"
