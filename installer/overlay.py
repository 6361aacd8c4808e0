"""Our own files: overlay/ mirrors the target tree file for file (modes included); nothing else is installed."""

from __future__ import annotations

import os

from .errors import InstallerError
from .patch import RESERVED

SKIP_DIRS = {"__pycache__", ".pytest_cache"}


def _mode(path: str) -> int:
    return 0o100755 if os.stat(path).st_mode & 0o111 else 0o100644


def load(overlay_dir: str) -> dict:
    """path -> (bytes, mode) of every file the overlay installs."""
    out = {}
    if os.path.isdir(overlay_dir):
        for root, dirs, names in os.walk(overlay_dir):
            dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
            for n in sorted(names):
                full = os.path.join(root, n)
                if n.endswith((".pyc", ".pyo")) or not os.path.isfile(full):
                    continue
                rel = os.path.relpath(full, overlay_dir).replace(os.sep, "/")
                if rel.split("/")[0] in RESERVED:
                    raise InstallerError(f"overlay file {rel} would write into reserved files", overlay_dir,
                                         "remove it from overlay/")
                with open(full, "rb") as f:
                    out[rel] = (f.read(), _mode(full))
    return out
