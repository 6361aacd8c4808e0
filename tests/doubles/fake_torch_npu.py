"""TEST DOUBLE of torch_npu. It is NOT torch_npu and runs nowhere but in tests, on host (CPU) memory.

What it imitates, and where each rule comes from (torch-npu==2.7.1 wheel; tests/npu_contract/ checks the parts
that can be checked against the wheel):
- Signatures: every op binds its arguments through the schema strings in SCHEMAS, copied from the wheel's
  torch_npu/csrc/aten/npu_native_functions_by_codegen.yaml. tests/npu_contract/test_wheel_contract.py asserts
  SCHEMAS equals the wheel's text, so the double cannot drift from the real signatures (names, order, defaults,
  keyword-only markers, return arity).
- Devices: a real NPU op refuses host tensors. Here "on the NPU" means an instance of NpuTensor (a tensor
  subclass marking host memory as NPU memory; `to_npu(t)` makes one, `to_host(t)` undoes it). Every op refuses
  tensors that are not NpuTensor, like the real op refuses CPU tensors. Ops on NpuTensors keep the mark.
- The SDPA override: torch_npu registers aten::scaled_dot_product_attention for NPU tensors (op-plugin 7.2.0) and
  sends 4-D inputs with head_dim <= 512 to npu_fusion_attention WHATEVER torch.nn.attention.sdpa_kernel says.
  NpuTensor.__torch_function__ does the same: F.scaled_dot_product_attention on NpuTensors calls this double's
  npu_fusion_attention (recorded with via="sdpa") and so inherits its limits.
- npu_fusion_attention (_op_plugin_docs, 约束说明): layouts BSH, SBH, BSND, BNSD; fp16/bf16/fp32, q/k/v one
  dtype; head_dim: Dq == Dk, Dv <= Dk, 1..768; Nq 1..256 and a multiple of Nkv; the default scale is 1.0 (NOT
  1/sqrt(D)); atten_mask True = masked OUT (inverted vs SDPA); sparse_mode 0 (mask broadcast) and 2/3 (the
  compressed 2048x2048 upper-triangular mask, causal pattern implied); 7 outputs, the attention at [0].
- npu_rotary_mul: 4-D input, r1/r2 4-D and broadcastable, D even and < 896, modes 'half' / 'interleave'.
- npu_rms_norm(self, gamma, epsilon=1e-06) -> (out, rstd); gamma must have self's dtype.
Every call is recorded in CALLS (op name + the arguments that matter) so tests can check what was passed.
The `npu` namespace stands in for `torch.npu` (device queries, streams and timing events): one available device
whose name is DEVICE_NAME (an Atlas A2 SoC name by default; tests set e.g. "Ascend910A" to imitate an older part).
"""

from __future__ import annotations

import contextlib
import inspect
import math
import re
import time
from types import SimpleNamespace

import torch

CALLS: list[dict] = []
_LAYOUTS = ("BSH", "SBH", "BSND", "BNSD")
DEVICE_NAME = "Ascend910B3"

# Copied verbatim from torch-npu==2.7.1 torch_npu/csrc/aten/npu_native_functions_by_codegen.yaml ("func:" values).
SCHEMAS = {
    "npu_fusion_attention": (
        "npu_fusion_attention(Tensor query, Tensor key, Tensor value, int head_num, str input_layout, "
        "Tensor? pse=None, Tensor? padding_mask=None, Tensor? atten_mask=None, float scale=1., "
        "float keep_prob=1., int pre_tockens=2147483647, int next_tockens=2147483647, int inner_precise=0, "
        "int[]? prefix=None, int[]? actual_seq_qlen=None, int[]? actual_seq_kvlen=None, int sparse_mode=0, "
        "bool gen_mask_parallel=True, bool sync=False, str softmax_layout=\"\") "
        "-> (Tensor, Tensor, Tensor, Tensor, int, int, int)"
    ),
    "npu_rotary_mul": "npu_rotary_mul(Tensor self, Tensor r1, Tensor r2, str rotary_mode='half') -> Tensor",
    "npu_rms_norm": "npu_rms_norm(Tensor self, Tensor gamma, float epsilon=1e-06) -> (Tensor, Tensor)",
}


# ---------------------------------------------------------------- schema strings -> Python signatures


def _default(text: str):
    text = text.strip()
    if text == "None":
        return None
    if text in ("True", "False"):
        return text == "True"
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    return float(text)


def _split_top(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return [p.strip() for p in parts]


def parse_schema(schema: str) -> dict:
    """'name(T a, T b=1, *, T c=None) -> (T, T)' -> {name, params: [(type, name, has_default, default, kwonly)],
    returns: number of outputs}."""
    m = re.fullmatch(r"\s*([\w.]+)\((.*)\)\s*->\s*(.+?)\s*", schema)
    if not m:
        raise ValueError(f"not an op schema: {schema!r}")
    name, args, ret = m.groups()
    params, kwonly = [], False
    for arg in _split_top(args):
        if arg == "*":
            kwonly = True
            continue
        decl, _, default = arg.partition("=")
        typ, pname = decl.rsplit(None, 1)
        params.append((typ, pname, bool(_), _default(default) if _ else None, kwonly))
    ret = ret.strip()
    n_out = len(_split_top(ret[1:-1])) if ret.startswith("(") else 1
    return {"name": name, "params": params, "returns": n_out}


def signature_of(schema: str) -> inspect.Signature:
    kinds = inspect.Parameter
    out = []
    for _typ, pname, has_default, default, kwonly in parse_schema(schema)["params"]:
        kind = kinds.KEYWORD_ONLY if kwonly else kinds.POSITIONAL_OR_KEYWORD
        out.append(kinds(pname, kind, default=default if has_default else kinds.empty))
    return inspect.Signature(out)


def bind(name: str, *args, **kwargs) -> dict:
    """All arguments of op `name` by parameter name, defaults filled in, bound through its schema signature
    (TypeError on an unknown name or a wrong arity, as the real binding raises)."""
    bound = signature_of(SCHEMAS[name]).bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def _op(impl):
    """The public op: its signature is the schema's; `impl` gets the bound arguments as one dict."""
    name = impl.__name__.lstrip("_")

    def op(*args, **kwargs):
        return impl(bind(name, *args, **kwargs))

    op.__name__ = name
    op.__signature__ = signature_of(SCHEMAS[name])
    op.__doc__ = f"TEST DOUBLE of torch_npu.{name}: {SCHEMAS[name]}"
    return op


# ---------------------------------------------------------------- the NPU device mark


class NpuTensor(torch.Tensor):
    """Host memory marked as NPU memory. Ops keep the mark (torch's subclass propagation);
    F.scaled_dot_product_attention on it is overridden like torch_npu does (see the module docstring)."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.scaled_dot_product_attention:
            return _sdpa_override(*args, **kwargs)
        return super().__torch_function__(func, types, args, kwargs)


def to_npu(t: torch.Tensor) -> NpuTensor:
    return t.as_subclass(NpuTensor)


def to_host(t):
    return t.as_subclass(torch.Tensor) if isinstance(t, torch.Tensor) else t


def _on_npu(op: str, **tensors) -> None:
    for name, t in tensors.items():
        if t is not None and not isinstance(t, NpuTensor):
            raise RuntimeError(
                f"fake torch_npu: {op}: {name} is on {t.device}, expected an NPU tensor (the real op refuses "
                "host tensors)"
            )


# ---------------------------------------------------------------- ops


def _to_bnsd(x: torch.Tensor, layout: str, heads: int | None) -> torch.Tensor:
    if layout == "BNSD":
        return x
    if layout == "BSND":
        return x.transpose(1, 2)
    if layout == "BSH":
        b, s, h = x.shape
        return x.reshape(b, s, heads, h // heads).transpose(1, 2)
    s, b, h = x.shape  # SBH
    return x.reshape(s, b, heads, h // heads).permute(1, 2, 0, 3)


def _from_bnsd(x: torch.Tensor, layout: str) -> torch.Tensor:
    b, n, s, d = x.shape
    if layout == "BNSD":
        return x
    if layout == "BSND":
        return x.transpose(1, 2)
    if layout == "BSH":
        return x.transpose(1, 2).reshape(b, s, n * d)
    return x.permute(2, 0, 1, 3).reshape(s, b, n * d)  # SBH


def _npu_fusion_attention(a):
    query, key, value, layout = a["query"], a["key"], a["value"], a["input_layout"]
    head_num, atten_mask, scale, keep_prob, sparse_mode = (
        a["head_num"], a["atten_mask"], a["scale"], a["keep_prob"], a["sparse_mode"])
    _on_npu("npu_fusion_attention", query=query, key=key, value=value, atten_mask=atten_mask)
    if layout not in _LAYOUTS:
        raise ValueError(f"fake torch_npu: input_layout must be one of {_LAYOUTS}, got {layout}")
    if not (query.dtype == key.dtype == value.dtype) or query.dtype not in (
        torch.float16, torch.bfloat16, torch.float32):
        raise TypeError("fake torch_npu: q/k/v must share one of fp16/bf16/fp32")
    if not 1 <= head_num <= 256:
        raise RuntimeError(f"fake torch_npu: npu_fusion_attention supports 1..256 query heads, got {head_num}")
    CALLS.append(
        dict(op="npu_fusion_attention", via=a.get("_via", "call"), head_num=head_num, input_layout=layout,
             scale=scale, keep_prob=keep_prob, sparse_mode=sparse_mode,
             atten_mask=None if atten_mask is None else to_host(atten_mask).clone(),
             dtype=query.dtype, shape=tuple(query.shape))
    )
    q = to_host(_to_bnsd(query, layout, head_num)).float()
    d = q.shape[-1]
    if layout in ("BSND", "BNSD"):
        kv_heads = key.shape[2] if layout == "BSND" else key.shape[1]
        dk, dv = key.shape[-1], value.shape[-1]
    else:
        kv_heads, dk, dv = key.shape[-1] // d, d, d
    if q.shape[1] != head_num:
        raise ValueError(f"fake torch_npu: head_num={head_num} but query has {q.shape[1]} heads")
    if dk != d or dv > dk or not 1 <= d <= 768:
        raise RuntimeError(f"fake torch_npu: head dims must satisfy Dq == Dk >= Dv, 1..768; got {d}, {dk}, {dv}")
    if head_num % kv_heads:
        raise RuntimeError(f"fake torch_npu: query heads {head_num} not a multiple of key/value heads {kv_heads}")
    k = to_host(_to_bnsd(key, layout, kv_heads)).float()
    v = to_host(_to_bnsd(value, layout, kv_heads)).float()
    if head_num != kv_heads:
        k = k.repeat_interleave(head_num // kv_heads, dim=1)
        v = v.repeat_interleave(head_num // kv_heads, dim=1)
    sq, sk = q.shape[2], k.shape[2]
    scores = (q @ k.transpose(-1, -2)) * scale
    if atten_mask is not None:
        mask = to_host(atten_mask).bool()
        if sparse_mode == 0:
            scores = scores.masked_fill(mask, float("-inf"))
        elif sparse_mode in (2, 3):
            if tuple(mask.shape) != (2048, 2048):
                raise ValueError("fake torch_npu: sparse_mode 2/3 need the compressed 2048x2048 atten_mask")
            if not torch.equal(mask, torch.triu(torch.ones_like(mask), 1)):
                raise ValueError("fake torch_npu: the compressed mask must be upper-triangular (diagonal=1) True")
            i = torch.arange(sq)[:, None]
            j = torch.arange(sk)[None, :]
            scores = scores.masked_fill(j > i if sparse_mode == 2 else j > i + (sk - sq), float("-inf"))
        else:
            raise NotImplementedError(f"fake torch_npu: sparse_mode {sparse_mode} not modelled")
    smax = scores.amax(dim=-1, keepdim=True)
    probs = torch.softmax(scores, dim=-1)
    ssum = torch.exp(scores - smax).sum(dim=-1, keepdim=True)
    if keep_prob < 1.0:
        probs = torch.nn.functional.dropout(probs, p=1.0 - keep_prob)
    out = _from_bnsd(probs @ v, layout).to(query.dtype)
    return to_npu(out), to_npu(smax), to_npu(ssum), to_npu(torch.empty(0)), 0, 0, 0


npu_fusion_attention = _op(_npu_fusion_attention)


def _sdpa_override(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                   enable_gqa=False):
    """torch_npu's aten::scaled_dot_product_attention on NPU tensors (imitated): 4-D, head_dim <= 512 ->
    npu_fusion_attention in BNSD, whatever sdpa_kernel allows; otherwise the composite math."""
    if query.dim() == 4 and query.shape[-1] <= 512:
        d = query.shape[-1]
        kwargs = dict(scale=1.0 / math.sqrt(d) if scale is None else scale, keep_prob=1.0 - dropout_p)
        if is_causal:
            kwargs.update(atten_mask=to_npu(torch.triu(torch.ones(2048, 2048, dtype=torch.bool), 1)),
                          sparse_mode=2)
        elif attn_mask is not None:
            m = attn_mask if attn_mask.dtype == torch.bool else attn_mask > float("-inf")
            kwargs.update(atten_mask=to_npu(~to_host(m)))
        args = bind("npu_fusion_attention", query, key, value, query.shape[1], "BNSD", **kwargs)
        return _npu_fusion_attention(dict(args, _via="sdpa"))[0]
    with torch._C.DisableTorchFunctionSubclass():
        out = torch.nn.functional.scaled_dot_product_attention(
            to_host(query), to_host(key), to_host(value), attn_mask=to_host(attn_mask), dropout_p=dropout_p,
            is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)
    return to_npu(out)


def _rotate(x, mode):
    if mode == "half":
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((-x2, x1), dim=-1)
    if mode == "interleave":
        return torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2)
    raise ValueError(f"fake torch_npu: rotary_mode must be 'half' or 'interleave', got {mode}")


def _npu_rotary_mul(a):
    x, r1, r2, mode = a["self"], a["r1"], a["r2"], a["rotary_mode"]
    _on_npu("npu_rotary_mul", input=x, r1=r1, r2=r2)
    if x.dim() != 4 or r1.dim() != 4 or r2.dim() != 4:
        raise ValueError("fake torch_npu: npu_rotary_mul needs 4-D input, r1, r2")
    if not (x.dtype == r1.dtype == r2.dtype):
        raise TypeError(f"fake torch_npu: npu_rotary_mul dtypes differ ({x.dtype}, {r1.dtype}, {r2.dtype})")
    d = x.shape[-1]
    if d % 2 or d >= 896 or r1.shape[-1] != d:
        raise ValueError("fake torch_npu: last dim must be even, < 896 and equal in input and r1/r2")
    torch.broadcast_shapes(x.shape, r1.shape, r2.shape)
    CALLS.append(dict(op="npu_rotary_mul", rotary_mode=mode, dtype=x.dtype, shape=tuple(x.shape),
                      r_shape=tuple(r1.shape)))
    h = to_host(x).float()
    out = h * to_host(r1).float() + _rotate(h, mode) * to_host(r2).float()
    return to_npu(out.to(x.dtype))


npu_rotary_mul = _op(_npu_rotary_mul)


def _npu_rms_norm(a):
    x, gamma, epsilon = a["self"], a["gamma"], a["epsilon"]
    _on_npu("npu_rms_norm", self=x, gamma=gamma)
    if gamma.dtype != x.dtype:
        raise TypeError(f"fake torch_npu: npu_rms_norm needs gamma dtype == x dtype ({gamma.dtype} vs {x.dtype})")
    CALLS.append(dict(op="npu_rms_norm", dtype=x.dtype, epsilon=epsilon))
    x32 = to_host(x).float()
    rstd = torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + epsilon)
    return to_npu((x32 * rstd * to_host(gamma).float()).to(x.dtype)), to_npu(rstd)


npu_rms_norm = _op(_npu_rms_norm)


# ---------------------------------------------------------------- torch.npu stand-in


class _Stream:
    def wait_stream(self, other):
        CALLS.append(dict(op="wait_stream"))


class _Event:
    """torch.npu.Event (torch_npu/npu/streams.py: Event(enable_timing=False, blocking=False, interprocess=False);
    record, query, synchronize, elapsed_time in milliseconds). The double's "device" work runs on the host when it
    is called, so the device reaches an event when the host records it: its time is the host clock then."""

    def __init__(self, enable_timing=False, blocking=False, interprocess=False):
        self.enable_timing, self._t = enable_timing, None

    def record(self, stream=None):
        self._t = time.perf_counter()
        CALLS.append(dict(op="event_record"))

    def query(self):
        return True

    def synchronize(self):
        CALLS.append(dict(op="event_synchronize"))

    def elapsed_time(self, end_event):
        if not (self.enable_timing and end_event.enable_timing):
            raise RuntimeError("fake torch_npu: elapsed_time needs two events created with enable_timing=True")
        if self._t is None or end_event._t is None:
            raise RuntimeError("fake torch_npu: elapsed_time of an event that was not recorded")
        return (end_event._t - self._t) * 1e3


_current = _Stream()
npu = SimpleNamespace(
    is_available=lambda: True,
    device_count=lambda: 1,
    current_device=lambda: 0,
    set_device=lambda i: CALLS.append(dict(op="set_device", index=i)),
    synchronize=lambda *a: CALLS.append(dict(op="synchronize")),
    Stream=_Stream,
    Event=_Event,
    stream=lambda s: contextlib.nullcontext(),
    current_stream=lambda *a: _current,
    memory_allocated=lambda *a: 11,
    memory_reserved=lambda *a: 22,
    max_memory_allocated=lambda *a: 33,
    max_memory_reserved=lambda *a: 44,
    reset_peak_memory_stats=lambda *a: None,
    manual_seed_all=lambda s: None,
    empty_cache=lambda: CALLS.append(dict(op="empty_cache")),
    is_current_stream_capturing=lambda: False,
    get_device_name=lambda device_name=None: DEVICE_NAME,
    mem_get_info=lambda *a: (1 << 30, 2 << 30),
    get_device_properties=lambda *a: SimpleNamespace(total_memory=64 << 30, name=DEVICE_NAME),  # a 64 GiB card
)

__version__ = "0.0-test-double"
