"""Both diffusers inference scripts end to end on CPU (subprocess, from a script tree) with tiny random Cosmos2
pipelines saved as diffusers folders. The guardrail cases use tests/inference/fake_guardrail, a TEST DOUBLE of
the cosmos_guardrail package (see its docstring), put on PYTHONPATH only for those runs."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "dataprep"))
from dataprep_helpers import assert_one_error_line, build_tiny_t5, make_script_tree, run_script, write_mp4  # noqa
from tiny_cosmos import save_tiny_pipeline, tiny_components  # noqa: E402

FAKE_GUARDRAIL = HERE / "fake_guardrail"
REPO_SCRIPTS = HERE.parents[1] / "overlay" / "scripts"
SMALL = ("--height", "64", "--width", "96", "--steps", "2", "--dtype", "float32")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    base = tmp_path_factory.mktemp("models")
    t5 = build_tiny_t5(base / "t5")
    return {"t5": t5, "t2i": save_tiny_pipeline("text2image", base / "t2i", t5),
            "v2w": save_tiny_pipeline("video2world", base / "v2w", t5)}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_script_tree(tmp_path_factory.mktemp("tree") / "tree")


@pytest.fixture(scope="module")
def cond_image(tmp_path_factory) -> Path:
    from PIL import Image

    path = tmp_path_factory.mktemp("cond") / "first.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 80, 3), dtype=np.uint8)).save(path)  # resized by the pipeline
    return path


def video_info(path: Path) -> tuple[int, tuple[int, int], float]:
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        frames = [f for f in c.decode(s)]
        return len(frames), (frames[0].width, frames[0].height), float(s.average_rate)


def guardrail_env(tmp_path: Path, **extra) -> dict:
    return dict(PYTHONPATH=str(FAKE_GUARDRAIL), FAKE_GUARDRAIL_LOG=str(tmp_path / "guardrail.jsonl"), **extra)


def guardrail_log(tmp_path: Path) -> list[dict]:
    path = tmp_path / "guardrail.jsonl"
    return [json.loads(ln) for ln in path.read_text().splitlines()] if path.exists() else []


def test_text2image_writes_requested_size(tree, models, tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("A teal robot on a workbench.\n")
    out = tmp_path / "out"
    r = run_script(tree, "hf_text2image", str(out), "--prompt", str(prompt), "--model", str(models["t2i"]), *SMALL,
                   "--seed", "3", "-v")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "A teal robot on a workbench." in r.stdout and "Device: cpu" in r.stdout
    # No --negative_prompt and no upstream prompts/ folder in the tree: the Cosmos default text from diffusers.
    assert "Negative Prompt (diffusers' Cosmos2 example):" in r.stdout and "(none)" not in r.stdout
    assert "off (NoOpSafetyChecker)" in r.stdout and "Expected types" not in r.stderr
    assert "FutureWarning" not in r.stderr, r.stderr[-3000:]  # diffusers >= 0.40 deprecates torch_dtype
    from PIL import Image

    with Image.open(out / "output.png") as im:
        assert im.size == (96, 64) and im.mode == "RGB"
        assert np.asarray(im).std() > 0  # a decoded image, not a blank


def test_video2world_from_image(tree, models, cond_image, tmp_path):
    out = tmp_path / "out"
    r = run_script(tree, "hf_video2world", str(out), "--prompt", "a teal robot picks up a cup", "--image",
                   str(cond_image), "--model", str(models["v2w"]), *SMALL, "--frames", "9", "--fps", "16")
    assert r.returncode == 0, r.stderr[-3000:]
    assert video_info(out / "output.mp4") == (9, (96, 64), 16.0)


def test_video2world_from_video_with_random_weights(tree, models, tmp_path):
    clip = tmp_path / "clip.mp4"
    write_mp4(clip, frames=12, size=64)
    out = tmp_path / "out"
    # As the file path form upstream's docs use; weights random from the folder's configs.
    r = run_script(tree, "hf_video2world", str(out), "--prompt", "a teal robot", "--image", str(clip),
                   "--model", str(models["v2w"]), "--random_weights", *SMALL, "--frames", "5", "--fps", "8",
                   "--num_conditional_frames", "2", "-v", as_file=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Conditioning: 2 video frame(s)" in r.stdout
    assert "should be kept in float32" not in r.stderr, r.stderr[-3000:]  # diffusers >= 0.39 on ModelMixin.to(dtype)
    assert video_info(out / "output.mp4") == (5, (96, 64), 8.0)


def test_tiny_offline_demo_writes_a_real_image_and_video(tree, tmp_path):
    """--tiny: no --model, no files, HF_HUB_OFFLINE=1 (script_env) and no hub cache: a tiny random pipeline is
    built locally and a decodable PNG and mp4 come out, at --tiny's small defaults."""
    from PIL import Image

    hub = {"HF_HOME": str(tmp_path / "empty_hf_home"), "HF_HUB_CACHE": str(tmp_path / "empty_hub")}
    r = run_script(tree, "hf_text2image", str(tmp_path / "t2i"), "--prompt", "a robot arm picks up a red cube",
                   "--tiny", "-v", **hub)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "tiny random pipeline built locally" in r.stdout and "dtype: float32" in r.stdout
    with Image.open(tmp_path / "t2i" / "output.png") as im:
        im.load()
        assert im.size == (96, 64) and im.mode == "RGB" and np.asarray(im).std() > 0
    assert not (tmp_path / "empty_hub").exists() or not any((tmp_path / "empty_hub").iterdir())
    r = run_script(tree, "hf_video2world", str(tmp_path / "v2w"), "--prompt", "a robot arm picks up a red cube",
                   "--tiny", "--frames", "5", "-v", as_file=True, **hub)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Conditioning: generated gradient image; 5 frames at 16 fps, 64x96" in r.stdout
    assert video_info(tmp_path / "v2w" / "output.mp4") == (5, (96, 64), 16.0)


@pytest.mark.parametrize("script, args, expect", [
    ("hf_text2image", ("--random_weights",), "exclude each other"),
    ("hf_text2image", ("--height", "512"), "exceed the tiny model's 256 pixels"),
    ("hf_video2world", ("--frames", "33"), "exceeds the tiny model's 29"),
])
def test_tiny_limits_are_one_line(tree, tmp_path, script, args, expect):
    line = assert_one_error_line(run_script(tree, script, str(tmp_path / "o"), "--prompt", "a robot", "--tiny",
                                            *args))
    assert expect in line and not (tmp_path / "o").exists()


def test_guardrail_on_runs_on_cpu_and_blurs(tree, models, tmp_path):
    out = tmp_path / "out"
    r = run_script(tree, "hf_text2image", str(out), "--prompt", "a teal robot", "--model", str(models["t2i"]), *SMALL,
                   "--use_safety_checker", **guardrail_env(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    log = guardrail_log(tmp_path)
    kinds = [e["event"] for e in log]
    assert kinds == ["init", "text", "video"], log  # the pipeline's .to(device) calls never reached the checker
    assert all(e["param_device"] == "cpu" for e in log if "param_device" in e)
    assert log[2]["dtype"] == "uint8" and log[2]["shape"] == [1, 64, 96, 3]
    from PIL import Image

    with Image.open(out / "output.png") as im:
        px = np.asarray(im)
    assert (px[:16, :16] == px[0, 0]).all()  # the double's "face" pixelation reached the written image
    assert px.std() > 0


def test_guardrail_blocks_prompt_and_video(tree, models, cond_image, tmp_path):
    out = tmp_path / "out"
    r = run_script(tree, "hf_text2image", str(out), "--prompt", "a blocked scene", "--model", str(models["t2i"]),
                   *SMALL, "--use_safety_checker", **guardrail_env(tmp_path))
    line = assert_one_error_line(r)
    assert "guardrail blocked the prompt" in line
    assert not (out / "output.png").exists()
    r = run_script(tree, "hf_video2world", str(out), "--prompt", "a teal robot", "--image", str(cond_image),
                   "--model", str(models["v2w"]), *SMALL, "--frames", "5", "--use_safety_checker",
                   **guardrail_env(tmp_path, FAKE_GUARDRAIL_BLOCK_VIDEO="1"))
    line = assert_one_error_line(r)
    assert "guardrail blocked the generated frames" in line and "nothing was written" in line
    assert not (out / "output.mp4").exists()


def test_safety_checker_requested_but_not_installed(tree, models, tmp_path):
    line = assert_one_error_line(run_script(tree, "hf_text2image", str(tmp_path / "o"), "--prompt", "a robot",
                                            "--model", str(models["t2i"]), *SMALL, "--use_safety_checker"))
    assert "cosmos_guardrail" in line and "pip install cosmos-guardrail" in line


@pytest.mark.parametrize("args, expect", [
    (("--height", "70"), "multiples of 16"),
    (("--frames", "10"), "4k+1"),
    (("--prompt", "missing_prompt.txt"), "--prompt file not found"),
    (("--image", None), "exactly one conditioning input"),
    (("--model", "NOT_A_PIPELINE"), "not a diffusers pipeline folder"),
    (("--model", "/nonexistent/cosmos/pipeline"), "model folder not found"),
])
def test_argument_errors_are_one_line(tree, models, cond_image, tmp_path, args, expect):
    base = {"--prompt": "a robot", "--image": str(cond_image), "--model": str(models["v2w"])}
    flags = []
    for key, value in zip(args[::2], args[1::2]):
        if key in base:
            base.pop(key)
        if value == "NOT_A_PIPELINE":
            value = str(tmp_path)
        if value is not None:
            flags += [key, value]
    for key, value in base.items():
        flags += [key, value]
    line = assert_one_error_line(run_script(tree, "hf_video2world", str(tmp_path / "o"), *flags))
    assert expect in line


def test_npu_attention_selection_is_guarded(tree, models):
    """diffusers 0.35's Cosmos processor has no dispatcher hook: on NPU the script keeps SDPA and says why, never
    crashes; a processor that has the hook gets `_native_npu` requested."""
    spec = importlib.util.spec_from_file_location("hf_common_under_test", tree / "scripts" / "inference_common.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    comps = tiny_components("text2image", models["t5"])

    class Pipe:
        transformer = comps["transformer"]

    assert mod.select_attention(Pipe, "cpu") == "torch sdpa"
    assert "calls it directly" in mod.select_attention(Pipe, "npu")

    requested = []

    class HookedTransformer(type(comps["transformer"])):
        def set_attention_backend(self, name):
            requested.append(name)

    Pipe.transformer.__class__ = HookedTransformer
    for m in Pipe.transformer.modules():
        if getattr(m, "processor", None) is not None:
            m.processor._attention_backend = None
    assert mod.select_attention(Pipe, "npu") == "_native_npu" and requested == ["_native_npu"]


def test_real_size_configs_give_real_parameter_counts(tree, tmp_path):
    """The --random_weights path on real-size configs (as the lead runs it on an accelerator), built on the meta
    device here: the parameter counts must be those of Cosmos-Predict2 2B/14B, T5-11B's encoder and Wan2.1's VAE."""
    import diffusers
    import torch

    from tiny_cosmos import write_real_size_configs

    spec = importlib.util.spec_from_file_location("hf_common_meta", tree / "scripts" / "inference_common.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    def billions(module):
        return sum(p.numel() for p in module.parameters()) / 1e9

    for name, cls, dit in (("2B-Video2World", diffusers.Cosmos2VideoToWorldPipeline, 1.956),
                           ("14B-Text2Image", diffusers.Cosmos2TextToImagePipeline, 14.265)):
        folder = write_real_size_configs(name, tmp_path / name)
        pipe = mod.build_random_pipeline(cls, str(folder), None, torch.bfloat16, torch.device("meta"),
                                         mod.NoOpSafetyChecker())
        assert abs(billions(pipe.transformer) - dit) < 0.01
        assert abs(billions(pipe.text_encoder) - 4.865) < 0.01 and abs(billions(pipe.vae) - 0.1269) < 0.001
        assert pipe.transformer.dtype == torch.bfloat16 and pipe.text_encoder.dtype == torch.bfloat16


SHARED = ("def add_common_args(", "def prepare(", "def load_pipeline(", "def build_random_pipeline(",
          "def select_attention(", "def run_pipeline(", "class NoOpSafetyChecker", "class CpuGuardrail")


@pytest.mark.parametrize("name", ["hf_text2image", "hf_video2world"])
def test_scripts_are_thin_over_the_shared_module(tree, name):
    """The shared inference code lives in scripts/inference_common.py only; each script runs as a module and as a
    file (the import fallback), and neither imports the other."""
    text = (tree / "scripts" / f"{name}.py").read_text()
    assert [s for s in SHARED if s in text] == []
    assert "hf_text2image as" not in text and "inference_common as common" in text
    common = (tree / "scripts" / "inference_common.py").read_text()
    assert [s for s in SHARED if s not in common] == []
    for as_file in (False, True):
        r = run_script(tree, name, "--help", as_file=as_file, timeout=120)
        assert r.returncode == 0 and "--use_safety_checker" in r.stdout, r.stderr


def _fallback_sibling_imports(path: Path, siblings: set) -> list[str]:
    """Imports of a sibling script inside an `except ImportError` handler (the old per-file fallback)."""
    import ast

    out = []
    for handler in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(handler, ast.ExceptHandler):
            for n in ast.walk(handler):
                names = ([a.name for a in n.names] if isinstance(n, ast.Import) else
                         [n.module or ""] if isinstance(n, ast.ImportFrom) else [])
                out += [f"{path.name}:{n.lineno} {m}" for m in names if m.split(".")[0] in siblings]
    return out


def test_sibling_scripts_are_plain_package_imports(tree, tmp_path):
    """One way to import a sibling script: `from scripts import X`. A file run (`python scripts/<name>.py`) puts the
    tree root on sys.path first, so the package import works in every run context; no script keeps a fallback that
    imports a sibling as a top-level module."""
    scripts = REPO_SCRIPTS.glob("*.py")
    siblings = {p.stem for p in REPO_SCRIPTS.glob("*.py")}
    assert [x for p in scripts for x in _fallback_sibling_imports(p, siblings)] == []
    # run as a file and as a module, through a hint that imports scripts.hints lazily: the same one line
    for as_file in (False, True):
        line = assert_one_error_line(run_script(tree, "extract_images_from_videos", "--input_dataset_dir",
                                                str(tmp_path / "none"), "--output_dataset_dir", str(tmp_path / "o"),
                                                as_file=as_file, timeout=120))
        assert "videos/" in line and "download --dataset cosmos-nemo-assets" in line, line
    for name in ("get_t5_embeddings", "get_t5_embeddings_from_cosmos_nemo_assets"):
        for as_file in (False, True):
            r = run_script(tree, name, "--help", as_file=as_file, timeout=120)
            assert r.returncode == 0 and "--dataset_path" in r.stdout, (name, as_file, r.stderr)
