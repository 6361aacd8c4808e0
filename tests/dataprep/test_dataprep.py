"""Data preparation: T5 embeddings (video and image datasets) and frame extraction, run as the user runs them
(subprocess, from a script tree) with a tiny random T5 that has T5-XXL's hidden size; the outputs are read back
through upstream's own dataset classes."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dataprep_helpers import (  # noqa: E402
    PYTHON, assert_one_error_line, build_tiny_t5, make_script_tree, run_script, script_env, upstream_source,
    write_mp4,
)

NEMO = "get_t5_embeddings_from_cosmos_nemo_assets"
PROMPT = "A video of sks teal robot."


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory) -> Path:
    return build_tiny_t5(tmp_path_factory.mktemp("t5") / "t5-tiny")


@pytest.fixture
def tree(tmp_path) -> Path:
    return make_script_tree(tmp_path / "tree")


def reference_embedding(t5_dir: Path, prompt: str) -> np.ndarray:
    """The encoder's output for the prompt alone (no padding): what the pickle must hold."""
    import torch
    from transformers import T5EncoderModel, T5TokenizerFast

    tok = T5TokenizerFast.from_pretrained(t5_dir)
    model = T5EncoderModel.from_pretrained(t5_dir).eval()
    ids = tok([prompt], return_tensors="pt")
    with torch.no_grad():
        return model(**ids).last_hidden_state[0].numpy()


def read_back(src: Path, code: str) -> dict:
    """Run `code` with upstream's packages importable; it prints one JSON object."""
    r = subprocess.run([PYTHON, "-c", f"import sys, json; sys.path.insert(0, {str(src)!r})\n{code}"],
                       capture_output=True, text=True, env=script_env(), timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_video_dataset_embeddings_round_trip(tree, tiny_t5, request):
    ds = tree / "datasets" / "cosmos_nemo_assets"
    write_mp4(ds / "videos" / "a_long.mp4", frames=12, seed=1)
    write_mp4(ds / "videos" / "b_long.mp4", frames=12, seed=2)
    write_mp4(ds / "videos" / "c_exact.mp4", frames=8, seed=3)  # == num_frames: enough (patch 0031)
    write_mp4(ds / "videos" / "d_short.mp4", frames=5, seed=4)
    r = run_script(tree, NEMO, "--dataset_path", str(ds), "--prompt", PROMPT, "--t5_path", str(tiny_t5),
                   "--num_frames", "8")
    assert r.returncode == 0, r.stderr
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1, r.stderr
    assert "d_short.mp4 (5 frames)" in warnings[0] and "c_exact" not in warnings[0]
    assert "a_long" not in warnings[0] and "b_long" not in warnings[0]

    ref = reference_embedding(tiny_t5, PROMPT)
    for stem in ("a_long", "b_long", "c_exact", "d_short"):
        assert (ds / "metas" / f"{stem}.txt").read_text() == PROMPT
        with open(ds / "t5_xxl" / f"{stem}.pickle", "rb") as f:
            obj = pickle.load(f)
        assert isinstance(obj, list) and len(obj) == 1
        emb = obj[0]
        assert isinstance(emb, np.ndarray) and emb.dtype == np.float16 and emb.shape == ref.shape
        assert emb.shape[1] == 1024 and emb.shape[0] == 8  # 6 words + "." + </s>
        np.testing.assert_allclose(emb.astype(np.float32), ref, rtol=2e-3, atol=2e-3)

    src = upstream_source(request)
    if src is None:
        pytest.skip("no upstream tree for the read-back: provide applied_tree, COSMOS_TEST_TREE or COSMOS_SDIST_DIR")
    # Upstream's reader: the embedding comes back zero-padded to 512 rows with the right mask, and exactly the
    # videos our warning named are the ones its frame sampler rejects.
    out = read_back(src, f"""
import numpy as np, torch
from cosmos_predict2.data.dataset_video import Dataset
ds = Dataset(dataset_dir={str(ds)!r}, num_frames=8, video_size=(32, 32))
item = ds[0]
rejected = []
for p in ds.video_paths:
    try:
        ds._get_frames(p)
    except ValueError:
        rejected.append(p.rsplit('/', 1)[-1])
emb = item["t5_text_embeddings"].numpy()
print(json.dumps(dict(n=len(ds), video=list(item["video"].shape), emb=list(emb.shape),
                      mask=int(item["t5_text_mask"].sum()), tail_zero=bool((emb[8:] == 0).all()),
                      head=emb[:8].tolist(), rejected=sorted(rejected))))
""")
    assert out["n"] == 4 and out["video"] == [3, 8, 32, 32]
    assert out["emb"] == [512, 1024] and out["mask"] == 8 and out["tail_zero"]
    np.testing.assert_allclose(np.array(out["head"]), ref, rtol=2e-3, atol=2e-3)
    assert out["rejected"] == ["d_short.mp4"]


def test_image_dataset_extract_and_embed(tree, tiny_t5, request):
    videos = tree / "datasets" / "cosmos_nemo_assets"
    write_mp4(videos / "videos" / "v1.mp4", frames=12, seed=5)
    write_mp4(videos / "videos" / "v2.mp4", frames=7, seed=6)
    images = tree / "datasets" / "cosmos_nemo_assets_images"
    r = run_script(tree, "extract_images_from_videos", "--input_dataset_dir", str(videos),
                   "--output_dataset_dir", str(images), "--stride", "5", as_file=True)
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in (images / "images").iterdir())
    assert names == ["v1_00000000.jpg", "v1_00000001.jpg", "v1_00000002.jpg", "v2_00000000.jpg", "v2_00000001.jpg"]
    from PIL import Image

    with Image.open(images / "images" / "v1_00000001.jpg") as im:
        assert im.size == (64, 64) and im.mode == "RGB"

    prompt = "An image of sks teal robot."
    r = run_script(tree, NEMO, "--dataset_path", str(images), "--prompt", prompt, "--is_image",
                   "--cache_dir", str(tiny_t5), as_file=True)
    assert r.returncode == 0, r.stderr
    assert "warning" not in r.stderr
    assert sorted(p.name for p in (images / "t5_xxl").iterdir()) == [n.replace(".jpg", ".pickle") for n in names]

    src = upstream_source(request)
    if src is None:
        pytest.skip("no upstream tree for the read-back: provide applied_tree, COSMOS_TEST_TREE or COSMOS_SDIST_DIR")
    out = read_back(src, f"""
from cosmos_predict2.data.dataset_image import ImageDataset
ds = ImageDataset(dataset_dir={str(images)!r}, image_size=(32, 32))
item = ds[4]
print(json.dumps(dict(n=len(ds), image=list(item["images"].shape), emb=list(item["t5_text_embeddings"].shape),
                      mask=int(item["t5_text_mask"].sum()))))
""")
    assert out == {"n": 5, "image": [3, 32, 32], "emb": [512, 1024], "mask": 8}


def test_generic_script_reads_metas_and_keeps_existing(tree, tiny_t5):
    ds = tree / "datasets" / "mine"
    write_mp4(ds / "videos" / "x.mp4", frames=100, seed=7)
    write_mp4(ds / "videos" / "y.mp4", frames=100, seed=8)
    (ds / "metas").mkdir(parents=True)
    (ds / "metas" / "x.txt").write_text("the moving colour pattern\n")
    line = assert_one_error_line(run_script(tree, "get_t5_embeddings", "--dataset_path", str(ds),
                                            "--t5_path", str(tiny_t5)))
    assert "y.txt" in line and "--prompt" in line
    (ds / "metas" / "y.txt").write_text("a teal robot")
    r = run_script(tree, "get_t5_embeddings", "--dataset_path", str(ds), "--t5_path", str(tiny_t5))
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
    with open(ds / "t5_xxl" / "x.pickle", "rb") as f:
        x = pickle.load(f)[0]
    np.testing.assert_allclose(x.astype(np.float32), reference_embedding(tiny_t5, "the moving colour pattern"),
                               rtol=2e-3, atol=2e-3)
    # A second run keeps what exists (no T5 load needed); --overwrite recomputes from the edited caption.
    (ds / "metas" / "x.txt").write_text("a teal robot")
    r = run_script(tree, "get_t5_embeddings", "--dataset_path", str(ds), "--t5_path", "/nonexistent")
    assert r.returncode == 0 and "already" in r.stdout, r.stderr
    r = run_script(tree, "get_t5_embeddings", "--dataset_path", str(ds), "--t5_path", str(tiny_t5), "--overwrite")
    assert r.returncode == 0, r.stderr
    with open(ds / "t5_xxl" / "x.pickle", "rb") as f, open(ds / "t5_xxl" / "y.pickle", "rb") as g:
        np.testing.assert_array_equal(pickle.load(f)[0], pickle.load(g)[0])


def test_failures_are_one_line(tree, tiny_t5, tmp_path):
    ds = tree / "datasets" / "cosmos_nemo_assets"
    line = assert_one_error_line(run_script(tree, NEMO, "--dataset_path", str(ds)))
    assert "dataset folder not found" in line
    write_mp4(ds / "videos" / "a.mp4", frames=100)
    line = assert_one_error_line(run_script(tree, NEMO, "--dataset_path", str(ds), "--is_image"))
    assert "images/" in line and "--is_image" in line
    line = assert_one_error_line(run_script(tree, NEMO, "--dataset_path", str(ds), "--t5_path", str(tmp_path / "no")))
    assert "no T5 checkpoint" in line and "installer download --model t5-11b" in line
    # The device layer's own refusal (NPU asked for on a host without one) reaches the user as one line too.
    line = assert_one_error_line(run_script(tree, NEMO, "--dataset_path", str(ds), "--t5_path", str(tiny_t5),
                                            COSMOS_DEVICE="npu"))
    assert "COSMOS_DEVICE=npu" in line
    line = assert_one_error_line(run_script(tree, "extract_images_from_videos", "--input_dataset_dir",
                                            str(tmp_path / "none"), "--output_dataset_dir", str(tmp_path / "o")))
    assert "videos/" in line
    # argument errors too: one line naming the flag, no usage block (user_error.OneLineParser)
    r = run_script(tree, "extract_images_from_videos", "--input_dataset_dir", str(tmp_path), "--output_dataset_dir",
                   str(tmp_path / "o"), "--stride", "0")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--stride must be >= 1" in r.stderr, r.stderr
