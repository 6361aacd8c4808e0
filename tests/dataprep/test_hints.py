"""The hints run as written. A user on a fresh patched tree starts the 2B Text2Image experiment, and for each error
that train.sh's preflight prints, runs the commands it quotes, exactly as quoted (bash -c, from a neutral
directory), until the preflight passes: the data download through the installer (into the tree, from another
directory, with the interpreter it names), frame extraction and T5 embeddings in the tree, then the checkpoint
download. The hub is a pre-filled huggingface_hub cache with HF_HUB_OFFLINE=1 (tiny stand-in files under the real
repository names and pinned revisions); T5 is the tiny random one at the default T5 path."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dataprep_helpers import build_tiny_t5, write_mp4  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "download"))
from test_download import PINS, fill_cache  # noqa: E402

EXP = "predict2_text2image_training_2b_cosmos_nemo_assets"
T2I = "nvidia/Cosmos-Predict2-2B-Text2Image"


@pytest.fixture
def user_tree(applied_tree, tmp_path) -> Path:
    tree = tmp_path / "cosmos-predict2"
    shutil.copytree(applied_tree, tree, symlinks=True)
    build_tiny_t5(tree / "checkpoints" / "google-t5" / "t5-11b")
    return tree


def _hub_env(tmp_path: Path) -> dict:
    cache = tmp_path / "hub"
    videos = tmp_path / "videos"
    for i in range(2):
        write_mp4(videos / f"clip{i}.mp4", frames=12, seed=i)
    fill_cache(cache, "nvidia/Cosmos-NeMo-Assets", "0" * 40,
               {f"nemo_diffusion_example_data/clip{i}.mp4": (videos / f"clip{i}.mp4").read_bytes() for i in range(2)},
               repo_type="dataset")
    fill_cache(cache, T2I, PINS[T2I], {"model.pt": b"dit", "tokenizer/tokenizer.pth": b"vae"})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "COSMOS_", "PYTHONPATH"))}
    env.update(HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="2", TOKENIZERS_PARALLELISM="false")
    return env


def _preflight(tree: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(tree / "train.sh"), f"--EXP={EXP}", "--dry-run"], cwd=tree,
                          env={**env, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=300)


def test_preflight_hints_run_as_written(user_tree, tmp_path):
    env = _hub_env(tmp_path)
    elsewhere = tmp_path / "elsewhere"  # the user's shell is anywhere: the hints must not depend on it
    elsewhere.mkdir()
    followed = []
    for _ in range(4):
        r = _preflight(user_tree, env)
        if r.returncode == 0:
            break
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1, r.stderr
        commands = re.findall(r"`([^`]+)`", errors[0].split(" Run ", 1)[-1])
        assert commands, errors[0]
        for cmd in commands:
            # a bare `python` is ambiguous (which one?), and `installer` is importable only in the checkout
            assert not re.search(r"(^|&& )python3? ", cmd), cmd
            done = subprocess.run(["bash", "-c", cmd], cwd=elsewhere, env=env, capture_output=True, text=True,
                                  timeout=300)
            assert done.returncode == 0, f"{cmd}\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
            followed.append(cmd)
    assert r.returncode == 0, r.stdout + r.stderr
    assert [c.split(" -m ")[1].split()[0] for c in followed] == [
        "installer", "scripts.extract_images_from_videos", "scripts.get_t5_embeddings_from_cosmos_nemo_assets",
        "installer"], followed
    assert len(list((user_tree / "datasets" / "cosmos_nemo_assets_images" / "t5_xxl").glob("*.pickle"))) == 2
    meta = next((user_tree / "datasets" / "cosmos_nemo_assets_images" / "metas").glob("*.txt")).read_text()
    assert meta == "An image of sks teal robot."
    assert (user_tree / "checkpoints" / T2I / "model.pt").read_bytes() == b"dit"
    assert not (REPO / "cosmos-predict2").exists() and not (elsewhere / "checkpoints").exists()
