"""train.sh is an overlay file like any other: overlay/train.sh is the canonical file (installed at the tree root by
the code path that installs every overlay file, its mode 0755 taken from the file), the repository's top-level
train.sh is a git symlink to it (the product brief wants `bash train.sh` at the top level), and no installer code
names it. These fail if the launcher gets special-cased again."""

from __future__ import annotations

import ast
import os
import subprocess
from pathlib import Path

from inst_helpers import REPO
from installer import engine, overlay, paths


def test_top_level_train_sh_is_a_symlink_into_overlay():
    top = REPO / "train.sh"
    assert top.is_symlink() and os.readlink(top) == "overlay/train.sh"
    assert (REPO / "overlay" / "train.sh").is_file() and not (REPO / "overlay" / "train.sh").is_symlink()
    r = subprocess.run(["git", "ls-files", "-s", "train.sh", "overlay/train.sh"], cwd=REPO, capture_output=True,
                       text=True)
    if r.returncode == 0 and r.stdout.strip():  # a git checkout: the index records the symlink and the mode
        modes = {ln.split("\t")[1]: ln.split()[0] for ln in r.stdout.splitlines()}
        assert modes == {"train.sh": "120000", "overlay/train.sh": "100755"}, modes


def test_overlay_alone_brings_train_sh_with_its_mode():
    ours = overlay.load(paths.overlay_dir())
    data, mode = ours["train.sh"]
    assert mode == 0o100755
    assert data == (REPO / "overlay" / "train.sh").read_bytes() == (REPO / "train.sh").read_bytes()
    # the engine's own files are exactly the overlay directory's
    cfg = engine.Config(target=str(REPO / "cosmos-predict2"))
    assert engine.load_ours(cfg).files == ours


def test_mode_comes_from_the_file(tmp_path):
    (tmp_path / "run.sh").write_text("#!/bin/sh\n")
    (tmp_path / "run.sh").chmod(0o755)
    (tmp_path / "data.txt").write_text("x\n")
    (tmp_path / "data.txt").chmod(0o644)
    assert overlay.load(str(tmp_path)) == {"run.sh": (b"#!/bin/sh\n", 0o100755), "data.txt": (b"x\n", 0o100644)}


def _code_strings(path: Path) -> list[str]:
    """String constants of a module, docstrings left out (prose for the user may name files)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docs.add(id(first.value))
    return [n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]


def test_no_installer_code_names_train_sh():
    files = [*(REPO / "installer").rglob("*.py"), REPO / "setup.py"]
    offenders = [f"{p.relative_to(REPO)}: {s!r}" for p in files for s in _code_strings(p) if "train.sh" in s]
    assert offenders == []
    assert not hasattr(paths, "launcher_file")
    assert "launcher" not in engine.Config.__dataclass_fields__
