"""Helpers shared by the data-preparation and inference tests: a script tree, tiny videos, a tiny random T5.

The script tree is the part of an applied tree the scripts need: overlay/scripts and the device layer
(overlay/cosmos_predict2/portable) under an empty cosmos_predict2 package (upstream's __init__.py holds only the
licence header). Upstream's dataset readers come from a real upstream tree (see upstream_source()).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
# Whole-word pieces of the tiny T5 tokenizer (case-sensitive like T5's: "A"/"An" start the tests' prompts).
T5_WORDS = ("A An a video of sks teal robot an image the moving colour pattern blocked keyword on with "
            "low quality blurry").split()


def make_script_tree(dst: Path) -> Path:
    (dst / "cosmos_predict2").mkdir(parents=True, exist_ok=True)
    (dst / "cosmos_predict2" / "__init__.py").write_text("")
    shutil.copytree(REPO / "overlay" / "cosmos_predict2" / "portable", dst / "cosmos_predict2" / "portable",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "overlay" / "scripts", dst / "scripts", ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def script_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("COSMOS_DEVICE", "PYTHONPATH")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
               OMP_NUM_THREADS="2", TOKENIZERS_PARALLELISM="false")
    env.update(extra)
    return env


def run_script(tree: Path, module: str, *args: str, as_file: bool = False, timeout: int = 300,
               **env: str) -> subprocess.CompletedProcess:
    cmd = [PYTHON, f"scripts/{module}.py"] if as_file else [PYTHON, "-m", f"scripts.{module}"]
    return subprocess.run([*cmd, *args], cwd=tree, env=script_env(**env), capture_output=True, text=True,
                          timeout=timeout)


def assert_one_error_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode != 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, r.stderr
    return lines[0]


def write_mp4(path: Path, frames: int, size: int = 64, fps: int = 16, seed: int = 0) -> None:
    """A smooth moving gradient (compressible, not constant) as mpeg4 in an mp4 container."""
    import av
    import numpy as np

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    phase = rng.uniform(0, 2 * np.pi, size=3)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for t in range(frames):
            img = np.stack([127.5 + 127.5 * np.sin(2 * np.pi * (x + y * (c + 1) / 3) + phase[c] + 0.4 * t)
                            for c in range(3)], axis=-1).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def tiny_pipelines():
    """overlay/scripts/tiny_pipelines.py (the builders the scripts' --tiny uses), loaded by path."""
    import importlib.util

    name = "overlay_tiny_pipelines"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "overlay" / "scripts" / "tiny_pipelines.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def build_tiny_t5(dst: Path, d_model: int = 1024) -> Path:
    """A random 1-layer T5 encoder with T5-XXL's hidden size and a T5-style tokenizer built offline, knowing the
    tests' words (the overlay's builder)."""
    return tiny_pipelines().build_tiny_t5(dst, d_model=d_model, words=T5_WORDS)


def upstream_source(request) -> Path | None:
    """A tree holding upstream's cosmos_predict2/ and imaginaire/: the applied_tree fixture (tests/conftest.py),
    else $COSMOS_TEST_TREE, else $COSMOS_SDIST_DIR (an unpacked cosmos-predict2 1.0.9 sdist)."""
    try:
        return Path(request.getfixturevalue("applied_tree"))
    except Exception:  # fixture not defined, or it skipped
        pass
    for env in ("COSMOS_TEST_TREE", "COSMOS_SDIST_DIR"):
        if os.environ.get(env) and (Path(os.environ[env]) / "cosmos_predict2" / "data").is_dir():
            return Path(os.environ[env])
    return None
