"""One Triton launch that moves a list of fp32 tensors toward a list of bf16/fp16 tensors: the EMA update on CUDA.

The EMA update reads the bf16 parameters into the fp32 EMA. torch has no foreach op over lists of two dtypes that
stays on its multi-tensor fast path, so portable/upcast.py copies the parameters into an fp32 buffer first and then
lerps: 4 + 8 bytes per element for the copy, 8 + 8 + 8 for the lerp (36 GB per update of the 2B DiT). This kernel
reads each bf16 source once, in registers, for 2 + 4 + 4 bytes (20 GB), in one launch for the whole list.

How one launch covers many tensors: every tensor is addressed from the list's first tensor by an element offset
(a small table on the device, uploaded once per set of storages), and split into chunks of CHUNK elements, one
program per chunk (a table kept per set of sizes). Offsets are stored in units of 8 elements and chunk starts are
multiples of CHUNK, so Triton can prove 16-byte alignment and vectorise; tensors whose storage is not aligned that
way, strided views, and any list this module cannot take, return False from `lerp_` and the caller keeps its
foreach path.

Arithmetic: torch.lerp's (self + w * (end - self) for |w| < 0.5, else end - (end - self) * (1 - w)) in fp32, the
same formula as the foreach path's `_foreach_lerp_`, so the same values to fp32 rounding (tests/ops/test_cuda.py).
With a skip flag (a 0-dim device float) the launch writes nothing where it is nonzero: the EMA update of an optimizer
step that GradClip's pending finite check may have skipped on the device (portable/shards.py LateFiniteClip).
CUDA only, with triton importable; COSMOS_EMA_KERNEL=0 turns it off. A first launch that fails (Triton compiles
there: no ptxas, an unsupported GPU) turns it off for the process with one warning, and the caller's path runs.
"""

from __future__ import annotations

import warnings

import torch

from . import device

CHUNK = 8192  # elements per program: 2B parameters are ~245k programs
BLOCK = 1024  # elements per inner iteration of a program
_ALIGN = 8  # offsets in units of 8 elements: 32 bytes of fp32, 16 of bf16 (one vector load each)
_MAX_PLANS = 8  # cached tables (one per set of storages; the EMA update has one or two)

_WARN_UPLOADS = 4  # offset tables uploaded before a warning (the EMA's tensors should not move during a run)

_plans: dict = {}  # (device, storages, sizes, dtype) -> device tables, or why not
_chunks: dict = {}  # (device, sizes) -> device chunk table
STATS = {"launches": 0, "tables": 0, "offset_uploads": 0}  # for benchmarks and tests
_kernel = None  # the jitted kernel, built at first use (importing triton is slow and CUDA-only)
_unavailable: str | None = None  # why the kernel cannot be used in this process, once known
_launched: set = set()  # (HAS_SKIP,) variants that compiled and launched


def enabled() -> bool:
    """COSMOS_EMA_KERNEL (default on)."""
    return device.env_flag("COSMOS_EMA_KERNEL", default=True)


def _build_kernel():
    global _kernel, _unavailable
    if _kernel is not None or _unavailable is not None:
        return _kernel
    try:
        import triton
        import triton.language as tl
    except Exception as exc:  # no triton (CPU wheels), or a broken install: the foreach path stays
        _unavailable = f"triton not importable: {exc}"
        return None

    @triton.jit
    def _lerp_chunks(tgt, src, tgt_off, src_off, numel, chunk_tensor, chunk_index, weight, skip,
                     HAS_SKIP: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
        # torch.lerp's formula by |weight| is chosen at run time, not by a constexpr: the EMA's weight 1 - beta
        # falls below 0.5 a few steps into a run (iteration 12 of the 2B runs), and a second variant compiled
        # there (~200 ms on an H200, once per machine) stalled that step (BENCHMARKS 3s); the element-wise select
        # costs nothing in this memory-bound loop
        pid = tl.program_id(0)
        low = tl.abs(weight) < 0.5
        t = tl.load(chunk_tensor + pid)
        start = tl.load(chunk_index + pid).to(tl.int64) * CHUNK
        rem = tl.load(numel + t) - start
        if HAS_SKIP:  # skip (0-dim float, 1 = the optimizer step was skipped): no element left, nothing written
            rem = tl.where(tl.load(skip) != 0, 0, rem)
        tp = tgt + tl.load(tgt_off + t) * 8 + start  # * 8: Triton then knows the 16-byte alignment
        sp = src + tl.load(src_off + t) * 8 + start
        offs = tl.arange(0, BLOCK)
        if rem >= CHUNK:  # a full chunk: no masks, vector loads
            for i in range(0, CHUNK, BLOCK):
                e = tl.load(tp + i + offs)
                s = tl.load(sp + i + offs).to(tl.float32)
                out = tl.where(low, e + weight * (s - e), s - (s - e) * (1.0 - weight))
                tl.store(tp + i + offs, out)
        else:  # the tensor's last chunk (the lerp written again: a @triton.jit helper must be a module global, and
            # this module imports triton only here, so CPU installs without it still import the module)
            for i in range(0, CHUNK, BLOCK):
                m = i + offs < rem
                e = tl.load(tp + i + offs, mask=m)
                s = tl.load(sp + i + offs, mask=m).to(tl.float32)
                out = tl.where(low, e + weight * (s - e), s - (s - e) * (1.0 - weight))
                tl.store(tp + i + offs, out, mask=m)

    _kernel = _lerp_chunks
    return _kernel


def plan(targets: list[torch.Tensor], sources: list[torch.Tensor]):
    """Where each tensor lies: (tgt_off, src_off, numel) as Python lists, offsets in units of 8 elements from
    targets[0] / sources[0], empty tensors left out; or a string saying why these lists cannot take the kernel.
    Host bookkeeping only: tests check it on CPU."""
    if len(targets) != len(sources):
        return "lists of different lengths"
    t0, s0 = targets[0], sources[0]
    if t0.dtype != torch.float32 or s0.dtype not in (torch.bfloat16, torch.float16):
        return f"dtypes {t0.dtype} <- {s0.dtype} (the kernel takes fp32 <- bf16/fp16)"
    tb, sb = t0.data_ptr(), s0.data_ptr()
    if tb % 16 or sb % 16:
        return "first tensors not 16-byte aligned"
    tgt_off, src_off, numel = [], [], []
    plain = (torch.Tensor, torch.nn.Parameter)
    for i, (t, s) in enumerate(zip(targets, sources)):
        if type(t) not in plain or type(s) not in plain:
            return f"tensor {i} is a {type(t).__name__}/{type(s).__name__} (plain tensors only)"
        if t.dtype != t0.dtype or s.dtype != s0.dtype or t.device != t0.device or s.device != t0.device:
            return f"tensor {i}: dtype or device differs from the first"
        if t.shape != s.shape or not t.is_contiguous() or not s.is_contiguous():
            return f"tensor {i}: shapes differ or a tensor is not contiguous"
        dt, ds = t.data_ptr() - tb, s.data_ptr() - sb
        if dt % (_ALIGN * 4) or ds % (_ALIGN * s.element_size()):
            return f"tensor {i}: storage not aligned to {_ALIGN} elements"
        if t.numel():
            tgt_off.append(dt // (_ALIGN * 4))
            src_off.append(ds // (_ALIGN * s.element_size()))
            numel.append(t.numel())
    if not numel:
        return "no elements"
    return tgt_off, src_off, numel


def chunk_table(numel: list[int], chunk: int = CHUNK):
    """(chunk_tensor, chunk_index): for every program, which tensor (index into numel) and which of its chunks; int32
    CPU tensors built with tensor ops (2B parameters are ~245k chunks)."""
    n = torch.tensor(numel, dtype=torch.int64)
    per = (n + chunk - 1) // chunk
    chunk_tensor = torch.repeat_interleave(torch.arange(len(numel), dtype=torch.int64), per)
    first = torch.cumsum(per, 0) - per  # each tensor's first program
    chunk_index = torch.arange(int(per.sum())) - torch.repeat_interleave(first, per)
    return chunk_tensor.to(torch.int32), chunk_index.to(torch.int32)


def _upload(t: torch.Tensor, dev: torch.device) -> torch.Tensor:
    """To the device without a stream synchronisation (a pageable copy waits for the device to catch up)."""
    return t.pin_memory().to(dev, non_blocking=True)


def _device_plan(targets, sources):
    """(tgt_off, src_off, numel, chunk_tensor, chunk_index) on the device, or why not (a string). Cached twice: the
    chunk table by the tensors' sizes, the offsets by their storages (a new set re-uploads 3 small tables)."""
    dev = targets[0].device
    key = (dev, tuple(map(torch.Tensor.data_ptr, targets)), tuple(map(torch.Tensor.data_ptr, sources)),
           tuple(map(torch.Tensor.numel, targets)), sources[0].dtype)
    cached = _plans.get(key)
    if cached is not None:
        return cached
    p = plan(targets, sources)
    if isinstance(p, str):
        cached = p
    else:
        tgt_off, src_off, numel = p
        ckey = (dev, tuple(numel))
        chunks = _chunks.get(ckey)
        if chunks is None:
            if len(_chunks) >= _MAX_PLANS:
                _chunks.clear()
            chunks = _chunks[ckey] = tuple(_upload(t, dev) for t in chunk_table(numel))
            STATS["tables"] += 1
        cached = (*(_upload(torch.tensor(x, dtype=torch.int64), dev) for x in (tgt_off, src_off, numel)), *chunks)
        STATS["offset_uploads"] += 1
        if STATS["offset_uploads"] == _WARN_UPLOADS:
            warnings.warn(f"portable/lerp_kernel.py: the EMA update's tensors moved {_WARN_UPLOADS} times; every "
                          "move re-uploads the offset table (host time each step). Set COSMOS_EMA_KERNEL=0 if "
                          "this keeps happening.", RuntimeWarning, stacklevel=3)
    if len(_plans) >= _MAX_PLANS:
        _plans.clear()
    _plans[key] = cached
    return cached


def _checked_plan(targets, sources):
    """The device tables for these lists, or why the kernel cannot take them (a string)."""
    if not targets:
        return "empty lists"
    if targets[0].device.type != "cuda":
        return f"device {targets[0].device.type} (CUDA only)"
    if not enabled():
        return "COSMOS_EMA_KERNEL=0"
    if _build_kernel() is None or _unavailable is not None:
        return _unavailable
    return _device_plan(targets, sources)


def why_not(targets: list[torch.Tensor], sources: list[torch.Tensor]) -> str | None:
    """None when `lerp_` would take these lists, else the reason (for tests and the benchmark's row)."""
    p = _checked_plan(targets, sources)
    return p if isinstance(p, str) else None


@torch.no_grad()
def lerp_(targets: list[torch.Tensor], sources: list[torch.Tensor], weight: float,
          skip: torch.Tensor | None = None) -> bool:
    """targets <- lerp(targets, sources.float(), weight) in one launch on the current stream. True when done; False
    (nothing changed) when the lists cannot take the kernel (see why_not): the caller then runs its own path.
    `skip`: a 0-dim float on the targets' device; where it is nonzero the launch writes nothing (the EMA update of
    an optimizer step skipped on the device, portable/shards.py LateFiniteClip)."""
    p = _checked_plan(targets, sources)
    if isinstance(p, str):
        return False
    if skip is not None and (skip.device != targets[0].device or skip.numel() != 1):
        return False
    tgt_off, src_off, numel, chunk_tensor, chunk_index = p
    weight = float(weight)
    has_skip = skip is not None
    why = guarded_launch(
        lambda: _kernel[(chunk_tensor.numel(),)](
            targets[0], sources[0], tgt_off, src_off, numel, chunk_tensor, chunk_index, weight,
            skip if has_skip else targets[0], HAS_SKIP=has_skip, CHUNK=CHUNK, BLOCK=BLOCK, num_warps=4),
        targets[0].device, (has_skip,), _launched, "lerp_kernel.py", "the EMA update keeps the foreach path")
    if why is not None:
        global _unavailable
        _unavailable = why
        return False
    STATS["launches"] += 1
    return True


def guarded_launch(launch, dev: torch.device, variant, launched: set, owner: str, fallback: str) -> str | None:
    """Run `launch()` on `dev`; None when it ran. The first launch of a variant compiles it: a missing or mismatched
    toolchain (ptxas, an unsupported GPU) fails there, before anything is written, and the caller then turns its
    kernel off for the process and runs its own path, as compiled blocks fall back to eager
    (portable/block_compile.py): that failure is returned as the reason, with one warning. A variant that launched
    before (in `launched`) raises: a real error, not a toolchain one. Shared by this module and adamw_kernel.py."""
    try:
        with torch.cuda.device(dev):
            launch()
    except Exception as exc:  # noqa: BLE001 - see the docstring
        if variant in launched:
            raise
        why = f"the kernel did not compile or launch ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        warnings.warn(f"portable/{owner}: {why}; {fallback}.", RuntimeWarning, stacklevel=4)
        return why
    launched.add(variant)
    return None
