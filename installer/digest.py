"""Digests: the tree digest (reproducibility of what apply produces) and the series digest (our version)."""

from __future__ import annotations

import hashlib
import os


def tree_digest(files: dict) -> str:
    """sha256 over sorted paths, each with its git mode and its bytes (managed files only)."""
    h = hashlib.sha256()
    for path in sorted(files):
        data, mode = files[path]
        h.update(b"%s\0%o\0%d\0" % (path.encode("utf-8"), mode, len(data)))
        h.update(data)
    return h.hexdigest()


def series_digest(patch_dir: str, names: list, ours: dict) -> str:
    """Identity of this overlay version: series order, patch bytes, overlay files."""
    h = hashlib.sha256()
    for n in names:
        with open(os.path.join(patch_dir, n), "rb") as f:
            h.update(b"patch\0%s\0" % n.encode() + hashlib.sha256(f.read()).digest())
    h.update(tree_digest(ours).encode())
    return h.hexdigest()


def read_recorded(path: str) -> str | None:
    """TREE_DIGEST: the first token of the first non-comment line."""
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                return line.split()[0]
    return None
