"""The scripts' one way to the tree's cosmos_predict2/portable/user_error.py (the one user-error type and formatter).

Loaded by path under its package name rather than imported through the cosmos_predict2 package (which would import
upstream and torch before a usage error could be printed): one module object per process, shared with the device
layer and the installer. Imported as `scripts.user_errors` by the data and inference scripts, and as `user_errors`
by the launcher's scripts, which run with this folder on sys.path; either way the module below is the same object.
"""

from __future__ import annotations

import importlib.util
import os
import sys

_NAME = "cosmos_predict2.portable.user_error"


def load():
    if _NAME not in sys.modules:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        spec = importlib.util.spec_from_file_location(
            _NAME, os.path.join(root, "cosmos_predict2", "portable", "user_error.py"))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[_NAME] = mod
        spec.loader.exec_module(mod)
    return sys.modules[_NAME]


_module = load()
UserError = _module.UserError
OneLineParser = _module.OneLineParser
run_main = _module.run_main
die = _module.die
report = _module.report
