"""Load overlay/cosmos_predict2/portable as a standalone package (no upstream tree needed).

`load_portable(name)` imports portable/__init__.py under `name` with its folder as the package path, so the
package's relative imports resolve among its own files only. A uniquely named module (not conftest), so spawned
worker processes import this very file whatever other test folders put on sys.path.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PORTABLE_DIR = ROOT / "overlay" / "cosmos_predict2" / "portable"
DOUBLES_DIR = ROOT / "tests" / "doubles"
PKG_NAME = "cosmos_portable_under_test"
SUBMODULES = ("device", "precision", "attention", "flash_cute", "rope", "rmsnorm", "te_compat", "optim", "sac", "adaln", "ema_overlap")


def unload(name: str) -> None:
    for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[mod]


def load_portable(name: str = PKG_NAME):
    """Fresh import of the portable package under `name`; returns a namespace of its submodules."""
    unload(name)
    spec = importlib.util.spec_from_file_location(
        name, PORTABLE_DIR / "__init__.py", submodule_search_locations=[str(PORTABLE_DIR)]
    )
    pkg = importlib.util.module_from_spec(spec)
    sys.modules[name] = pkg
    spec.loader.exec_module(pkg)
    for sub in SUBMODULES:
        setattr(pkg, sub, importlib.import_module(f"{name}.{sub}"))
    return pkg


def load_with_device(name: str, kind: str):
    """load_portable with COSMOS_DEVICE=kind set during the import (detection happens once, at import)."""
    import os

    saved = {k: os.environ.pop(k) for k in ("COSMOS_DEVICE", "COSMOS_ATTN_BACKEND") if k in os.environ}
    os.environ["COSMOS_DEVICE"] = kind
    try:
        pkg = load_portable(name)
    finally:
        os.environ.pop("COSMOS_DEVICE")
        os.environ.update(saved)
    assert pkg.device.DEVICE_TYPE == kind
    return pkg


def load_fake_torch_npu():
    """The torch_npu TEST DOUBLE (tests/doubles/fake_torch_npu.py)."""
    spec = importlib.util.spec_from_file_location("fake_torch_npu", DOUBLES_DIR / "fake_torch_npu.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
