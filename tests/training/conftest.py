"""Fixtures for end-to-end training tests: a patched tree with the smoke datasets in it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .trainer_runs import cpu_env


@pytest.fixture(scope="session")
def smoke_tree(request) -> Path:
    """The tree `python -m installer apply` produced (or $COSMOS_TEST_TREE), with the smoke data generated."""
    tree = Path(os.environ["COSMOS_TEST_TREE"]) if os.environ.get("COSMOS_TEST_TREE") else Path(
        request.getfixturevalue("applied_tree")
    )
    if not (tree / "checkpoints/smoke/tokenizer.pth").exists():
        subprocess.run([sys.executable, "-m", "scripts.make_smoke_dataset"], cwd=tree, env=cpu_env(tree), check=True,
                       capture_output=True, timeout=600)
    return tree


@pytest.fixture(scope="session")
def one_video_dataset(smoke_tree, tmp_path_factory) -> Path:
    """A one-video copy of the smoke dataset: every rank and every iteration sees the same sample."""
    root = tmp_path_factory.mktemp("one_video")
    subprocess.run([sys.executable, "-m", "scripts.make_smoke_dataset", "--root", str(root), "--videos", "1",
                    "--images", "1", "--skip-vae"], cwd=smoke_tree, env=cpu_env(smoke_tree), check=True,
                   capture_output=True, timeout=300)
    return root / "datasets/smoke/cosmos_nemo_assets"
