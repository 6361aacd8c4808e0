"""Where the installer's resources live: the source checkout first, else the copy shipped in the wheel (_data)."""

from __future__ import annotations

import os

from .manifest import PIN

_HERE = os.path.dirname(os.path.abspath(__file__))


def resource_root() -> str:
    """Directory that holds patches/, overlay/ and train.sh."""
    checkout = os.path.dirname(_HERE)
    if os.path.isdir(os.path.join(checkout, "patches", PIN)) and os.path.isfile(os.path.join(checkout, "train.sh")):
        return checkout
    return os.path.join(_HERE, "_data")


def patches_dir() -> str:
    return os.path.join(resource_root(), "patches", PIN)


def overlay_dir() -> str:
    return os.path.join(resource_root(), "overlay")


def launcher_file() -> str:
    return os.path.join(resource_root(), "train.sh")


def manifest_file() -> str:
    return os.path.join(_HERE, "data", "cosmos-predict2-ccb40411.tsv")
