"""One-line diagnosis of `import torch` failing inside a device-backend autoload (standard library only).

torch >= 2.5 imports every package registered under the `torch.backends` entry point while `import torch` runs
(torch_npu registers `torch_npu = torch_npu:_autoload`). When CANN's environment is not sourced, torch_npu cannot
load its libraries, and `import torch` itself raises "Failed to load the backend extension: torch_npu" with the
real cause chained below it, so no try/except around `import torch_npu` ever gets a chance to fall back.
portable/device.py, scripts/train_preflight.py (through device.py) and `installer doctor` (which loads this file by
path, before torch can be imported) all report it with `diagnose()`.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys

_AUTOLOAD = re.compile(r"Failed to load the backend extension: ([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)")
# CANN's default install location (the toolkit's set_env.sh sets ASCEND_TOOLKIT_HOME, so it is unset here)
SET_ENV = "/usr/local/Ascend/ascend-toolkit/set_env.sh"


def _user_error():
    """user_error.py beside this file (the one user-error formatter), loaded by path under its package name: this
    file is loaded standalone too (doctor, the device layer before torch imports)."""
    name = "cosmos_predict2.portable.user_error"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, os.path.join(os.path.dirname(os.path.abspath(__file__)), "user_error.py"))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def _root_cause(exc: BaseException) -> BaseException:
    seen = set()
    while (exc.__cause__ or exc.__context__) is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return exc


def diagnose(exc: BaseException) -> str | None:
    """The one-line error for an autoload failure during `import torch`, None for any other exception."""
    m = _AUTOLOAD.search(str(exc))
    if not m:
        return None
    ext = m.group(1)
    cause = _root_cause(exc)
    why = f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}" if cause is not exc else ""
    what = f"import torch failed: it autoloads {ext} (entry point torch.backends), which could not load"
    if why:
        what += f" ({why[:160]})"
    if ext == "torch_npu":
        todo = (f"Source CANN's environment first (source {SET_ENV}, or the set_env.sh of your CANN install), "
                "or set TORCH_DEVICE_BACKEND_AUTOLOAD=0 to run without the NPU")
    else:
        todo = f"Repair or uninstall {ext}, or set TORCH_DEVICE_BACKEND_AUTOLOAD=0"
    return _user_error().line(what, "python environment", todo)
