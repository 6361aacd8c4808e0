"""The installer's user errors: overlay/cosmos_predict2/portable/user_error.py (the one user-error type and
formatter the scripts and the ops use too), loaded by file path from the installer's resources (the checkout's
overlay/, else the copy in the wheel's _data/overlay/). The installer cannot import the tree's package."""

from __future__ import annotations

import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_MODULE = "cosmos_predict2.portable.user_error"  # one module object per process, however it was loaded


def _load():
    if _MODULE in sys.modules:
        return sys.modules[_MODULE]
    rel = os.path.join("overlay", "cosmos_predict2", "portable", "user_error.py")
    path = next((p for p in (os.path.join(os.path.dirname(_HERE), rel), os.path.join(_HERE, "_data", rel))
                 if os.path.isfile(p)), None)
    if path is None:
        raise ImportError(f"{rel} is missing beside the installer ({_HERE}); reinstall cosmos-predict2-overlay")
    spec = importlib.util.spec_from_file_location(_MODULE, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[_MODULE] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        del sys.modules[_MODULE]
        raise
    return mod


_user_error = _load()
UserError = _user_error.UserError
OneLineParser = _user_error.OneLineParser
redact_url = _user_error.redact_url
one_line = _user_error.one_line


class InstallerError(UserError):
    """`error: <what> (<where>). <what to do>.` — the message is the whole line after 'error: '."""
