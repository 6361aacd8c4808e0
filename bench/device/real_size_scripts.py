#!/usr/bin/env python3
"""The seed's data-preparation and inference commands at REAL size, random weights, on one GPU: seconds, peak
memory and output checks, one JSON line per command.

    python bench/device/real_size_scripts.py TREE [--videos DIR] [--only dataprep,t2i,v2w] [--v2w-steps 4]
    python bench/device/real_size_scripts.py TREE --tiny --videos DIR      # CPU self-check with tiny random models

From the checkout root (it uses tests/inference/tiny_cosmos.py to write the real architecture configs). TREE is a
patched tree (`python -m installer apply ... --target TREE`). Steps, each a subprocess run from TREE exactly as a
user types it:
  dataprep  a random T5-11b encoder (google-t5/t5-11b's config, 4.8 B parameters, bf16 safetensors) is written to
            checkpoints/google-t5/t5-11b with the test tokenizer (T5's sentencepiece model cannot be fetched
            offline; prompts are padded to 512 tokens either way); then
            scripts.get_t5_embeddings_from_cosmos_nemo_assets on DIR's videos, scripts.extract_images_from_videos
            --stride 30, and the same T5 script with --is_image. Checks: one pickle per video/image holding one
            float16 [n_tokens, 1024] array; images written.
  t2i       scripts.hf_text2image for 2B and 14B (real configs, --random_weights, 768x1360, 35 steps).
  v2w       scripts.hf_video2world for 2B and 14B (real configs, --random_weights, 704x1280, 93 frames, 16 fps,
            --v2w-steps steps: the full 35 would take minutes per video; time per step is reported).
The T5-11b text encoder of the diffusers pipelines is random too (real size). Safety checker off (its models
cannot be fetched offline).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROMPT_V = "A video of sks teal robot."
PROMPT_I = "An image of sks teal robot."


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def run(tree: Path, name: str, args: list[str], timeout: int = 900) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, *args], cwd=tree, capture_output=True, text=True, timeout=timeout)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        FAILED.append(name)
        emit(bench="scripts", step=name, rc=r.returncode, seconds=dt, stderr_tail=r.stderr[-1500:])
    return r, dt


FAILED: list[str] = []  # steps whose command exited != 0 (the script then exits 1)
TINY = False  # --tiny: tiny models and sizes, CPU (a self-check of this script)
TINY_T2I = ["--height", "64", "--width", "64", "--steps", "2"]
TINY_V2W = ["--height", "64", "--width", "64", "--frames", "9"]


def device_layer(tree: Path):
    """TREE's device layer (cosmos_predict2/portable/device.py), loaded by path as doctor and preflight do: this
    driver runs from the checkout, not inside the tree, and still must not decide the device itself."""
    import importlib.util

    path = tree / "cosmos_predict2" / "portable" / "device.py"
    if not path.is_file():
        raise SystemExit(f"error: {path} not found (real_size_scripts.py). Pass a tree made by "
                         "`python -m installer apply --target TREE`.")
    spec = importlib.util.spec_from_file_location("_cosmos_tree_device", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


DEV = None  # main() sets it: TREE's device layer


def write_random_t5(dst: Path, tokenizer_from: Path) -> int:
    import torch

    if TINY:
        sys.path.insert(0, str(REPO / "tests" / "dataprep"))
        from dataprep_helpers import build_tiny_t5

        shutil.rmtree(dst, ignore_errors=True)
        build_tiny_t5(dst)
        return 0
    from transformers import T5Config, T5EncoderModel

    from tiny_cosmos import _T5_11B  # main() put tests/inference on sys.path

    t0 = time.perf_counter()
    dst.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    with DEV.get_device():
        model = T5EncoderModel(T5Config(**_T5_11B)).to(torch.bfloat16)
    model.save_pretrained(dst, safe_serialization=True)
    for f in os.listdir(tokenizer_from):
        shutil.copy(tokenizer_from / f, dst / f)
    n = sum(p.numel() for p in model.parameters())
    del model
    DEV.empty_cache()
    emit(bench="scripts", step="write_random_t5_11b", params=n, seconds=time.perf_counter() - t0)
    return n


def check_pickles(folder: Path, stems: list[str]) -> dict:
    import numpy as np

    shapes = []
    for s in stems:
        with open(folder / "t5_xxl" / f"{s}.pickle", "rb") as f:
            obj = pickle.load(f)
        assert isinstance(obj, list) and len(obj) == 1 and obj[0].dtype == np.float16 and obj[0].shape[1] == 1024
        assert np.isfinite(obj[0].astype(np.float32)).all()
        shapes.append(list(obj[0].shape))
    return dict(pickles=len(shapes), shapes=shapes[:3])


def gen_stats(stdout: str) -> dict:
    m = re.search(r"Generation time: ([\d.]+) s; peak (\w+) memory ([\d.]+) GiB", stdout)
    return dict(generation_s=float(m.group(1)), peak_gib=float(m.group(3))) if m else {}


def stage_dataprep(tree: Path, videos: Path, cfg_root: Path) -> None:
    ds = tree / "datasets" / "cosmos_nemo_assets"
    shutil.rmtree(ds, ignore_errors=True)
    (ds / "videos").mkdir(parents=True)
    for v in sorted(videos.glob("*.mp4")):
        shutil.copy(v, ds / "videos" / v.name)
    stems = sorted(p.stem for p in (ds / "videos").glob("*.mp4"))
    write_random_t5(tree / "checkpoints" / "google-t5" / "t5-11b", cfg_root / "2B-Text2Image" / "tokenizer")
    r, dt = run(tree, "t5_videos", ["-m", "scripts.get_t5_embeddings_from_cosmos_nemo_assets", "--dataset_path",
                                    "datasets/cosmos_nemo_assets", "--prompt", PROMPT_V])
    if r.returncode == 0:
        emit(bench="scripts", step="t5_videos", rc=0, seconds=dt, videos=len(stems), **check_pickles(ds, stems),
             stdout_tail=r.stdout[-300:], stderr_tail=r.stderr[-300:])
    r, dt = run(tree, "extract_images", ["-m", "scripts.extract_images_from_videos", "--input_dataset_dir",
                                         "datasets/cosmos_nemo_assets", "--output_dataset_dir",
                                         "datasets/cosmos_nemo_assets_images", "--stride", "30"])
    img = tree / "datasets" / "cosmos_nemo_assets_images"
    images = sorted(glob.glob(str(img / "images" / "*.jpg")))
    if r.returncode == 0:
        from PIL import Image

        emit(bench="scripts", step="extract_images", rc=0, seconds=dt, images=len(images),
             size=list(Image.open(images[0]).size) if images else None)
    r, dt = run(tree, "t5_images", ["-m", "scripts.get_t5_embeddings_from_cosmos_nemo_assets", "--dataset_path",
                                    "datasets/cosmos_nemo_assets_images", "--prompt", PROMPT_I, "--is_image"])
    if r.returncode == 0:
        emit(bench="scripts", step="t5_images", rc=0, seconds=dt,
             **check_pickles(img, [Path(p).stem for p in images]))


def stage_t2i(tree: Path, cfg_root: Path, out: Path) -> None:
    from PIL import Image

    for size in ("2B", "14B"):
        dst = out / f"t2i_{size}"
        r, dt = run(tree, f"t2i_{size}", ["-m", "scripts.hf_text2image", str(dst), "--prompt", PROMPT_I, "--model",
                                          str(cfg_root / f"{size}-Text2Image"), "--random_weights", "-v",
                                          *(TINY_T2I if TINY else [])])
        if r.returncode == 0:
            im = Image.open(dst / "output.png")
            emit(bench="scripts", step=f"t2i_{size}", rc=0, seconds=dt, steps=2 if TINY else 35, size=list(im.size),
                 **gen_stats(r.stdout))
            (dst / "output.png").unlink()  # keep $OUT small


def stage_v2w(tree: Path, cfg_root: Path, out: Path, cond: str, steps: int) -> None:
    import av

    for size in ("2B", "14B"):
        dst = out / f"v2w_{size}"
        r, dt = run(tree, f"v2w_{size}", ["-m", "scripts.hf_video2world", str(dst), "--prompt", PROMPT_V, "--image",
                                          cond, "--model", str(cfg_root / f"{size}-Video2World"), "--random_weights",
                                          "--steps", str(steps), "-v", *(TINY_V2W if TINY else [])])
        if r.returncode == 0:
            with av.open(str(dst / "output.mp4")) as c:
                st = c.streams.video[0]
                frames = sum(1 for _ in c.decode(st))
                wh = [st.codec_context.width, st.codec_context.height]
                fps = float(st.average_rate)
            g = gen_stats(r.stdout)
            emit(bench="scripts", step=f"v2w_{size}", rc=0, seconds=dt, steps=steps, frames=frames, size=wh, fps=fps,
                 s_per_step=g["generation_s"] / steps if g else None, **g)
            (dst / "output.mp4").unlink()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tree")
    ap.add_argument("--videos", default=str(REPO / ".gpu_infer" / "data" / "datasets" / "smoke" / "cosmos_nemo_assets"
                                            / "videos"))
    ap.add_argument("--only", default="dataprep,t2i,v2w")
    ap.add_argument("--v2w-steps", type=int, default=4)
    ap.add_argument("--tiny", action="store_true", help="tiny random models and sizes on CPU (self-check)")
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/out") + "/scripts")
    args = ap.parse_args(argv)
    global TINY, DEV
    TINY = args.tiny
    tree, out = Path(args.tree).resolve(), Path(args.out)
    DEV = device_layer(tree)
    if DEV.device_type() == "cpu" and not TINY:
        print("error: the real-size commands need a GPU; the device layer chose cpu (real_size_scripts.py). "
              "Run on a GPU machine, or pass --tiny for the CPU self-check.", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    import torch

    emit(bench="env", torch=torch.__version__, device=DEV.device_type(),
         name=torch.cuda.get_device_name() if DEV.device_type() == "cuda" else DEV.device_type(),
         cudnn=torch.backends.cudnn.version(),
         diffusers=__import__("diffusers").__version__, transformers=__import__("transformers").__version__)
    sys.path.insert(0, str(REPO / "tests" / "inference"))
    from tiny_cosmos import save_tiny_pipeline, write_real_size_configs

    cfg_root = out / "configs"
    for name in ("2B-Text2Image", "14B-Text2Image", "2B-Video2World", "14B-Video2World"):
        shutil.rmtree(cfg_root / name, ignore_errors=True)
        if TINY:  # same folder layout, tiny architecture
            save_tiny_pipeline("text2image" if "Text2Image" in name else "video2world", cfg_root / name)
        else:
            write_real_size_configs(name, cfg_root / name)
    only = args.only.split(",")
    if "dataprep" in only:
        stage_dataprep(tree, Path(args.videos), cfg_root)
    if "t2i" in only:
        stage_t2i(tree, cfg_root, out)
    if "v2w" in only:
        imgs = sorted(glob.glob(str(tree / "datasets" / "cosmos_nemo_assets_images" / "images" / "*.jpg")))
        cond = imgs[0] if imgs else sorted(glob.glob(str(Path(args.videos) / "*.mp4")))[0]
        stage_v2w(tree, cfg_root, out, cond, args.v2w_steps)
    if FAILED:
        print(f"error: {len(FAILED)} command(s) failed: {', '.join(FAILED)} (stderr tails in the JSON rows above)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
