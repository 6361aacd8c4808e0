"""Every torch_npu / torch.npu call the overlay makes, checked against the real torch-npu==2.7.1 wheels (x86_64 and
aarch64, read as zip files, never imported): op names, argument names and order, the defaults we rely on, return
arity, the public API lists, the torch.npu functions the device layer uses, and the version pairing the support
table and requirements/npu-*.txt state. Also checks that the torch_npu TEST DOUBLE (tests/doubles/
fake_torch_npu.py) binds its arguments through exactly the wheel's schemas."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OVERLAY = ROOT / "overlay"
SCHEMA_YAML = "torch_npu/csrc/aten/npu_native_functions_by_codegen.yaml"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


fake = _load("fake_torch_npu_contract", ROOT / "tests" / "doubles" / "fake_torch_npu.py")  # TEST DOUBLE
support = _load("support_contract", ROOT / "installer" / "support.py")


def wheel_schemas(wheel) -> dict[str, str]:
    """op name -> schema string, from the codegen yaml ('func: name(...) -> ...')."""
    out = {}
    for m in re.finditer(r"^\s*-?\s*func:\s*(.+?)\s*$", wheel.text(SCHEMA_YAML), re.M):
        schema = m.group(1)
        out.setdefault(schema.split("(", 1)[0], schema)
    return out


def public_npu_functions(wheel) -> list[str]:
    tree = ast.parse(wheel.text("torch_npu/utils/exposed_api.py"))
    (node,) = [n for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "public_npu_functions"]
    return ast.literal_eval(node.value)


def torch_npu_npu_all(wheel) -> list[str]:
    tree = ast.parse(wheel.text("torch_npu/npu/__init__.py"))
    (node,) = [n for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "__all__"]
    return ast.literal_eval(node.value)


# ---------------------------------------------------------------- what the overlay calls


def _dict_keys(func: ast.AST, name: str) -> list[str]:
    """Keys a function puts into the dict `name` it later passes as **name: `name = dict(k=...)`,
    `name.update(k=...)`, `name["k"] = ...`."""
    keys = []
    for node in ast.walk(func):
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == name and isinstance(node.value, ast.Call):
            keys += [k.arg for k in node.value.keywords if k.arg]
        if isinstance(node, ast.Call) and ast.unparse(node.func) == f"{name}.update":
            keys += [k.arg for k in node.keywords if k.arg]
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Subscript) \
                and ast.unparse(node.targets[0].value) == name and isinstance(node.targets[0].slice, ast.Constant):
            keys.append(node.targets[0].slice.value)
    return keys


def overlay_op_calls() -> list[dict]:
    """Every `<x>.npu_<op>(...)` call in overlay/ (not the device layer's own npu_* helpers): file:line, op,
    positional count, keyword names (a **dict resolved from the enclosing function), and whether the result is
    indexed ([0]) directly."""
    calls = []
    for path in sorted(OVERLAY.rglob("*.py")):
        tree = ast.parse(path.read_text())
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr.startswith("npu_") and ast.unparse(node.func.value) != "device"):
                continue
            func = node
            while func in parents and not isinstance(func, ast.FunctionDef):
                func = parents[func]
            kw = []
            for k in node.keywords:
                kw += [k.arg] if k.arg else _dict_keys(func, ast.unparse(k.value))
            parent = parents.get(node)
            calls.append(dict(where=f"{path.relative_to(ROOT)}:{node.lineno}", op=node.func.attr, npos=len(node.args),
                              kw=kw, indexed=isinstance(parent, ast.Subscript) and parent.value is node))
    return calls


def overlay_torch_npu_attrs() -> set[str]:
    """Attributes the overlay takes from torch.npu: `torch.npu.X`, `(torch.npu if ... else torch.cuda).X` and the
    device layer's `_accel().X` (its torch.npu / torch.cuda handle)."""
    names = set()
    for path in sorted(OVERLAY.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Attribute):
                continue
            base = ast.unparse(node.value)
            if base == "torch.npu" or base == "_accel()" or ("torch.npu" in base and isinstance(node.value, ast.IfExp)):
                names.add(node.attr)
            if base == "acc" and path.name == "device.py":  # acc = _accel()
                names.add(node.attr)
    return names


def test_the_overlay_scan_finds_the_three_kernels():
    ops = {c["op"] for c in overlay_op_calls()}
    assert ops == {"npu_fusion_attention", "npu_rotary_mul", "npu_rms_norm"}, ops


def test_overlay_npu_op_calls_match_the_real_schemas(npu_wheel):
    """Names exist and are public; positional arguments fit; keywords are real parameter names; every required
    parameter is given; indexed results come from multi-output ops and vice versa."""
    schemas, public = wheel_schemas(npu_wheel), set(public_npu_functions(npu_wheel))
    for call in overlay_op_calls():
        op = call["op"]
        assert op in schemas, f"{call['where']}: torch_npu has no op {op}"
        assert op in public, f"{call['where']}: {op} is not in torch_npu's public API (__all__)"
        parsed = fake.parse_schema(schemas[op])
        params = parsed["params"]
        positional = [p for p in params if not p[4]]
        names = [p[1] for p in params]
        assert call["npos"] <= len(positional), f"{call['where']}: {call['npos']} positional arguments for {op}"
        for kw in call["kw"]:
            assert kw in names, f"{call['where']}: {op} has no parameter {kw!r} (has {names})"
        given = {p[1] for p in positional[: call["npos"]]} | set(call["kw"])
        missing = [p[1] for p in params if not p[2] and p[1] not in given]
        assert not missing, f"{call['where']}: {op} called without required {missing}"
        if call["indexed"]:
            assert parsed["returns"] > 1, f"{call['where']}: indexes the single output of {op}"
        else:
            assert parsed["returns"] == 1, f"{call['where']}: {op} returns {parsed['returns']} outputs, used as one"


# The defaults the overlay relies on by NOT passing these arguments (portable/attention.py, rope.py, rmsnorm.py).
RELIED_DEFAULTS = {
    "npu_fusion_attention": dict(pse=None, padding_mask=None, atten_mask=None, keep_prob=1.0,
                                 pre_tockens=2147483647, next_tockens=2147483647, inner_precise=0, prefix=None,
                                 actual_seq_qlen=None, actual_seq_kvlen=None, sparse_mode=0,
                                 gen_mask_parallel=True, sync=False, softmax_layout="",
                                 scale=1.0),  # scale: always passed, BECAUSE the default is 1.0, not 1/sqrt(D)
    "npu_rotary_mul": dict(rotary_mode="half"),
    "npu_rms_norm": dict(epsilon=1e-06),
}
# positional parameter order the overlay's positional arguments land on
RELIED_ORDER = {
    "npu_fusion_attention": ["query", "key", "value"],
    "npu_rotary_mul": ["self", "r1", "r2"],  # input, cos, sin
    "npu_rms_norm": ["self", "gamma"],
}


def test_relied_on_defaults_and_order(npu_wheel):
    schemas = wheel_schemas(npu_wheel)
    for op, defaults in RELIED_DEFAULTS.items():
        params = {p[1]: p for p in fake.parse_schema(schemas[op])["params"]}
        for name, value in defaults.items():
            assert params[name][2], f"{op}.{name} has no default any more"
            assert params[name][3] == value, f"{op}.{name} default is {params[name][3]!r}, we rely on {value!r}"
        order = [p[1] for p in fake.parse_schema(schemas[op])["params"]]
        assert order[: len(RELIED_ORDER[op])] == RELIED_ORDER[op], (op, order)
    assert fake.parse_schema(schemas["npu_fusion_attention"])["returns"] == 7
    assert fake.parse_schema(schemas["npu_rms_norm"])["returns"] == 2


def test_the_double_binds_through_the_wheels_schemas(npu_wheel):
    """The TEST DOUBLE's SCHEMAS are the wheel's text, and its functions' signatures are built from them."""
    schemas = wheel_schemas(npu_wheel)
    for op, schema in fake.SCHEMAS.items():
        assert schema == schemas[op], f"the double's schema of {op} drifted from torch-npu 2.7.1"
        sig = fake.signature_of(schemas[op])
        assert str(getattr(fake, op).__signature__) == str(sig)
        assert [p.name for p in sig.parameters.values()] == [p[1] for p in fake.parse_schema(schema)["params"]]


def test_torch_npu_functions_the_overlay_uses_exist(npu_wheel):
    """torch.npu.X used by the device layer, the monitor and the preflight, and the double's torch.npu stand-in,
    are all in torch_npu.npu.__all__."""
    real = set(torch_npu_npu_all(npu_wheel))
    used = overlay_torch_npu_attrs()
    assert {"set_device", "synchronize", "memory_allocated", "get_device_name", "mem_get_info"} <= used, used
    assert used <= real, f"not in torch_npu.npu.__all__: {sorted(used - real)}"
    doubled = set(vars(fake.npu))
    assert doubled <= real, f"the double's torch.npu has names the real one lacks: {sorted(doubled - real)}"


def test_the_doubles_event_has_the_wheels_signature(npu_wheel):
    """torch.npu.Event (the step clock's marks on NPU, portable.device.timing_event): the double's constructor takes
    the wheel's arguments, and the methods the overlay calls exist there."""
    src = npu_wheel.text("torch_npu/npu/streams.py")
    body = src[src.index("class Event("):src.index("class ExternalEvent(")]
    assert "def __new__(cls, enable_timing=False, blocking=False, interprocess=False):" in body
    for method in ("record", "synchronize", "elapsed_time", "query"):
        assert f"def {method}(" in body, method
    sig = inspect.signature(fake.npu.Event)
    assert [(p.name, p.default) for p in sig.parameters.values()] == [
        ("enable_timing", False), ("blocking", False), ("interprocess", False)]


def test_sdpa_is_overridden_on_npu(npu_wheel):
    """torch_npu registers its own aten::scaled_dot_product_attention for NPU tensors: the reason the math backend
    computes explicitly on NPU instead of trusting sdpa_kernel (portable/attention.py)."""
    schema = wheel_schemas(npu_wheel)["scaled_dot_product_attention"]
    assert "enable_gqa" in schema and "scale=None" in schema


def test_saved_op_names_of_the_npu_backend_exist(npu_wheel):
    """The op names checkpointing must save for the NPU backend (registry in portable/attention.py) are real."""
    text = (OVERLAY / "cosmos_predict2" / "portable" / "attention.py").read_text()
    m = re.search(r'register\(Backend\("npu_fusion".*?saved_ops=\(([^)]*)\)', text, re.S)
    names = ast.literal_eval("(" + m.group(1) + ")")
    schemas = wheel_schemas(npu_wheel)
    assert names and all(n in schemas for n in names), names


def test_transfer_to_npu_makes_cuda_look_available(npu_wheel):
    """contrib/transfer_to_npu.py rebinds torch.cuda.is_available: why the device layer tests NPU first and never
    dispatches on torch.cuda.is_available()."""
    src = npu_wheel.text("torch_npu/contrib/transfer_to_npu.py")
    assert re.search(r"torch\.cuda\.is_available\s*=", src)
    assert "torch.jit.script" in src  # it also disables jit.script (docs/NPU facts)


def test_autoload_entry_point_is_what_the_diagnosis_expects(npu_wheel):
    """The wheel registers `torch_npu = torch_npu:_autoload` under torch.backends: `import torch` imports it."""
    (ep,) = [n for n in npu_wheel.zip.namelist() if n.endswith(".dist-info/entry_points.txt")]
    text = npu_wheel.text(ep)
    assert re.search(r"\[torch\.backends\]\s*\ntorch_npu\s*=\s*torch_npu:_autoload", text)


def test_version_pairing_matches_the_wheels(x86_wheel, arm_wheel):
    """support.TORCH_NPU (doctor) and requirements/npu-*.txt say what the wheels say: torch 2.7.1 (+cpu on x86_64)
    and CANN 8.3.RC1 for torch_npu 2.7.1."""
    x86, arm = x86_wheel.metadata(), arm_wheel.metadata()
    assert "Requires-Dist: torch==2.7.1+cpu" in x86 and "Requires-Dist: torch==2.7.1\n" in arm
    # why the CPU build on x86_64: torch_npu refuses a torch that brings another accelerator
    assert "Two accelerators cannot be used at the same time" in x86_wheel.text("torch_npu/__init__.py")
    row = re.search(r"\|\s*CANN ([\w.]+)\s*\|\s*2\.8\.0.*?\n\|\s*\|\s*2\.7\.1\s*\|\s*2\.7\.1\s*\|", x86)
    assert row and row.group(1) == support.TORCH_NPU["2.7.1"][1] == "8.3.RC1"
    assert support.TORCH_NPU["2.7.1"][0] == "2.7.1"
    reqs = {arch: (ROOT / "requirements" / f"npu-{arch}.txt").read_text() for arch in ("x86_64", "aarch64")}
    assert re.search(r"^torch==2\.7\.1\+cpu$", reqs["x86_64"], re.M)
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in reqs["x86_64"]
    assert re.search(r"^torch==2\.7\.1$", reqs["aarch64"], re.M)
    for text in reqs.values():
        assert re.search(r"^torch-npu==2\.7\.1$", text, re.M)
        assert f"CANN {support.CANN}" in text


@pytest.mark.parametrize("soc", ["Ascend910B1", "Ascend910B4", "Ascend910_9391"])
def test_training_socs_are_the_ones_torch_npu_treats_as_a2_a3(npu_wheel, soc):
    """torch_npu's own SoC test (utils/_optim.py: > 'Ascend910B' and < 'Ascend910PremiumA', or > 'Ascend910_9')
    agrees with our product table on A2/A3 names, and rejects the first-series names we mark as 910A."""
    src = npu_wheel.text("torch_npu/utils/_optim.py")
    assert '(_device_name > "Ascend910B" and _device_name < "Ascend910PremiumA") or (_device_name > "Ascend910_9")' in src

    def torch_npu_says_new(name):
        return ("Ascend910B" < name < "Ascend910PremiumA") or name > "Ascend910_9"

    assert torch_npu_says_new(soc) and support.npu_product(soc) in support.NPU_TRAINING_PRODUCTS
    for old in ("Ascend910A", "Ascend910B", "Ascend910PremiumA"):
        assert not torch_npu_says_new(old) and support.npu_product(old) == "Atlas training (910A)"
