"""The Triton source of portable/adamw_kernel.py (imported only there, and only when triton imports: CPU wheels
lack it). One program per CHUNK elements of one tensor; tensors are addressed from each list's first tensor by an
offset table in units of 8 elements, so Triton can prove 16-byte alignment and vectorise (as portable/lerp_kernel.py).

Per element, in fp32: the gradient read in its own dtype (bf16 as the backward wrote it), scaled by GradClip's
coefficient where one is given (rounded back to the gradient's dtype, as the clip's in-place multiply would have
left it), then torch's fused Adam(W) arithmetic (ATen fused_adam_utils.cuh adam_math) on the fp32 master and
moments, and the parameter written once, rounded to its dtype."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _ld(ptr, mask, MASKED: tl.constexpr):
    if MASKED:
        return tl.load(ptr, mask=mask, other=0.0)
    else:
        return tl.load(ptr)


@triton.jit
def _st(ptr, value, mask, MASKED: tl.constexpr):
    if MASKED:
        tl.store(ptr, value, mask=mask)
    else:
        tl.store(ptr, value)


@triton.jit
def _adam_block(wp, gp, mp, vp, pp, mask, coef, lrwd, wd, beta1, beta2, eps, step_size, bc2_sqrt,
                HAS_SCALE: tl.constexpr, ADAMW: tl.constexpr, WRITE_P: tl.constexpr, MASKED: tl.constexpr,
                SANITIZE: tl.constexpr):
    g_raw = _ld(gp, mask, MASKED)
    g = g_raw.to(tl.float32)
    if SANITIZE:  # upstream's nan_to_num(nan=0, posinf=0, neginf=0): g * 0 is 0 for finite g only
        g = tl.where(g * 0.0 == 0.0, g, 0.0)
    if HAS_SCALE:
        g = (g * coef).to(g_raw.dtype).to(tl.float32)
    w = _ld(wp, mask, MASKED)
    m = _ld(mp, mask, MASKED)
    v = _ld(vp, mask, MASKED)
    if ADAMW:
        w = w - lrwd * w
    else:
        g = g + w * wd
    m = beta1 * m + (1.0 - beta1) * g
    v = beta2 * v + (1.0 - beta2) * g * g
    denom = tl.div_rn(tl.sqrt_rn(v), bc2_sqrt) + eps
    w = w - step_size * tl.div_rn(m, denom)
    _st(wp, w, mask, MASKED)
    _st(mp, m, mask, MASKED)
    _st(vp, v, mask, MASKED)
    if WRITE_P:
        _st(pp, w.to(pp.dtype.element_ty), mask, MASKED)


@triton.jit
def adam_chunks(w_ptr, g_ptr, m_ptr, v_ptr, p_ptr, w_off, g_off, m_off, v_off, p_off, numel, chunk_tensor,
                chunk_index, scale_ptr, inf_ptr, lrwd, wd, beta1, beta2, eps, step_size, bc2_sqrt,
                HAS_SCALE: tl.constexpr, HAS_INF: tl.constexpr, ADAMW: tl.constexpr, WRITE_P: tl.constexpr,
                CHUNK: tl.constexpr, BLOCK: tl.constexpr, SANITIZE: tl.constexpr = False):
    pid = tl.program_id(0)
    run = True
    if HAS_INF:  # found_inf (a 0-dim float, 1 when a gradient is not finite): nothing is written
        run = tl.load(inf_ptr) == 0
    if run:
        t = tl.load(chunk_tensor + pid)
        start = tl.load(chunk_index + pid).to(tl.int64) * CHUNK
        rem = tl.load(numel + t) - start
        wp = w_ptr + tl.load(w_off + t) * 8 + start  # * 8: Triton then knows the 16-byte alignment
        gp = g_ptr + tl.load(g_off + t) * 8 + start
        mp = m_ptr + tl.load(m_off + t) * 8 + start
        vp = v_ptr + tl.load(v_off + t) * 8 + start
        pp = p_ptr
        if WRITE_P:
            pp = p_ptr + tl.load(p_off + t) * 8 + start
        coef = 1.0
        if HAS_SCALE:
            coef = tl.load(scale_ptr).to(tl.float32)
        offs = tl.arange(0, BLOCK)
        if rem >= CHUNK:  # a full chunk: no masks, vector loads
            for i in range(0, CHUNK, BLOCK):
                _adam_block(wp + i + offs, gp + i + offs, mp + i + offs, vp + i + offs, pp + i + offs, None, coef,
                            lrwd, wd, beta1, beta2, eps, step_size, bc2_sqrt, HAS_SCALE, ADAMW, WRITE_P, False,
                            SANITIZE)
        else:  # the tensor's last chunk
            for i in range(0, CHUNK, BLOCK):
                _adam_block(wp + i + offs, gp + i + offs, mp + i + offs, vp + i + offs, pp + i + offs,
                            i + offs < rem, coef, lrwd, wd, beta1, beta2, eps, step_size, bc2_sqrt, HAS_SCALE,
                            ADAMW, WRITE_P, True, SANITIZE)


@triton.jit
def sumsq_if_chunks(g_ptr, g_off, numel, chunk_tensor, chunk_index, flag_ptr, out_ptr, CHUNK: tl.constexpr,
                    BLOCK: tl.constexpr):
    """out += the sum of squares of the gradients with NaN/inf as 0 (in fp32), only when the 0-dim float flag is not
    0: GradClip's norm after upstream's nan_to_num, which a finite step never needs (each program then reads the
    flag and stops)."""
    pid = tl.program_id(0)
    if tl.load(flag_ptr) != 0:
        t = tl.load(chunk_tensor + pid)
        start = tl.load(chunk_index + pid).to(tl.int64) * CHUNK
        rem = tl.load(numel + t) - start
        gp = g_ptr + tl.load(g_off + t) * 8 + start
        offs = tl.arange(0, BLOCK)
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for i in range(0, CHUNK, BLOCK):
            g = tl.load(gp + i + offs, mask=i + offs < rem, other=0.0).to(tl.float32)
            g = tl.where(g * 0.0 == 0.0, g, 0.0)
            acc += g * g
        tl.atomic_add(out_ptr, tl.sum(acc, axis=0))
