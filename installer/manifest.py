"""The manifest of the pinned upstream commit: mode, git blob SHA-1, size and library membership of every file.

Which commit, and so which manifest file, is the active pin's (installer/pin.py, patches/<commit>/upstream.toml).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from . import pin


@dataclass(frozen=True)
class Entry:
    mode: int  # 0o100644 / 0o100755 as git writes it
    sha1: str  # git blob SHA-1
    size: int
    in_sdist: bool  # True = library file (cosmos_predict2/, imaginaire/: what an sdist holds; the managed part)
    path: str


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


_CACHE: dict[str, dict[str, Entry]] = {}


def load(path: str | None = None) -> dict[str, Entry]:
    """path -> Entry for every file of the pinned commit (the active pin's manifest unless path is given)."""
    if path is None:
        path = pin.active().manifest_path()
    if path not in _CACHE:
        out: dict[str, Entry] = {}
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith("#") or not line.strip():
                    continue
                mode, sha1, size, in_sdist, p = line.rstrip("\n").split("\t")
                # a size the manifest could not measure (blob absent from its mirror) is -1: check the SHA-1 only
                out[p] = Entry(int(mode, 8), sha1, int(size) if size.isdigit() else -1, in_sdist == "yes", p)
        _CACHE[path] = out
    return _CACHE[path]


def library_paths() -> list[str]:
    return sorted(p for p, e in load().items() if e.in_sdist)


def matches(path: str, data: bytes) -> bool:
    e = load().get(path)
    return e is not None and e.size in (-1, len(data)) and git_blob_sha1(data) == e.sha1


def upstream_dirs() -> set[str]:
    """Every directory that holds an upstream file (kept by revert even when empty)."""
    dirs = set()
    for p in load():
        d = os.path.dirname(p)
        while d:
            dirs.add(d)
            d = os.path.dirname(d)
    return dirs
