"""Rotary position embedding with TransformerEngine's fused-kernel numerics, on NPU, CUDA and CPU.

Semantics (TE `apply_rotary_pos_emb(..., fused=True)`, whose CUDA kernel upstream's DiT uses):
- `freqs` is fp32 [S2, 1, 1, D2] (S2 >= S, D2 <= D); positions are taken along the sequence dim of `t`
  (dim 0 for "sbhd", dim 1 for "bshd"; "thd" packs sequences and restarts positions at each `cu_seqlens` start).
- rotate-half (NeoX) unless `interleaved`; only the first D2 channels rotate, the rest pass through unchanged.
- cos/sin and the multiply-add are done in fp32 and the result is cast ONCE to the input dtype. (TE's unfused
  path casts cos/sin to the input dtype first; this module always follows the fused kernel, which is what the
  Cosmos DiT calls, whatever `fused` says. The anchor's "cast cos/sin to bf16, multiply in bf16" differs.)

Speed:
- cos/sin are computed once per freqs tensor and reused: upstream builds one freqs tensor per forward pass and
  calls RoPE twice (q, k) in each of 28..36 blocks. The cache is keyed on the tensor's identity (a weak
  reference, so a freed tensor never matches a new one at the same address) plus its `_version` (an in-place
  change invalidates), shape, dtype, device, sequence length and layout. It holds a few entries only, drops an
  entry when its freqs tensor is freed, and is bypassed during CUDA-graph capture (replays must recompute from
  the graph's static freqs buffer).
- CUDA: the apply step is one torch.compile'd kernel (eager if compile is unavailable or fails, or with
  COSMOS_DISABLE_COMPILE=1).
- NPU: torch_npu.npu_rotary_mul (rotary_mode 'half' / 'interleave') with cos/sin [1, S, 1, D2] for BSND. On
  the Atlas training series (910A) the kernel has only 'half' mode for head_dim 128; other calls take the torch path.
  For fp32 input that is exactly the TE math. For bf16/fp16 input the kernel wants cos/sin in the input dtype,
  which would round cos/sin before the multiply; by default the input is therefore upcast to fp32, rotated in
  fp32 and cast back once (exact TE semantics, about 2x the memory traffic of the rotate itself). Set
  COSMOS_NPU_ROPE_NATIVE_DTYPE=1 to run the kernel in the input dtype instead (faster; cos/sin rounded to the
  input dtype, max error about one ulp of the input dtype).
- CPU: eager.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict

import torch

from . import device
from .user_error import UserValueError

_FORMATS = ("sbhd", "bshd", "thd")
_CACHE_SIZE = 4
_cache: OrderedDict = OrderedDict()
cache_stats = {"computed": 0, "hits": 0}


def _rotate(x: torch.Tensor, interleaved: bool) -> torch.Tensor:
    if not interleaved:
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((-x2, x1), dim=-1)
    x1, x2 = x[..., ::2], x[..., 1::2]
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


def _apply(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """fp32 rotate of the first cos.shape[-1] channels, one cast back, pass-through of the rest."""
    d2 = cos.shape[-1]
    x = t[..., :d2].float()
    out = (x * cos + _rotate(x, interleaved) * sin).to(t.dtype)
    if d2 == t.shape[-1]:
        return out
    return torch.cat((out, t[..., d2:]), dim=-1)


# ---------------------------------------------------------------- compiled apply (CUDA)

_apply_fast = device.maybe_compile(_apply, "RoPE")


# ---------------------------------------------------------------- cos/sin cache


def _cos_sin(freqs: torch.Tensor, seq_len: int, tensor_format: str) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 cos/sin of freqs[:seq_len], shaped to broadcast against t ([S,1,1,D2] sbhd, [1,S,1,D2] bshd)."""

    def compute():
        if not device.compiling():  # a counter bumped inside a traced graph would be a guard: one recompile per call
            cache_stats["computed"] += 1
        f = freqs[:seq_len].float()
        if tensor_format == "bshd":
            f = f.transpose(0, 1)
        return torch.cos(f), torch.sin(f)

    # Never cache what autograd or the compiler must see, nor inside a graph capture: a captured graph must
    # compute cos/sin from its (static) freqs buffer on every replay, not read values cached during warm-up.
    if freqs.requires_grad or device.compiling() or device.is_capturing():
        return compute()
    key = (id(freqs), freqs._version, tuple(freqs.shape), freqs.dtype, str(freqs.device), seq_len, tensor_format)
    hit = _cache.get(key)
    if hit is not None and hit[0]() is freqs:
        _cache.move_to_end(key)
        cache_stats["hits"] += 1
        return hit[1], hit[2]
    cos, sin = compute()
    # The callback drops the entry when freqs is freed, so a finished forward pass releases its cos/sin at once
    # instead of holding them until LRU eviction.
    _cache[key] = (weakref.ref(freqs, lambda _ref, key=key: _cache.pop(key, None)), cos, sin)
    while len(_cache) > _CACHE_SIZE:
        _cache.popitem(last=False)
    return cos, sin


def clear_cache() -> None:
    _cache.clear()


# ---------------------------------------------------------------- general (eager) path


def _positions_cp(seqlen: int, cp_size: int, cp_rank: int, dev) -> torch.Tensor:
    """Positions of this CP rank's tokens: two chunks (load-balanced causal split, as TE)."""
    if cp_size == 1:
        return torch.arange(seqlen, device=dev)
    if seqlen % 2:
        raise UserValueError(f"sequence length {seqlen} must be even with cp_size={cp_size} (portable.rope).")
    seg, full = seqlen // 2, seqlen * cp_size
    first = torch.arange(cp_rank * seg, (cp_rank + 1) * seg, device=dev)
    second = torch.arange(full - (cp_rank + 1) * seg, full - cp_rank * seg, device=dev)
    return torch.cat((first, second))


def _general(t, freqs, tensor_format, start_positions, interleaved, cu_seqlens, cp_size, cp_rank):
    """Eager path for thd, start_positions and context-parallel position layouts (TE's unfused semantics, but
    with the fused kernel's fp32 math)."""
    f = freqs.float()
    if tensor_format == "thd":
        lens = ((cu_seqlens[1:] - cu_seqlens[:-1]) // cp_size).tolist()
        if sum(lens) == 0:
            return t.clone()
        pos = torch.cat([_positions_cp(n, cp_size, cp_rank, f.device) for n in lens])  # [T]
    else:
        seqlen = t.shape[0] if tensor_format == "sbhd" else t.shape[1]
        if start_positions is not None:
            pos = torch.arange(seqlen, device=f.device)[None, :] + start_positions.to(f.device).long()[:, None]
        else:
            pos = _positions_cp(seqlen, cp_size, cp_rank, f.device)  # [S]
    if pos.numel() and int(pos.max()) >= f.shape[0]:  # checked before indexing: one clear line, not an assert
        raise UserValueError(
            f"RoPE position {int(pos.max())} is beyond freqs length {f.shape[0]} (portable.rope). "
            "Build freqs for the full sequence."
        )
    if tensor_format == "thd":
        fg = f[pos, 0]  # [T, 1, D2]
    elif start_positions is not None:
        fg = f[pos, 0]  # [B, S, 1, D2]
        if tensor_format == "sbhd":
            fg = fg.transpose(0, 1)
    else:
        fg = f[pos]  # [S, 1, 1, D2]
        if tensor_format == "bshd":
            fg = fg.transpose(0, 1)
    return _apply(t, torch.cos(fg), torch.sin(fg), interleaved)


# ---------------------------------------------------------------- NPU path


def _npu_native_dtype() -> bool:
    return device.env_flag("COSMOS_NPU_ROPE_NATIVE_DTYPE")


def _npu_apply(t, cos, sin, interleaved, tensor_format):
    npu = device.npu_module()
    d2 = cos.shape[-1]
    x = t[..., :d2]
    if tensor_format == "sbhd":  # the kernel's broadcast contract is documented for BSND with cos [1,S,1,D]
        x, cos, sin = x.transpose(0, 1).contiguous(), cos.transpose(0, 1), sin.transpose(0, 1)
    mode = "interleave" if interleaved else "half"
    if t.dtype == torch.float32 or not _npu_native_dtype():
        out = npu.npu_rotary_mul(x.float(), cos, sin, rotary_mode=mode).to(t.dtype)
    else:
        out = npu.npu_rotary_mul(x, cos.to(t.dtype), sin.to(t.dtype), rotary_mode=mode)
    if tensor_format == "sbhd":
        out = out.transpose(0, 1)
    if d2 == t.shape[-1]:
        return out
    return torch.cat((out, t[..., d2:]), dim=-1)


def _npu_ok(t, d2, interleaved: bool = False) -> bool:
    # Kernel contract: 4-D input, rotated dim even and < 896. Dispatch follows DEVICE_TYPE, not t.device.
    # Atlas training series (910A): only the 'half' mode, head_dim 128 (_op_plugin_docs); else the torch path.
    if device.npu_is_910a() and (interleaved or d2 != 128):
        return False
    return device.npu_module() is not None and t.dim() == 4 and d2 % 2 == 0 and d2 < 896


# ---------------------------------------------------------------- public


def apply_rotary_pos_emb(
    t: torch.Tensor,
    freqs: torch.Tensor,
    tensor_format: str = "sbhd",
    start_positions: torch.Tensor | None = None,
    interleaved: bool = False,
    fused: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    cp_size: int = 1,
    cp_rank: int = 0,
) -> torch.Tensor:
    """TE-compatible RoPE (see module docstring). `fused` is accepted for signature compatibility."""
    del fused  # always the fused kernel's numerics
    if tensor_format not in _FORMATS:
        raise UserValueError(
            f"tensor_format={tensor_format!r} is not supported (portable.rope). Use sbhd, bshd or thd."
        )
    if tensor_format == "thd" and cu_seqlens is None:
        raise UserValueError("tensor_format='thd' needs cu_seqlens (portable.rope). Pass cumulative lengths.")
    if cp_size > 1 and start_positions is not None:
        raise UserValueError("start_positions with cp_size > 1 is not supported (portable.rope, as in TE).")
    d2 = freqs.shape[-1]
    if d2 > t.shape[-1] or d2 % 2:
        raise UserValueError(
            f"freqs last dim {d2} must be even and <= the head dim {t.shape[-1]} (portable.rope)."
        )
    if tensor_format == "thd" or start_positions is not None or cp_size > 1:
        return _general(t, freqs, tensor_format, start_positions, interleaved, cu_seqlens, cp_size, cp_rank)

    seqlen = t.shape[0] if tensor_format == "sbhd" else t.shape[1]
    if seqlen > freqs.shape[0]:
        raise UserValueError(
            f"sequence length {seqlen} exceeds freqs length {freqs.shape[0]} (portable.rope). "
            "Build freqs for the full sequence."
        )
    cos, sin = _cos_sin(freqs, seqlen, tensor_format)
    if device.DEVICE_TYPE == "npu" and _npu_ok(t, d2, interleaved):
        return _npu_apply(t, cos, sin, interleaved, tensor_format)
    return _apply_fast(t, cos, sin, interleaved)
