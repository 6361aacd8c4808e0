"""FusedAdam's update on CUDA in one Triton launch: bf16 gradients read in registers, GradClip's scale applied there,
the bf16 parameters written from the fp32 masters in the same pass.

torch's fused AdamW kernel (torch._fused_adamw_) takes lists of one dtype, so FusedAdam's default CUDA path is three
passes over the 2B parameters of the Text2Image net: the bf16 gradients copied into an fp32 buffer
(portable/upcast.py, 2 + 4 bytes per element), the kernel (4 + 4 + 8 + 8 + 8 + ... : fp32 gradient, master and
moments read, master and moments written) and the copy of the masters back into the bf16 parameters (4 + 2), plus
GradClip's in-place scale of the gradients before them (2 + 2). Here it is one pass of 2 (gradient) + 8 + 8 + 8
(master, moments: read and write) + 2 (parameter) = 28 bytes per element against about 56 for the four, and one
launch per (device, dtype) group of the step instead of one or more per 64M-element bucket and pass.

Arithmetic (portable/adamw_triton.py): torch's fused Adam(W) in fp32 (torch computes a few products in double, so
the results agree to fp32 rounding, not bitwise: tests/ops/test_cuda.py). Compiled without FMA contraction, so that
each variant (with or without the scale, the skip flag) rounds every product the same way: the scale in the step and
the clip's multiply before it then give the same values bitwise. The gradient scale is GradClip's
coefficient as a 0-dim device tensor; the scaled gradient is rounded to the gradient's dtype, as the clip's
in-place multiply leaves it, so the clip before the step and the scale in the step give the same values bitwise.
`found_inf` (0-dim float, 1 = skip): nothing is written, as torch's kernel.

Tables as portable/lerp_kernel.py: offsets from each list's first tensor in units of 8 elements, one program per
CHUNK elements; the gradients' table is kept apart (gradients set to None between steps come back at other
addresses now and then: one small table is checked and uploaded again, not all five). A list it cannot take
(unaligned or strided views, mixed dtypes, no triton, not CUDA) makes `step_` return False and FusedAdam keeps
torch's kernel. COSMOS_ADAM_KERNEL=0 turns it off; a first launch that fails
(Triton compiles there) turns it off for the process with one warning.
"""

from __future__ import annotations

import torch

from . import device
from .lerp_kernel import _upload, chunk_table, guarded_launch  # the tables' helpers and the first-launch guard

CHUNK = 8192  # elements per program
BLOCK = 1024  # elements per inner iteration of a program
_ALIGN = 8  # offsets in units of 8 elements: 32 bytes of fp32, 16 of bf16
_MAX_PLANS = 8

_plans: dict = {}  # (device, pointers and sizes of masters, moments, parameters) -> device tables, or why not
_grad_tables: dict = {}  # (device, gradient pointers, sizes) -> the gradients' offset table, or why not
_chunks: dict = {}  # (device, sizes) -> device chunk table
STATS = {"launches": 0, "tables": 0, "offset_uploads": 0, "grad_uploads": 0}  # for benchmarks and tests
_kernel = None  # the jitted kernel, imported at first use (triton is slow to import and CUDA-only)
_unavailable: str | None = None  # why the kernel cannot be used in this process, once known
_launched: set = set()  # (has_scale, has_inf, adamw, write_p, sanitize) variants that compiled and launched
_sumsq_tables: dict = {}  # (device, gradient pointers, sizes) -> (offsets, numel, chunk tables) or why not

LISTS = ("work", "grads", "exp_avgs", "exp_avg_sqs", "params")


def enabled() -> bool:
    """COSMOS_ADAM_KERNEL (default on)."""
    return device.env_flag("COSMOS_ADAM_KERNEL", default=True)


def _build_kernel():
    global _kernel, _unavailable
    if _kernel is not None or _unavailable is not None:
        return _kernel
    try:
        from . import adamw_triton
    except Exception as exc:  # no triton (CPU wheels), or a broken install: torch's kernel stays
        _unavailable = f"triton not importable: {exc}"
        return None
    _kernel = adamw_triton.adam_chunks
    return _kernel


_WANT = {"work": (torch.float32,), "grads": (torch.bfloat16, torch.float16, torch.float32),
         "exp_avgs": (torch.float32,), "exp_avg_sqs": (torch.float32,), "params": (torch.bfloat16, torch.float16)}
_PLAIN = (torch.Tensor, torch.nn.Parameter)


def _list_offsets(name: str, lst: list[torch.Tensor], shapes):
    """One list's offsets in units of 8 elements from its first tensor (empty tensors left out), or why not."""
    if len(lst) != len(shapes):
        return "lists of different lengths"
    first = lst[0]
    if first.dtype not in _WANT[name]:
        return f"{name} are {first.dtype} (the kernel takes {', '.join(str(d) for d in _WANT[name])})"
    base, dev, unit = first.data_ptr(), first.device, _ALIGN * first.element_size()
    if base % 16:
        return f"{name}: first tensor not 16-byte aligned"
    out = []
    for i, (t, shape) in enumerate(zip(lst, shapes)):
        if type(t) not in _PLAIN:
            return f"{name}[{i}] is a {type(t).__name__} (plain tensors only)"
        if t.dtype != first.dtype or t.device != dev:
            return f"{name}[{i}]: dtype or device differs from the first"
        if t.shape != shape or not t.is_contiguous():
            return f"{name}[{i}]: shape differs or not contiguous"
        d = t.data_ptr() - base
        if d % unit:
            return f"{name}[{i}]: storage not aligned to {_ALIGN} elements"
        if t.numel():
            out.append(d // unit)
    return out


def plan(lists: list[list[torch.Tensor]]):
    """Where each tensor lies: (offsets per list, numel) as Python lists, offsets in units of 8 elements from each
    list's first tensor, empty tensors left out; or a string saying why these lists cannot take the kernel. The lists:
    work (fp32), grads (bf16/fp16/fp32), exp_avgs and exp_avg_sqs (fp32), and optionally params (bf16/fp16) to write.
    Host bookkeeping only: tests check it on CPU."""
    if not lists[0]:
        return "empty lists"
    shapes = [t.shape for t in lists[0]]
    offsets = []
    for name, lst in zip(LISTS, lists):
        o = _list_offsets(name, lst, shapes) if lst else "lists of different lengths"
        if isinstance(o, str):
            return o
        offsets.append(o)
    numel = [t.numel() for t in lists[0] if t.numel()]
    if not numel:
        return "no elements"
    dev = lists[0][0].device
    if any(lst[0].device != dev for lst in lists):
        return "lists on different devices"
    return offsets, numel


def _table(values: list[int], dev: torch.device) -> torch.Tensor:
    return _upload(torch.tensor(values, dtype=torch.int64), dev)


def _cache_put(cache: dict, key, value) -> None:
    if len(cache) >= _MAX_PLANS:
        cache.clear()
    cache[key] = value


def _chunk_tables(numel: list[int], dev: torch.device) -> tuple:
    """(chunk_tensor, chunk_index) on the device for tensors of these sizes, cached by the sizes."""
    key = (dev, tuple(numel))
    chunks = _chunks.get(key)
    if chunks is None:
        chunks = tuple(_upload(t, dev) for t in chunk_table(numel, CHUNK))
        _cache_put(_chunks, key, chunks)
        STATS["tables"] += 1
    return chunks


def _device_plan(lists):
    """(offset tables in LISTS order, numel, chunk_tensor, chunk_index) on the device, or why not (a string). Cached
    in two parts: the masters, moments and parameters by their storages (they stay for the run), with the chunk
    table by the sizes; the gradients' table by theirs (set to None between steps, gradients often come back at
    other addresses: then one table is checked and uploaded, not five)."""
    if any(len(lst) != len(lists[0]) for lst in lists):
        return "lists of different lengths"
    dev = lists[0][0].device
    static = [lists[0], *lists[2:]]
    skey = (dev, *(tuple(map(torch.Tensor.data_ptr, lst)) for lst in static),
            tuple(map(torch.Tensor.numel, lists[0])), tuple(lst[0].dtype for lst in static))
    fixed = _plans.get(skey)
    if fixed is None:
        shapes = [t.shape for t in lists[0]]
        names = ("work", "exp_avgs", "exp_avg_sqs", "params")
        offsets = []
        for name, lst in zip(names, static):
            o = _list_offsets(name, lst, shapes)
            if isinstance(o, str):
                fixed = o
                break
            if lst[0].device != dev:
                fixed = f"{name} on another device"
                break
            offsets.append(o)
        numel = [t.numel() for t in lists[0] if t.numel()]
        if fixed is None and not numel:
            fixed = "no elements"
        if fixed is None:
            fixed = ([_table(o, dev) for o in offsets], _table(numel, dev), *_chunk_tables(numel, dev))
            STATS["offset_uploads"] += 1
        _cache_put(_plans, skey, fixed)
    if isinstance(fixed, str):
        return fixed
    grads = lists[1]
    gkey = (dev, tuple(map(torch.Tensor.data_ptr, grads)), skey[-2], grads[0].dtype)
    gtable = _grad_tables.get(gkey)
    if gtable is None:
        o = _list_offsets("grads", grads, [t.shape for t in lists[0]])
        if isinstance(o, str):
            gtable = o
        elif grads[0].device != dev:
            gtable = "grads on another device"
        else:
            gtable = _table(o, dev)
            STATS["grad_uploads"] += 1
        _cache_put(_grad_tables, gkey, gtable)
    if isinstance(gtable, str):
        return gtable
    tables, numel, chunk_tensor, chunk_index = fixed
    return (tables[0], gtable, *tables[1:], numel, chunk_tensor, chunk_index)


def _why_unavailable(tensors: list[torch.Tensor]) -> str | None:
    """Why the kernels cannot take tensors like these here (empty, not CUDA, switched off, no triton), or None."""
    if not tensors:
        return "empty lists"
    if tensors[0].device.type != "cuda":
        return f"device {tensors[0].device.type} (CUDA only)"
    if not enabled():
        return "COSMOS_ADAM_KERNEL=0"
    if _build_kernel() is None or _unavailable is not None:
        return _unavailable
    return None


def _checked_plan(lists):
    return _why_unavailable(lists[0]) or _device_plan(lists)


def _lists(work, grads, exp_avgs, exp_avg_sqs, params):
    return [work, grads, exp_avgs, exp_avg_sqs] + ([params] if params is not None else [])


def why_not(work, grads, exp_avgs, exp_avg_sqs, params=None) -> str | None:
    """None when `step_` would take these lists, else the reason (for tests and benchmarks)."""
    p = _checked_plan(_lists(work, grads, exp_avgs, exp_avg_sqs, params))
    return p if isinstance(p, str) else None


@torch.no_grad()
def step_(work, grads, exp_avgs, exp_avg_sqs, params=None, *, lr: float, beta1: float, beta2: float, eps: float,
          weight_decay: float, adamw: bool, bias_correction1: float, bias_correction2: float,
          grad_scale: torch.Tensor | None = None, found_inf: torch.Tensor | None = None,
          sanitize: bool = False) -> bool:
    """One Adam(W) step of fp32 `work` tensors (masters, or fp32 parameters) and their fp32 moments from `grads`
    (times `grad_scale`, a 0-dim device tensor, when given), writing `params` (bf16/fp16, rounded once) when given;
    nothing when `found_inf` (0-dim float on the device) is 1. `sanitize`: NaN/inf gradient elements count as 0
    (upstream GradClip's nan_to_num, before the scale). True when done; False (nothing changed) when the lists
    cannot take the kernel (see why_not): the caller then runs its own path."""
    lists = _lists(work, grads, exp_avgs, exp_avg_sqs, params)
    p = _checked_plan(lists)
    if isinstance(p, str):
        return False
    if params is None:
        w_off, g_off, m_off, v_off, numel, chunk_tensor, chunk_index = p
        p_off, p0 = w_off, work[0]  # unused by the kernel (WRITE_P off)
    else:
        w_off, g_off, m_off, v_off, p_off, numel, chunk_tensor, chunk_index = p
        p0 = params[0]
    variant = (grad_scale is not None, found_inf is not None, bool(adamw), params is not None, bool(sanitize))
    scale = grad_scale if grad_scale is not None else numel  # a placeholder pointer when unused
    inf = found_inf if found_inf is not None else numel
    return _launch(
        lambda: _kernel[(chunk_tensor.numel(),)](
            work[0], grads[0], exp_avgs[0], exp_avg_sqs[0], p0, w_off, g_off, m_off, v_off, p_off, numel,
            chunk_tensor, chunk_index, scale, inf, float(lr) * float(weight_decay), float(weight_decay),
            float(beta1), float(beta2), float(eps), float(lr) / float(bias_correction1),
            float(bias_correction2) ** 0.5,
            HAS_SCALE=variant[0], HAS_INF=variant[1], ADAMW=variant[2], WRITE_P=variant[3], CHUNK=CHUNK,
            BLOCK=BLOCK, SANITIZE=variant[4], num_warps=4, enable_fp_fusion=False),
        work[0].device, variant, "FusedAdam keeps torch's fused kernel")


def _launch(launch, dev: torch.device, variant, fallback: str) -> bool:
    """guarded_launch for this module's kernels: a first launch that fails turns them all off for the process
    (False); True when launched."""
    global _unavailable
    why = guarded_launch(launch, dev, variant, _launched, "adamw_kernel.py", fallback)
    if why is not None:
        _unavailable = why
        return False
    STATS["launches"] += 1
    return True


def _sumsq_plan(grads: list[torch.Tensor]):
    """(offsets, numel, chunk_tensor, chunk_index) on the device for sumsq_if_, or why not (a string)."""
    return _why_unavailable(grads) or _sumsq_device_plan(grads)


def _sumsq_device_plan(grads: list[torch.Tensor]):
    dev = grads[0].device
    key = (dev, tuple(map(torch.Tensor.data_ptr, grads)), tuple(t.numel() for t in grads), grads[0].dtype)
    got = _sumsq_tables.get(key)
    if got is None:
        o = _list_offsets("grads", grads, [t.shape for t in grads])
        numel = [t.numel() for t in grads if t.numel()]
        if isinstance(o, str):
            got = o
        elif not numel:
            got = "no elements"
        else:
            got = (_table(o, dev), _table(numel, dev), *_chunk_tables(numel, dev))
        _cache_put(_sumsq_tables, key, got)
    return got


@torch.no_grad()
def sumsq_if_(grads: list[torch.Tensor], flag: torch.Tensor, out: torch.Tensor) -> bool:
    """out (0-dim fp32 on the device) += the sum of squares of `grads` with NaN/inf elements as 0, computed only when
    the 0-dim float `flag` is not 0, read on the device (a finite step costs one launch whose programs stop at once).
    GradClip's norm after upstream's nan_to_num, for portable/shards.py LateFiniteClip's on-device mode: the same
    value as torch's norms to fp32 rounding (another summation order). True when launched; False (nothing done)
    when the list cannot take the kernel."""
    p = _sumsq_plan(grads)
    if isinstance(p, str):
        return False
    offsets, numel, chunk_tensor, chunk_index = p
    return _launch(
        lambda: _sumsq_kernel()[(chunk_tensor.numel(),)](
            grads[0], offsets, numel, chunk_tensor, chunk_index, flag, out, CHUNK=CHUNK, BLOCK=BLOCK, num_warps=4),
        grads[0].device, ("sumsq",), "GradClip keeps its host check")


def _sumsq_kernel():
    from . import adamw_triton

    return adamw_triton.sumsq_if_chunks
