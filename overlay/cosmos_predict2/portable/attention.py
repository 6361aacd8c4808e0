"""Scaled dot-product attention on NPU, CUDA and CPU behind one call, with named backends.

`attention(q, k, v, ...)` keeps the contract of upstream's `cosmos_predict2.module.attention.attention`
(q, k, v in `bshd` = [B, S, H, D], output [B, S, H, D], softmax scale 1/sqrt(D) unless given) with two
differences: `dtype=None` computes in the input dtype (upstream always casts to bf16), and CPU works (upstream
limits SDPA to CUDA kernels and fails with "No viable backend").

Backends register where they are defined (`register(Backend(...))`), each with everything other modules need to
know about it: the devices it runs on, a `check` that names the failing constraint, its auto-selection priority,
whether it is deterministic, whether it can run under context parallelism (the all-to-all CP op hands it the full
sequence and a slice of the heads), and the op names selective activation checkpointing must save for it
(portable/sac.py derives its list from here). A new kernel is one `register` call in this file.
- "npu_fusion": torch_npu.npu_fusion_attention, layout BSND, scale passed explicitly (the kernel's default is
  1.0, not 1/sqrt(D)), output taken at index [0] of the 7-tuple, causal mask inverted (True = masked out).
  Atlas A2/A3 training parts only; query heads <= 256, head_dim <= 768, value head_dim <= key head_dim.
- "cudnn", "flash", "efficient": torch SDPA restricted to that CUDA kernel.
- "math": the reference math. On CPU/CUDA SDPA's MATH kernel. On NPU an explicit fp32 matmul-softmax-matmul:
  torch_npu overrides F.scaled_dot_product_attention for NPU tensors and sends 4-D inputs with head_dim <= 512 to
  npu_fusion_attention whatever sdpa_kernel says, so "SDPA restricted to MATH" is not the math kernel there.
  `deterministic=True` selects it (its matmuls and softmax have deterministic kernels; the fused kernels'
  backward does not promise that); it has no head-count limit, so it is also the NPU fallback beyond 256 heads.
- "sdpa_cpu": SDPA's default CPU dispatch (its fused CPU flash kernel where it applies).
- "flash_cute": FlashAttention-4's CuTe kernels (optional pip package flash-attn-4; sm90/sm100, fp16/bf16) as
  custom ops that SAC can save (portable/flash_cute.py). Where it imports, auto mode puts it first for queries of
  >= FLASH_CUTE_MIN_SEQ tokens (Video2World at 480p/720p), where it measured faster than cuDNN.
Auto order: NPU -> npu_fusion; CUDA -> flash_cute for long sequences where installed, then cudnn, flash, efficient
on sm90/sm100, flash first elsewhere, efficient for fp32; CPU -> sdpa_cpu; math last everywhere.
`COSMOS_ATTN_BACKEND=<name>` forces one backend and fails with
one clear line if its constraints do not hold.

`DotProductAttention` stands in for TransformerEngine's module of the same name as upstream's DiT uses it.
"""

from __future__ import annotations

import inspect
import math
import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from . import device, flash_cute
from .user_error import UserNotImplementedError, UserRuntimeError, UserValueError

_HALF = (torch.float16, torch.bfloat16)
_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_ENV = "COSMOS_ATTN_BACKEND"
_SDPA_PRIORITY_KW = "set_priority" if "set_priority" in inspect.signature(sdpa_kernel).parameters else None


@dataclass(frozen=True)
class AttnParams:
    """What a backend needs besides q, k, v (already in the compute dtype, bshd, q already multiplied by q_scale)."""

    scale: float
    causal: bool
    dropout_p: float
    deterministic: bool


@dataclass(frozen=True)
class Backend:
    name: str
    devices: tuple[str, ...]
    check: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, AttnParams], str | None]
    run: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, AttnParams], torch.Tensor]
    # Auto-selection rank for an input (lower first), None = not in the auto order for it.
    priority: Callable[[torch.Tensor], float | None] = lambda q: None
    deterministic: bool = False  # may serve deterministic=True calls
    supports_cp: bool = True  # runs under the all-to-all CP op (full sequence, a slice of the heads)
    # Name fragments of the forward op(s) this backend's call shows a checkpoint policy (str(func)); empty when
    # it decomposes into matmuls/softmax (nothing single to save).
    saved_ops: tuple[str, ...] = ()

    def supports(self, q, k, v, p: AttnParams) -> str | None:
        """None if this backend can run the call, else the constraint that fails (one phrase)."""
        if device.DEVICE_TYPE not in self.devices:
            return f"needs device {'/'.join(self.devices)}, running on {device.DEVICE_TYPE}"
        return self.check(q, k, v, p)


BACKENDS: dict[str, Backend] = {}


def register(backend: Backend) -> Backend:
    """Add (or replace) a backend; the auto order, forcing by name and sac.py's saved ops all read BACKENDS."""
    BACKENDS[backend.name] = backend
    return backend


# ---------------------------------------------------------------- shared checks


def _common_check(q, k, v) -> str | None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return f"q, k, v must be 4-D [B, S, H, D], got {q.dim()}-D/{k.dim()}-D/{v.dim()}-D"
    if not (q.dtype == k.dtype == v.dtype):
        return f"q, k, v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype})"
    if q.shape[0] != k.shape[0] or k.shape[:3] != v.shape[:3]:
        return f"batch/sequence/head shapes disagree: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
    if q.shape[-1] != k.shape[-1]:
        return f"q and k head_dim differ ({q.shape[-1]} vs {k.shape[-1]})"
    if q.shape[2] % k.shape[2] != 0:
        return f"q heads ({q.shape[2]}) must be a multiple of k/v heads ({k.shape[2]})"
    return None


def _cuda_cc(t: torch.Tensor) -> int:
    if t.device.type != "cuda":
        return 0
    major, minor = torch.cuda.get_device_capability(t.device)
    return major * 10 + minor


# ---------------------------------------------------------------- SDPA backends


def _sdpa(q, k, v, p: AttnParams, backends: list | None) -> torch.Tensor:
    # SDPA wants [B, H, S, D]; enable_gqa covers k/v with fewer heads.
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    kwargs = dict(attn_mask=None, dropout_p=p.dropout_p, is_causal=p.causal, scale=p.scale)
    if kt.shape[1] != qt.shape[1]:
        kwargs["enable_gqa"] = True
    if backends is None:
        out = F.scaled_dot_product_attention(qt, kt, vt, **kwargs)
    else:
        ctx = (
            sdpa_kernel(backends, **{_SDPA_PRIORITY_KW: True})
            if _SDPA_PRIORITY_KW and len(backends) > 1
            else sdpa_kernel(backends[0])
        )
        with ctx:
            out = F.scaled_dot_product_attention(qt, kt, vt, **kwargs)
    return out.transpose(1, 2)


def _cuda_half_check(name: str, min_cc: int, max_d: int):
    def check(q, k, v, p):
        why = _common_check(q, k, v)
        if why:
            return why
        if q.device.type != "cuda":
            return f"tensors must be on cuda, got {q.device}"
        if q.dtype not in _HALF:
            return f"{name} needs fp16/bf16, got {q.dtype}"
        cc = _cuda_cc(q)
        if cc < min_cc:
            return f"{name} needs compute capability >= {min_cc / 10:.1f}, device has {cc / 10:.1f}"
        d = q.shape[-1]
        if d % 8 != 0 or d > max_d:
            return f"{name} needs head_dim a multiple of 8 and <= {max_d}, got {d}"
        if p.deterministic:
            return f"{name} backward is not deterministic"
        return None

    return check


def _efficient_check(q, k, v, p):
    why = _common_check(q, k, v)
    if why:
        return why
    if q.device.type != "cuda":
        return f"tensors must be on cuda, got {q.device}"
    if q.dtype == torch.bfloat16 and _cuda_cc(q) < 80:
        return "efficient attention needs compute capability >= 8.0 for bf16"
    if p.deterministic:
        return "efficient attention backward is not deterministic"
    return None


def _math_check(q, k, v, p):
    return _common_check(q, k, v)


def _math_explicit(q, k, v, p: AttnParams) -> torch.Tensor:
    """softmax(scale * q k^T [+ causal mask]) v in fp32 from plain matmuls (no fused kernel anywhere)."""
    qt, kt, vt = (x.transpose(1, 2).float() for x in (q, k, v))
    if kt.shape[1] != qt.shape[1]:
        rep = qt.shape[1] // kt.shape[1]
        kt, vt = kt.repeat_interleave(rep, dim=1), vt.repeat_interleave(rep, dim=1)
    scores = torch.matmul(qt, kt.transpose(-1, -2)) * p.scale
    if p.causal:
        sq, sk = scores.shape[-2:]
        # SDPA's is_causal: aligned top-left (query i sees keys 0..i)
        scores = scores.masked_fill(q.new_ones((sq, sk), dtype=torch.bool).triu(1), float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if p.dropout_p > 0:
        probs = F.dropout(probs, p=p.dropout_p)
    return torch.matmul(probs, vt).to(q.dtype).transpose(1, 2)


def _math_run(q, k, v, p: AttnParams) -> torch.Tensor:
    if device.DEVICE_TYPE == "npu":  # SDPA would go to npu_fusion_attention there (see the module docstring)
        return _math_explicit(q, k, v, p)
    return _sdpa(q, k, v, p, [SDPBackend.MATH])


def _sdpa_cpu_check(q, k, v, p):
    why = _common_check(q, k, v)
    if why:
        return why
    if q.device.type != "cpu":
        return f"tensors must be on cpu, got {q.device}"
    return None


_CUDA_SDPA = {
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
}


def _cuda_run(name: str):
    def run(q, k, v, p):
        # A forced backend runs alone; auto mode adds SDPA's fall-through in attention().
        return _sdpa(q, k, v, p, [_CUDA_SDPA[name]])

    return run


def _cuda_half_rank(first_on_hopper: bool):
    """cuDNN first on sm90/sm100, flash first elsewhere; neither for fp32."""
    def rank(q):
        if q.dtype not in _HALF:
            return None
        return 0 if (_cuda_cc(q) in (90, 100)) == first_on_hopper else 1

    return rank


register(Backend("cudnn", ("cuda",), _cuda_half_check("cudnn", 80, 256), _cuda_run("cudnn"),
                 priority=_cuda_half_rank(True), saved_ops=("_scaled_dot_product_cudnn_attention",)))
register(Backend("flash", ("cuda",), _cuda_half_check("flash", 80, 256), _cuda_run("flash"),
                 priority=_cuda_half_rank(False), saved_ops=("_scaled_dot_product_flash_attention",)))
register(Backend("efficient", ("cuda",), _efficient_check, _cuda_run("efficient"), priority=lambda q: 2,
                 saved_ops=("_scaled_dot_product_efficient_attention",)))
register(Backend("math", ("cpu", "cuda", "npu"), _math_check, _math_run, priority=lambda q: 9, deterministic=True,
                 # only seen where the composite is not decomposed first (and never for the NPU's explicit math)
                 saved_ops=("_scaled_dot_product_attention_math",)))
register(Backend("sdpa_cpu", ("cpu",), _sdpa_cpu_check, lambda q, k, v, p: _sdpa(q, k, v, p, None),
                 priority=lambda q: 0,
                 # the CPU flash kernel (…_flash_attention_for_cpu) and the privateuse1 hook SDPA may pick
                 saved_ops=("_scaled_dot_product_flash_attention_for_cpu",
                            "_scaled_dot_product_fused_attention_overrideable")))


# ---------------------------------------------------------------- FlashAttention-4 (CuTe), optional


# Auto-selected (before cuDNN) from this query length on: on one H200 (BENCHMARKS.md 2d) FA4 ran the 2B DiT's
# attention at 84480 tokens 1.15x faster than cuDNN 9.19 forward+backward and 1.13x forward, but at 4080 tokens
# (Text2Image 768x1360) its forward+backward was 1.35x slower. Between the two, not measured.
FLASH_CUTE_MIN_SEQ = 32768


_flash_cute_half_check = _cuda_half_check("flash_cute", 90, 256)


def _flash_cute_check(q, k, v, p):
    why = _flash_cute_half_check(q, k, v, p)
    if why:
        return why
    cc = _cuda_cc(q)
    if cc not in (90, 100):
        return f"flash_cute runs on sm90/sm100 only, device is sm{cc}"
    if p.dropout_p:
        return "flash_cute has no attention dropout"
    return flash_cute.import_error()


def _flash_cute_rank(q):
    if q.dtype not in _HALF or q.shape[1] < FLASH_CUTE_MIN_SEQ or _cuda_cc(q) not in (90, 100):
        return None
    return -1 if flash_cute.import_error() is None else None


register(Backend("flash_cute", ("cuda",), _flash_cute_check,
                 lambda q, k, v, p: flash_cute.attention(q, k, v, p.scale, p.causal),
                 priority=_flash_cute_rank, saved_ops=("flash_cute_fwd",)))


# ---------------------------------------------------------------- NPU backend

_NPU_MASK_SIDE = 2048  # sparse_mode 2/3 take a compressed 2048x2048 upper-triangular mask
_npu_masks: dict = {}


def _npu_causal_mask(q: torch.Tensor) -> torch.Tensor:
    key = str(q.device)
    if key not in _npu_masks:
        # True = masked out (inverted vs SDPA's boolean attn_mask): strictly above the diagonal. new_ones: on q's
        # device, whatever that is.
        ones = q.new_ones((_NPU_MASK_SIDE, _NPU_MASK_SIDE), dtype=torch.bool)
        _npu_masks[key] = torch.triu(ones, diagonal=1)
    return _npu_masks[key]


def _npu_check(q, k, v, p):
    why = _common_check(q, k, v)
    if why:
        return why
    if device.npu_module() is None:
        return "torch_npu is not loaded"
    soc = device.npu_soc()
    if soc is not None and device.npu_product(soc) not in ("Atlas A2 training", "Atlas A3 training"):
        return f"npu_fusion_attention needs an Atlas A2/A3 training part, this NPU is {soc}"
    if q.shape[-1] > 768:
        return f"npu_fusion_attention needs head_dim <= 768, got {q.shape[-1]}"
    if v.shape[-1] > k.shape[-1]:
        return f"npu_fusion_attention needs value head_dim <= key head_dim, got {v.shape[-1]} > {k.shape[-1]}"
    if q.shape[2] > 256:
        return f"npu_fusion_attention needs query heads <= 256, got {q.shape[2]}"
    if p.deterministic:
        return "npu_fusion_attention is not guaranteed deterministic"
    return None


def _npu_run(q, k, v, p: AttnParams) -> torch.Tensor:
    npu = device.npu_module()
    kwargs = dict(
        head_num=q.shape[2],
        input_layout="BSND",
        scale=p.scale,  # the kernel's default is 1.0: always pass 1/sqrt(D) (or the caller's scale)
        keep_prob=1.0 - p.dropout_p,
    )
    if p.causal:
        # sparse_mode 2 = "leftUpCausal": the mask is aligned top-left, as SDPA's is_causal; the kernel then
        # expects the compressed 2048x2048 upper-triangular mask whatever the sequence lengths.
        kwargs.update(atten_mask=_npu_causal_mask(q), sparse_mode=2)
    # BSND views (e.g. from sbhd) are made dense first; a no-op for the DiT's contiguous q/k/v.
    return npu.npu_fusion_attention(q.contiguous(), k.contiguous(), v.contiguous(), **kwargs)[0]


register(Backend("npu_fusion", ("npu",), _npu_check, _npu_run, priority=lambda q: 0,
                 saved_ops=("npu_fusion_attention",)))  # its grad op is a backward op: never reaches a policy


def auto_order(q: torch.Tensor, deterministic: bool = False) -> list[str]:
    """Backend names to try, best first, for this device and input (from the registered priorities)."""
    ranked = []
    for b in BACKENDS.values():
        if device.DEVICE_TYPE not in b.devices or (deterministic and not b.deterministic):
            continue
        rank = b.priority(q)
        if rank is not None:
            ranked.append((rank, b.name))
    return [name for _, name in sorted(ranked)]


def saved_op_fragments() -> tuple[str, ...]:
    """Every registered backend's forward op names (for selective activation checkpointing)."""
    return tuple(dict.fromkeys(f for b in BACKENDS.values() for f in b.saved_ops))


def forced_backend() -> str | None:
    name = os.environ.get(_ENV, "").strip()
    if not name:
        return None
    if name not in BACKENDS:
        raise UserValueError(
            f"{_ENV}={name!r} is not an attention backend (environment). "
            f"Use one of {', '.join(BACKENDS)}, or unset it."
        )
    return name


def select_backend(q, k, v, p: AttnParams) -> str:
    forced = forced_backend()
    if forced:
        why = BACKENDS[forced].supports(q, k, v, p)
        if why:
            raise UserRuntimeError(
                f"attention backend {forced!r} forced by {_ENV} cannot run this call: {why} "
                f"(q {tuple(q.shape)} {q.dtype} on {q.device}). Unset {_ENV} or pick another backend."
            )
        return forced
    reasons = []
    for name in auto_order(q, p.deterministic):
        why = BACKENDS[name].supports(q, k, v, p)
        if why is None:
            return name
        reasons.append(f"{name}: {why}")
    raise UserRuntimeError(
        f"no attention backend can run this call ({'; '.join(reasons)}) "
        f"(q {tuple(q.shape)} {q.dtype} on {q.device}). Check the input shapes and dtypes."
    )


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_lens=None,
    k_lens=None,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    q_scale=None,
    causal: bool = False,
    deterministic: bool = False,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """q [B, Sq, H, D], k/v [B, Sk, Hkv, D] -> [B, Sq, H, D] in the compute dtype (input dtype unless `dtype`)."""
    if q_lens is not None or k_lens is not None:
        # Upstream silently ignores them on its SDPA path; a wrong answer is worse than an error.
        raise UserNotImplementedError(
            "variable-length attention (q_lens/k_lens) is not supported (portable.attention). "
            "Pass padded tensors without q_lens/k_lens."
        )
    dtype = q.dtype if dtype is None else dtype
    if dtype not in _SUPPORTED_DTYPES:
        raise UserNotImplementedError(
            f"attention dtype {dtype} is not supported (portable.attention). Use bf16, fp16 or fp32."
        )
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    if q_scale is not None:
        q = q * q_scale
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    p = AttnParams(scale=float(scale), causal=bool(causal), dropout_p=float(dropout_p), deterministic=deterministic)
    name = select_backend(q, k, v, p)
    if device.DEVICE_TYPE == "cuda" and forced_backend() is None and name in _CUDA_SDPA and _SDPA_PRIORITY_KW:
        # Auto mode on CUDA: let SDPA fall through to the next kernel if the chosen one rejects a detail our
        # checks do not model (e.g. a stride), instead of failing.
        order = [_CUDA_SDPA[n] if n in _CUDA_SDPA else SDPBackend.MATH for n in auto_order(q, deterministic)]
        order = order[order.index(_CUDA_SDPA[name]) :]
        return _sdpa(q, k, v, p, order).contiguous()
    return BACKENDS[name].run(q, k, v, p).contiguous()


class DotProductAttention(torch.nn.Module):
    """Drop-in for transformer_engine.pytorch.DotProductAttention as upstream's DiT uses it.

    Supports qkv_format "bshd" / "sbhd", attn_mask_type "no_mask" / "causal", GQA through num_gqa_groups.
    Returns [B, S, H*D] for bshd ([S, B, H*D] for sbhd), like TE. Context parallelism is not implemented here:
    `set_context_parallel_group` raises for a group of more than one rank instead of computing attention on the
    local chunk only (which would be silently wrong).
    """

    def __init__(
        self,
        num_attention_heads: int,
        kv_channels: int,
        num_gqa_groups: int | None = None,
        attention_dropout: float = 0.0,
        qkv_format: str = "sbhd",
        attn_mask_type: str = "causal",
        softmax_scale: float | None = None,
        **unused,
    ) -> None:
        super().__init__()
        if qkv_format not in ("bshd", "sbhd"):
            raise UserValueError(
                f"qkv_format={qkv_format!r} is not supported (portable.attention.DotProductAttention). "
                "Use 'bshd' or 'sbhd'."
            )
        if attn_mask_type not in ("no_mask", "causal"):
            raise UserValueError(
                f"attn_mask_type={attn_mask_type!r} is not supported "
                "(portable.attention.DotProductAttention). Use 'no_mask' or 'causal'."
            )
        self.num_attention_heads = num_attention_heads
        self.kv_channels = kv_channels
        self.num_gqa_groups = num_gqa_groups or num_attention_heads
        self.attention_dropout = attention_dropout
        self.qkv_format = qkv_format
        self.attn_mask_type = attn_mask_type
        self.softmax_scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(kv_channels)
        self.cp_group = None

    def set_context_parallel_group(self, cp_group, cp_global_ranks=None, cp_stream=None, *args, **kwargs) -> None:
        size = 1
        if cp_group is not None:
            size = cp_group.size() if hasattr(cp_group, "size") else len(cp_global_ranks or [])
        elif cp_global_ranks is not None:
            size = len(cp_global_ranks)
        if size > 1:
            raise UserRuntimeError(
                f"context parallelism over {size} ranks is not supported by the portable "
                "DotProductAttention (the transformer_engine attention backend). Use context_parallel_size=1 "
                "for this model, or a net with the minimal_a2a attention backend."
            )
        self.cp_group = cp_group

    def forward(
        self,
        query_layer,
        key_layer,
        value_layer,
        attention_mask=None,
        qkv_format: str | None = None,
        attn_mask_type: str | None = None,
        **kwargs,
    ) -> torch.Tensor:
        unsupported = sorted(k for k, val in kwargs.items() if val is not None and k != "core_attention_bias_type")
        if attention_mask is not None or unsupported:
            what = ", ".join((["attention_mask"] if attention_mask is not None else []) + unsupported)
            raise UserNotImplementedError(
                f"{what} not supported (portable.attention.DotProductAttention). "
                "Use padded bshd/sbhd inputs with attn_mask_type 'no_mask' or 'causal'."
            )
        fmt = qkv_format or self.qkv_format
        mask_type = attn_mask_type or self.attn_mask_type
        if fmt not in ("bshd", "sbhd") or mask_type not in ("no_mask", "causal"):
            raise UserValueError(
                f"qkv_format={fmt!r} / attn_mask_type={mask_type!r} not supported "
                "(portable.attention.DotProductAttention). Use bshd/sbhd and no_mask/causal."
            )
        q, k, v = query_layer, key_layer, value_layer
        if fmt == "sbhd":
            q, k, v = (x.transpose(0, 1) for x in (q, k, v))
        out = attention(
            q,
            k,
            v,
            dropout_p=self.attention_dropout if self.training else 0.0,
            softmax_scale=self.softmax_scale,
            causal=mask_type == "causal",
        )
        if fmt == "sbhd":
            out = out.transpose(0, 1)
        return out.reshape(*out.shape[:2], -1)

    # TE modules carry an `_extra_state` entry (FP8 metadata); emit and accept one so strict loads of TE-made
    # checkpoints work in both directions.
    def get_extra_state(self) -> torch.Tensor:
        return torch.empty(0, dtype=torch.uint8)

    def set_extra_state(self, state) -> None:
        return None
