"""FlashAttention-4's CuTe kernels (pip package `flash-attn-4`, module `flash_attn.cute`) as two torch custom ops.

Optional: nothing here is imported unless the package is installed and the "flash_cute" attention backend is
considered (portable/attention.py registers it; its check says why it cannot run). Hopper (sm90) and Blackwell
(sm100) only.

Why custom ops instead of calling `flash_attn.cute.flash_attn_func`: selective activation checkpointing decides
what to keep by the op it sees dispatched, and FA4 launches its kernels outside the dispatcher, so a plain
autograd.Function would be recomputed in backward (the cost our SAC patch removes for SDPA). As
`cosmos_portable::flash_cute_fwd` (output and log-sum-exp) the policy sees and saves it (`saved_ops` in
attention.py); the backward is `cosmos_portable::flash_cute_bwd`. Fake (meta) implementations give shapes only.
"""

from __future__ import annotations

import importlib.util
import os

import torch

_NS = "cosmos_portable"


def available() -> bool:
    """True if a `flash_attn.cute` is installed (found, not imported: its import takes seconds)."""
    try:
        return importlib.util.find_spec("flash_attn.cute") is not None
    except (ImportError, ValueError):  # a `flash_attn` that is not a package, or a broken one
        return False


_IMPORT: dict = {}


def import_error() -> str | None:
    """None if flash_attn.cute imports (tried once per process), else why not: an installed but broken package
    (e.g. the CuTe DSL's `cutlass` missing from the path) must fail the backend's check, not the training step."""
    if "error" not in _IMPORT:
        if not available():
            _IMPORT["error"] = "flash_attn.cute is not installed (pip package flash-attn-4)"
        else:
            try:
                _interface()
                _IMPORT["error"] = None
            except Exception as exc:  # ImportError, or a library load failure inside the package
                _IMPORT["error"] = f"flash_attn.cute failed to import ({type(exc).__name__}: {exc})"
    return _IMPORT["error"]


def _interface():
    from flash_attn.cute import interface  # the package's own entry points, imported on first use only

    return interface


# Forward kernel configuration where measured better than FA4's own choice at Cosmos shapes, per
# (compute capability major, head_dim, causal): keyword arguments of `_flash_attn_fwd`. Empty: FA4 decides.
# COSMOS_FLASH_CUTE_FWD_TILE (see parse_fwd_config) overrides it for every call; bench_ops.py --fa4-fwd-tiles
# measures the candidates side by side.
FWD_CONFIGS: dict[tuple[int, int, bool], dict] = {
    # H200, 2026-12-02 (BENCHMARKS.md 2e): 2B self-attention at 720p (84480 tokens, 16 heads) 86.6 ms against FA4's
    # own 128x128 tiling's 88.3 ms, the same output bit for bit; the 720p no-grad pass 2.987 s against 3.049 s.
    (9, 128, False): {"tile_mn": (192, 128), "mma_pv_is_rs": False, "num_threads": 512},
}
_ENV_TILE = "COSMOS_FLASH_CUTE_FWD_TILE"
_FWD_KW: dict = {}


def parse_fwd_config(text: str, where: str = _ENV_TILE) -> dict:
    """'128x176' or '128x176,rs=0,overlap=1,threads=384' -> keyword arguments of FA4's `_flash_attn_fwd`
    (tile_mn, mma_pv_is_rs, intra_wg_overlap, num_threads)."""
    from .user_error import UserValueError

    parts = [x.strip() for x in text.split(",") if x.strip()]
    keys = {"rs": "mma_pv_is_rs", "overlap": "intra_wg_overlap", "threads": "num_threads"}
    try:
        m, n = (int(x) for x in parts[0].lower().split("x"))
        kw: dict = {"tile_mn": (m, n)}
        for item in parts[1:]:
            key, val = item.split("=")
            kw[keys[key.strip()]] = int(val) if key.strip() == "threads" else bool(int(val))
    except (ValueError, KeyError, IndexError):
        raise UserValueError(f"bad flash_cute forward config {text!r}", where,
                             "Use MxN with optional ,rs=0|1,overlap=0|1,threads=N, e.g. 128x176 or "
                             "128x128,rs=1,overlap=1") from None
    return kw


def fwd_kwargs(q: torch.Tensor, causal: bool) -> dict:
    """The forward configuration for q's device, head_dim and causality (decided once per key per process)."""
    key = (q.device.index, q.shape[-1], bool(causal))
    if key not in _FWD_KW:
        env = os.environ.get(_ENV_TILE, "").strip()
        if env:
            _FWD_KW[key] = parse_fwd_config(env)
        else:
            major = torch.cuda.get_device_capability(q.device)[0] if q.is_cuda else 0
            _FWD_KW[key] = dict(FWD_CONFIGS.get((major, q.shape[-1], bool(causal)), {}))
    return _FWD_KW[key]


def _fwd_impl(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool):
    out, lse = _interface()._flash_attn_fwd(q, k, v, softmax_scale=scale, causal=causal, return_lse=True,
                                            **fwd_kwargs(q, causal))[:2]
    return out, lse


def _bwd_impl(dout, q, k, v, out, lse, scale: float, causal: bool):
    dq, dk, dv = _interface()._flash_attn_bwd(q, k, v, out, dout, lse, softmax_scale=scale, causal=causal)[:3]
    return dq, dk, dv


def _define():
    """Define the two ops once per process (this file may be loaded under more than one package name)."""
    try:
        return getattr(torch.ops, _NS).flash_cute_fwd, getattr(torch.ops, _NS).flash_cute_bwd
    except (AttributeError, RuntimeError):
        pass

    @torch.library.custom_op(f"{_NS}::flash_cute_fwd", mutates_args=())
    def flash_cute_fwd(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return _fwd_impl(q, k, v, scale, causal)

    @flash_cute_fwd.register_fake
    def _(q, k, v, scale, causal):
        b, s, h, _ = q.shape
        return q.new_empty((b, s, h, v.shape[-1])), q.new_empty((b, h, s), dtype=torch.float32)

    @torch.library.custom_op(f"{_NS}::flash_cute_bwd", mutates_args=())
    def flash_cute_bwd(
        dout: torch.Tensor,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        out: torch.Tensor,
        lse: torch.Tensor,
        scale: float,
        causal: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return _bwd_impl(dout, q, k, v, out, lse, scale, causal)

    @flash_cute_bwd.register_fake
    def _(dout, q, k, v, out, lse, scale, causal):
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)

    def setup_context(ctx, inputs, output):
        q, k, v, scale, causal = inputs
        out, lse = output
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale, ctx.causal = scale, causal

    def backward(ctx, dout, dlse):
        # dlse: the log-sum-exp is an internal output (attention() returns `out` only), so it has no gradient.
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = torch.ops.cosmos_portable.flash_cute_bwd(dout.contiguous(), q, k, v, out, lse, ctx.scale,
                                                              ctx.causal)
        return dq, dk, dv, None, None

    flash_cute_fwd.register_autograd(backward, setup_context=setup_context)
    return getattr(torch.ops, _NS).flash_cute_fwd, getattr(torch.ops, _NS).flash_cute_bwd


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool) -> torch.Tensor:
    """q [B, S, H, D], k/v [B, Sk, Hkv, D] -> [B, S, H, D] through FA4 (differentiable; SAC sees flash_cute_fwd)."""
    fwd, _ = _define()
    return fwd(q.contiguous(), k.contiguous(), v.contiguous(), float(scale), bool(causal))[0]
