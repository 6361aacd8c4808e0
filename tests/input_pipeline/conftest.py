"""Fixtures for the input-pipeline tests: a patched tree and smoke video datasets of 2 and 50 clips."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def tree_env(tree: Path, **extra: str) -> dict:
    env = dict(os.environ)
    env.update(COSMOS_DEVICE="cpu", OMP_NUM_THREADS="1", PYTHONPATH=str(tree), TORCH_DEVICE_BACKEND_AUTOLOAD="0")
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def data_tree(request) -> Path:
    if os.environ.get("COSMOS_TEST_TREE"):
        return Path(os.environ["COSMOS_TEST_TREE"])
    return Path(request.getfixturevalue("applied_tree"))


def _make(tree: Path, root: Path, videos: int, frames: int = 13) -> Path:
    subprocess.run([sys.executable, "-m", "scripts.make_smoke_dataset", "--root", str(root), "--videos", str(videos),
                    "--images", "1", "--frames", str(frames), "--skip-vae"], cwd=tree, env=tree_env(tree),
                   check=True, capture_output=True, timeout=600)
    return root / "datasets/smoke/cosmos_nemo_assets"


@pytest.fixture(scope="session")
def clips2(data_tree, tmp_path_factory) -> Path:
    return _make(data_tree, tmp_path_factory.mktemp("clips2"), 2)


@pytest.fixture(scope="session")
def clips50(data_tree, tmp_path_factory) -> Path:
    return _make(data_tree, tmp_path_factory.mktemp("clips50"), 50)


def probe(tree: Path, dataset: Path, *args: str, env: dict | None = None) -> dict:
    import json

    r = subprocess.run([sys.executable, str(HERE / "loader_probe.py"), str(dataset), *args], cwd=tree,
                       env=tree_env(tree, **(env or {})), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return json.loads(r.stdout.strip().splitlines()[-1])
