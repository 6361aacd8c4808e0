"""Upstream's video/image datasets with the patches 0030-0033: bad samples skipped with a warning naming them, a clip
of exactly num_frames frames, the uint8 clip path equal to upstream's arithmetic, one-line T5 pickle errors.
Each case runs in the patched tree (a subprocess with PYTHONPATH=<tree>)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

from .conftest import tree_env

READ = """
import json, sys, warnings
from cosmos_predict2.data.dataset_video import Dataset
ds = Dataset(dataset_dir=sys.argv[1], num_frames=13, video_size=(64, 64))
out = {"clips": [p.rsplit('/', 1)[1] for p in ds.video_paths], "items": [], "warnings": []}
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    for i in range(len(ds)):
        try:
            d = ds[i]
            out["items"].append([d["video_name"]["video_path"].rsplit('/', 1)[1], str(d["video"].dtype),
                                 list(d["video"].shape)])
        except Exception as e:
            out["items"].append(["raised", type(e).__name__, str(e)])
    out["warnings"] = [str(x.message) for x in w]
print(json.dumps(out))
"""


def _run(tree, code: str, *args: str) -> dict:
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=tree, env=tree_env(tree),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_clip_of_exactly_num_frames_reads(data_tree, clips2):
    # the smoke clips have 13 frames = num_frames: upstream drew np.random.randint(0, 0) and could not read them
    out = _run(data_tree, READ, str(clips2))
    assert [it[0] for it in out["items"]] == out["clips"]
    assert all(it[1:] == ["torch.uint8", [3, 13, 64, 64]] for it in out["items"])
    assert out["warnings"] == []


def test_bad_clip_is_skipped_with_a_warning_naming_it(data_tree, clips2, tmp_path):
    ds = _copy(clips2, tmp_path / "ds")
    bad = sorted((ds / "videos").glob("*.mp4"))[0]
    bad.write_bytes(b"not an mp4")
    out = _run(data_tree, READ, str(ds))
    good = [c for c in out["clips"] if c != bad.name]
    assert [it[0] for it in out["items"]] == [good[0], good[0]]  # the bad one replaced by the other clip
    assert len(out["warnings"]) == 1 and str(bad) in out["warnings"][0], out["warnings"]


def test_empty_t5_pickle_names_the_file(data_tree, clips2, tmp_path):
    ds = _copy(clips2, tmp_path / "ds")
    pk = sorted((ds / "t5_xxl").glob("*.pickle"))[1]
    pk.write_bytes(b"")
    out = _run(data_tree, READ, str(ds))
    assert len(out["warnings"]) == 1
    assert f"error: T5 embedding file is empty ({pk})" in out["warnings"][0], out["warnings"]


def test_nothing_readable_ends_with_one_error_line(data_tree, clips2, tmp_path):
    ds = _copy(clips2, tmp_path / "ds")
    for v in (ds / "videos").glob("*.mp4"):
        v.write_bytes(b"")
    out = _run(data_tree, READ, str(ds))
    raised = out["items"][0]
    assert raised[:2] == ["raised", "RuntimeError"], out
    assert raised[2].startswith("error: 17 unreadable samples in a row") and "\n" not in raised[2]


def test_image_dataset_bad_sample_skipped(data_tree, clips2, tmp_path):
    root = tmp_path / "img"
    shutil.copytree(clips2.parent / "cosmos_nemo_assets_images", root)
    shutil.copy(next((root / "images").glob("*.jpg")), root / "images" / "zz.jpg")
    (root / "t5_xxl" / "zz.pickle").write_bytes(b"\x80\x04")  # truncated pickle
    out = _run(data_tree, """
        import json, sys, warnings
        from cosmos_predict2.data.dataset_image import ImageDataset
        ds = ImageDataset(dataset_dir=sys.argv[1], image_size=(64, 64))
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            d = ds[len(ds) - 1]
        print(json.dumps({"shape": list(d["images"].shape), "warnings": [str(x.message) for x in w]}))
        """, str(root))
    assert out["shape"] == [3, 64, 64]
    assert len(out["warnings"]) == 1 and "zz.pickle" in out["warnings"][0] and "error: T5" in out["warnings"][0]


def test_uint8_clip_path_equals_upstreams_arithmetic(data_tree):
    out = _run(data_tree, """
        import json, numpy as np, torch
        from torchvision import transforms as T
        from cosmos_predict2.data import clip_io
        from cosmos_predict2.data.dataset_utils import Resize_Preprocess, ToTensorVideo
        rng = np.random.default_rng(0)
        frames = rng.integers(0, 256, size=(5, 48, 80, 3), dtype=np.uint8)
        res = {}
        for size in ((48, 80), (32, 48)):
            up = T.Compose([ToTensorVideo(), Resize_Preprocess(size)])(torch.from_numpy(frames).permute(0, 3, 1, 2))
            up = torch.clamp(up * 255.0, 0, 255).to(torch.uint8)
            ours = clip_io.frames_to_clip(frames, size)
            res[str(size)] = [ours.dtype == torch.uint8, bool(torch.equal(ours, up)), list(ours.shape)]
        print(json.dumps(res))
        """)
    assert out == {"(48, 80)": [True, True, [5, 3, 48, 80]], "(32, 48)": [True, True, [5, 3, 32, 48]]}
