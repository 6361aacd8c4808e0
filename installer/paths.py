"""Where the installer's resources live: the source checkout first, else the copy shipped in the wheel (_data)."""

from __future__ import annotations

import os

from . import pin


def resource_root() -> str:
    """Directory that holds patches/ and overlay/."""
    return os.path.dirname(pin.patches_root())


def patches_dir() -> str:
    return pin.active().directory


def overlay_dir() -> str:
    return os.path.join(resource_root(), "overlay")


def manifest_file() -> str:
    return pin.active().manifest_path()
