"""Device layer on CPU, and the standalone-import rule of the portable package."""

from __future__ import annotations

import ast
import sys

import pytest
import torch

from portable_loader import PORTABLE_DIR

OURS = ("__init__", "device", "precision", "attention", "rope", "rmsnorm", "te_compat", "optim", "sac")


def test_cpu_device_helpers(portable):
    dev = portable.device
    assert dev.device_type() == "cpu" and dev.get_device() == torch.device("cpu")
    assert dev.dist_backend() == "gloo" and dev.current_device_index() == 0 and dev.npu_module() is None
    assert dev.new_stream() is None and dev.current_stream() is None
    with dev.stream(None):
        pass
    dev.wait_stream(None)
    dev.synchronize()
    dev.set_device(0)
    dev.empty_cache()
    dev.reset_peak_memory_stats()
    dev.manual_seed_all(1)
    assert dev.memory_stats() == {"allocated": 0, "reserved": 0, "peak": 0, "peak_reserved": 0}


def test_maybe_compile_is_eager_off_cuda(portable, monkeypatch):
    seen = []

    def f(x):
        seen.append(1)
        return x + 1

    g = portable.device.maybe_compile(f, "test op")
    assert torch.equal(g(torch.zeros(3)), torch.ones(3)) and seen == [1]
    assert g.state["compiled"] is None  # nothing compiled on CPU
    monkeypatch.setenv("COSMOS_DISABLE_COMPILE", "1")
    assert not portable.device.compile_enabled()


def _imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name.split(".")[0], 0
        elif isinstance(node, ast.ImportFrom):
            yield (node.module or "").split(".")[0], node.level


@pytest.mark.parametrize("name", OURS)
def test_modules_import_only_torch_stdlib_and_each_other(name):
    allowed = set(sys.stdlib_module_names) | {"torch", "torch_npu", "__future__"}
    for mod, level in _imports(PORTABLE_DIR / f"{name}.py"):
        if level:  # relative import: must stay inside the package
            continue
        assert mod in allowed, f"{name}.py imports {mod}"
    text = (PORTABLE_DIR / f"{name}.py").read_text()
    for line in text.splitlines():
        if line.startswith("import torch_npu") or line.startswith("from torch_npu"):
            pytest.fail(f"{name}.py imports torch_npu unconditionally at module level")
