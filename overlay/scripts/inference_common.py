"""The inference code hf_text2image.py and hf_video2world.py share: arguments, prompt files, the device and dtype
(from the device layer and its precision policy), the safety checkers, loading or building the diffusers pipeline,
attention on NPU, seeding, running with one-line errors.

Each script keeps its own flags and output writing; what the scripts do (device selection, the no-op and CPU-pinned
safety checkers, --random_weights, --tiny, the tested diffusers/transformers versions) is described in
scripts/hf_text2image.py's docstring.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEPARATOR = "-" * 20
DTYPES = ("bfloat16", "float16", "float32")
VIDEO_EXTS = (".mp4", ".mov", ".avi", ".mkv", ".webm")


def _sibling(name: str):
    """scripts/<name>.py as the module `scripts.<name>`, in every run context (also when this file is loaded by
    path): the tree root importable, as under `python -m scripts.…`."""
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    return importlib.import_module(f"scripts.{name}")


UserError, die = _sibling("user_errors").UserError, _sibling("user_errors").die


class ScriptError(UserError):
    """A failure phrased as the one line the user sees (without the 'error: ' prefix)."""


class GuardrailBlocked(Exception):
    """The guardrail refused the prompt or the generated frames."""


# ---------------------------------------------------------------------------------------------------- safety
class NoOpSafetyChecker:
    """Stand-in for cosmos_guardrail.CosmosSafetyChecker when --use_safety_checker is off.

    diffusers' Cosmos2 pipelines construct the real checker when none is given and raise at call time when it is
    None, so "off" has to be an object with the interface they call. This one checks nothing: `.to()` is ignored,
    every prompt is safe, frames (uint8 [T, H, W, C]) come back unchanged.
    """

    def to(self, *args, **kwargs):
        return self

    def check_text_safety(self, prompt: str) -> bool:
        return True

    def check_video_safety(self, frames):
        return frames


class CpuGuardrail:
    """The real CosmosSafetyChecker, pinned to the CPU, with blocks turned into GuardrailBlocked.

    The pipeline moves its checker to the accelerator around each check; the guardrail models (several GB) would
    then compete with the DiT for memory, so `.to()` is ignored here and the checker stays where it was built
    (CPU). Not an nn.Module, so `pipe.to(device)` skips it too. The real checker returns None for a blocked video,
    which the pipeline would crash on; here that becomes GuardrailBlocked.
    """

    def __init__(self, checker) -> None:
        self.checker = checker

    def to(self, *args, **kwargs):
        return self

    def check_text_safety(self, prompt: str) -> bool:
        if not self.checker.check_text_safety(prompt):
            raise GuardrailBlocked("the prompt")
        return True

    def check_video_safety(self, frames):
        out = self.checker.check_video_safety(frames)
        if out is None:
            raise GuardrailBlocked("the generated frames")
        return out


def guardrail_class():
    """cosmos_guardrail.CosmosSafetyChecker, or one error line when the package is missing."""
    try:
        from cosmos_guardrail import CosmosSafetyChecker
    except ImportError as exc:
        raise ScriptError(
            f"--use_safety_checker needs the cosmos_guardrail package ({exc}). Run `pip install cosmos-guardrail`, "
            "or drop --use_safety_checker."
        ) from exc
    return CosmosSafetyChecker


def build_safety_checker(use: bool, checkpoint: str | None):
    if not use:
        return NoOpSafetyChecker()
    CosmosSafetyChecker = guardrail_class()  # noqa: N806 (a class)
    try:
        checker = CosmosSafetyChecker(checkpoint) if checkpoint else CosmosSafetyChecker()
    except Exception as exc:  # its model downloads/loads: gated Llama-Guard, offline, ...
        raise ScriptError(
            f"cannot build the Cosmos guardrail: {type(exc).__name__}: {_first_line(exc)}. Check HF_TOKEN and access "
            f"to its models (`{_hints().installer('download --model guardrail')}`), or drop --use_safety_checker."
        ) from exc
    return CpuGuardrail(checker)


# ---------------------------------------------------------------------------------------------------- helpers
def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def device_layer():
    """cosmos_predict2.portable.device from the tree this script lives in (also for `python scripts/x.py`)."""
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    try:
        from cosmos_predict2.portable import device
    except ImportError as exc:
        raise ScriptError(
            f"the device layer cosmos_predict2.portable.device cannot be imported from {ROOT} ({exc}). Run the "
            "script inside a tree prepared by `python -m installer apply`."
        ) from exc
    except RuntimeError as exc:  # COSMOS_DEVICE names an absent device; already one line
        raise ScriptError(str(exc).removeprefix("error: ")) from exc
    return device


def read_text_arg(value: str | None, what: str) -> str | None:
    """--prompt/--negative_prompt: a file's contents when the value is an existing file, else the text itself."""
    if value is None:
        return None
    if os.path.isfile(value):
        with open(value, encoding="utf-8") as f:
            text = f.read().strip()
        if not text:
            raise ScriptError(f"{what} file {value} is empty. Write the text into it or pass the text directly.")
        return text
    if value.endswith(".txt") and " " not in value:
        raise ScriptError(f"{what} file not found ({value}). Check the path, or pass the text itself.")
    if not value.strip():
        raise ScriptError(f"{what} is empty. Pass the text or a file holding it.")
    return value


def default_negative_prompt() -> tuple[str, str]:
    """(text, source) of the negative prompt used when none is given, closest to upstream first:
    upstream's prompts/video2world/negative/default.txt (git checkouts only; the sdist lacks prompts/), else the
    negative prompt of the installed diffusers' Cosmos2 usage example (the same Cosmos default text), else none."""
    path = os.path.join(ROOT, "prompts", "video2world", "negative", "default.txt")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return f.read().strip(), path
    try:
        import re

        from diffusers.pipelines.cosmos import pipeline_cosmos2_video2world as example

        found = re.search(r'negative_prompt = "([^"]+)"', example.EXAMPLE_DOC_STRING)
    except Exception:  # another diffusers layout: no default then
        found = None
    if found:
        return found.group(1).strip(), "diffusers' Cosmos2 example"
    return "", "none"


def add_common_args(parser: argparse.ArgumentParser, default_model: str, height: int, width: int) -> None:
    parser.add_argument("output", help="output directory")
    parser.add_argument("--prompt", required=True, help="prompt text, or a file holding it")
    parser.add_argument("--negative_prompt", help="negative prompt text or file (default: upstream's "
                        "prompts/video2world/negative/default.txt when the tree has it, else the same default text "
                        "from diffusers' Cosmos2 example)")
    parser.add_argument("--model", default=default_model, help=f"hub id or local diffusers folder ({default_model})")
    parser.add_argument("--revision", help="model revision (branch, tag or commit) for a hub id")
    parser.add_argument("-v", "--verbose", action="store_true", help="print prompts, device and settings")
    parser.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    parser.add_argument("--steps", type=int, default=35, help="denoising steps (default 35)")
    parser.add_argument("--guidance", type=float, default=7.0, help="classifier-free guidance scale (default 7)")
    parser.add_argument("--height", type=int, default=height, help=f"output height in pixels (default {height})")
    parser.add_argument("--width", type=int, default=width, help=f"output width in pixels (default {width})")
    parser.add_argument("--dtype", choices=DTYPES, default=None, help="model dtype (default: the compute-dtype "
                        "policy, bfloat16 on NPU/CUDA and on CPUs with native bf16, else float32; COSMOS_CPU_DTYPE)")
    parser.add_argument("--use_safety_checker", action="store_true",
                        help="run the Cosmos guardrail (cosmos_guardrail package) on the prompt and output, on CPU")
    parser.add_argument("--guardrail_checkpoint", help="checkpoint id or folder for CosmosSafetyChecker")
    parser.add_argument("--random_weights", action="store_true",
                        help="random weights from --model's configs (no weight download): sizes and speed only")
    parser.add_argument("--tiny", action="store_true",
                        help="offline demo: a tiny random pipeline built locally (no download, output is noise)")


# --tiny's defaults for the flags the user did not give (the real defaults would be slow and beyond its RoPE tables)
TINY_DEFAULTS = {"height": 64, "width": 96, "steps": 4, "dtype": "float32", "frames": 9}


def apply_tiny_defaults(parser: argparse.ArgumentParser, args) -> None:
    """With --tiny: small defaults for what was left at the parser's default, and the tiny model's size limits."""
    if not args.tiny:
        return
    if args.random_weights:
        raise ScriptError("--tiny and --random_weights exclude each other. Pass one of them.")
    for key, value in TINY_DEFAULTS.items():
        if hasattr(args, key) and getattr(args, key) == parser.get_default(key):
            setattr(args, key, value)
    from_tiny = _tiny_module()
    if args.height > from_tiny.MAX_PIXELS or args.width > from_tiny.MAX_PIXELS:
        raise ScriptError(f"--height {args.height} / --width {args.width} exceed the tiny model's "
                          f"{from_tiny.MAX_PIXELS} pixels (--tiny). Use a smaller size, e.g. 64x96.")
    if getattr(args, "frames", 0) > from_tiny.MAX_FRAMES:
        raise ScriptError(f"--frames {args.frames} exceeds the tiny model's {from_tiny.MAX_FRAMES} (--tiny). "
                          "Use e.g. --frames 9.")



def _hints():
    """scripts/hints.py: runnable commands for the hints (which installer, from where, with which Python)."""
    return _sibling("hints")


def _tiny_module():
    return _sibling("tiny_pipelines")


def check_size(args) -> None:
    if args.height <= 0 or args.width <= 0 or args.height % 16 or args.width % 16:
        raise ScriptError(f"--height {args.height} / --width {args.width} must be positive multiples of 16 (VAE 8x "
                          "times patch 2). Use e.g. 704x1280 or 768x1360.")
    if args.steps < 1:
        raise ScriptError(f"--steps {args.steps} must be >= 1.")


def _config_folder(model: str, revision: str | None) -> str:
    if os.path.isdir(model):
        return model
    from huggingface_hub import snapshot_download

    try:  # configs and tokenizer only: a few hundred KB
        return snapshot_download(model, revision=revision, allow_patterns=["*.json", "tokenizer/*"])
    except Exception as exc:
        raise ScriptError(f"cannot fetch the configs of {model}: {type(exc).__name__}: {_first_line(exc)}. Check "
                          "HF_ENDPOINT/HF_TOKEN or pass a local diffusers folder as --model.") from exc


def _cast_as_loaded(model, dtype):
    """A diffusers model in `dtype` the way from_pretrained(torch_dtype=dtype) leaves it: the submodules its class
    keeps in float32 (`_keep_in_fp32_modules`) stay float32. Cast through torch.nn.Module.to, since diffusers >= 0.39
    warns on every ModelMixin.to(dtype) (even for a model without such modules)."""
    import torch

    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    torch.nn.Module.to(model, dtype)
    for name, module in model.named_modules():
        if any(k in name.split(".") for k in keep):
            torch.nn.Module.to(module, torch.float32)
    return model


def _dtype_kwarg(dtype) -> dict:
    """The from_pretrained argument carrying the dtype: `dtype` where diffusers resolves it (>= 0.40, which
    deprecates `torch_dtype` with a FutureWarning), else `torch_dtype` (all releases with the Cosmos2 pipelines)."""
    from diffusers.utils import deprecation_utils

    return {"dtype": dtype} if hasattr(deprecation_utils, "_resolve_dtype") else {"torch_dtype": dtype}


def build_random_pipeline(cls, model: str, revision: str | None, dtype, device, safety_checker):
    """The pipeline's components built from configs with random weights, created on `device` directly."""
    import torch
    import diffusers
    from transformers import T5Config, T5EncoderModel, T5TokenizerFast

    folder = _config_folder(model, revision)
    with open(os.path.join(folder, "model_index.json"), encoding="utf-8") as f:
        index = json.load(f)

    def diffusers_part(name):
        klass = getattr(diffusers, index[name][1])
        return klass.from_config(klass.load_config(folder, subfolder=name))

    # Parameters are created on the accelerator and in the target dtype directly: a 14B DiT built in fp32 first
    # would need 56 GB.
    saved = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            transformer = _cast_as_loaded(diffusers_part("transformer"), dtype)
            vae = _cast_as_loaded(diffusers_part("vae"), dtype)
            text_encoder = T5EncoderModel(T5Config.from_pretrained(os.path.join(folder, "text_encoder"))).to(dtype)
    finally:
        torch.set_default_dtype(saved)
    return cls(text_encoder=text_encoder, tokenizer=T5TokenizerFast.from_pretrained(os.path.join(folder, "tokenizer")),
               transformer=transformer, vae=vae, scheduler=diffusers_part("scheduler"), safety_checker=safety_checker)


def _quiet_checker_type_warning() -> None:
    """diffusers warns that our checker is not a CosmosSafetyChecker; that is intended, so drop that one line."""
    import logging

    class _Filter(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return not record.getMessage().startswith("Expected types for safety_checker")

    logging.getLogger("diffusers.pipelines.pipeline_utils").addFilter(_Filter())


def load_pipeline(cls, args, device, safety_checker):
    import torch

    dtype = getattr(torch, args.dtype)
    _quiet_checker_type_warning()
    if getattr(args, "tiny", False):
        kind = "text2image" if cls.__name__ == "Cosmos2TextToImagePipeline" else "video2world"
        return _tiny_module().tiny_pipeline(kind, safety_checker, dtype, device)
    if args.random_weights:
        return build_random_pipeline(cls, args.model, args.revision, dtype, device, safety_checker)
    try:
        pipe = cls.from_pretrained(args.model, revision=args.revision, safety_checker=safety_checker,
                                   **_dtype_kwarg(dtype))
    except Exception as exc:  # missing files, hub errors, gated repo, bad folder
        raise ScriptError(
            f"cannot load the pipeline from {args.model}: {type(exc).__name__}: {_first_line(exc)}. Check the path or "
            "hub id, HF_TOKEN (accept the model license on its hub page) and HF_ENDPOINT."
        ) from exc
    return pipe.to(device)


def select_attention(pipe, device_type: str) -> str:
    """On NPU use diffusers' `_native_npu` attention where the transformer routes through diffusers' dispatcher."""
    if device_type != "npu":
        return "torch sdpa"
    processors = [getattr(m, "processor", None) for m in pipe.transformer.modules()]
    if not any(p is not None and hasattr(p, "_attention_backend") for p in processors) or not hasattr(
        pipe.transformer, "set_attention_backend"
    ):
        return "torch sdpa (this diffusers' Cosmos processor calls it directly; torch_npu serves it)"
    try:
        pipe.transformer.set_attention_backend("_native_npu")
    except Exception as exc:  # backend unknown to this diffusers or torch_npu too old
        return f"torch sdpa (_native_npu unavailable: {_first_line(exc)})"
    return "_native_npu"


def print_settings(args, prompt: str, negative: str, device, attention: str) -> None:
    import diffusers
    import torch
    import transformers

    print(SEPARATOR)
    print("Prompt:")
    print(textwrap.indent(prompt.rstrip(), "  "))
    print(f"Negative Prompt ({getattr(args, 'negative_source', '--negative_prompt')}):")
    print(textwrap.indent(negative.rstrip() or "(none)", "  "))
    if getattr(args, "tiny", False):
        print("Model: tiny random pipeline built locally (--tiny; the output is noise)")
    print(f"Device: {device}  dtype: {args.dtype}  attention: {attention}")
    print(f"Safety checker: {'cosmos_guardrail on CPU' if args.use_safety_checker else 'off (NoOpSafetyChecker)'}")
    print(f"torch {torch.__version__}  diffusers {diffusers.__version__}  transformers {transformers.__version__}")
    print(SEPARATOR, flush=True)


def check_model_arg(model: str) -> None:
    looks_local = os.path.isdir(model) or model.startswith((".", "/", "~")) or model.count("/") != 1
    if os.path.isdir(model) and not os.path.isfile(os.path.join(model, "model_index.json")):
        raise ScriptError(
            f"{model} is not a diffusers pipeline folder (no model_index.json). Pass the hub id (e.g. "
            "nvidia/Cosmos-Predict2-2B-Video2World) or a folder saved with save_pretrained; the installer's "
            "checkpoints/ layout holds the training weights only."
        )
    if looks_local and not os.path.isdir(model):
        raise ScriptError(f"model folder not found ({model}). Check --model, or pass a hub id such as "
                          "nvidia/Cosmos-Predict2-2B-Text2Image.")


def prepare(args):
    """Shared start of both scripts: validated inputs (cheap checks first), safety checker, device."""
    check_size(args)
    if not getattr(args, "tiny", False):
        check_model_arg(args.model)
    prompt = read_text_arg(args.prompt, "--prompt")
    negative = read_text_arg(args.negative_prompt, "--negative_prompt")
    args.negative_source = "--negative_prompt"
    if negative is None:
        negative, args.negative_source = default_negative_prompt()
    if args.use_safety_checker:
        guardrail_class()  # a missing package fails before anything slow
    dev = device_layer()
    device = dev.get_device()
    if args.dtype is None:  # decided once, in the device layer's precision policy
        from cosmos_predict2.portable import precision

        try:
            args.dtype = precision.precision_name()
        except RuntimeError as exc:  # COSMOS_CPU_DTYPE holds an unknown value; already one line
            raise ScriptError(str(exc).removeprefix("error: ")) from exc
    try:
        import diffusers  # noqa: F401
    except ImportError as exc:
        raise ScriptError(f"diffusers is not installed ({exc}). Run `pip install diffusers==0.35.1`.") from exc
    # Built last: the real guardrail loads several GB of models (on the CPU, where it stays).
    checker = build_safety_checker(args.use_safety_checker, args.guardrail_checkpoint)
    return prompt, negative, dev, device, checker


def sampling_kwargs(args, prompt: str, negative: str) -> dict:
    """The pipeline-call arguments both scripts share. The generator is a CPU one, so a seed gives the same initial
    latents on every device."""
    import torch

    return dict(prompt=prompt, negative_prompt=negative, generator=torch.Generator("cpu").manual_seed(args.seed),
                num_inference_steps=args.steps, guidance_scale=args.guidance, height=args.height, width=args.width)


def run_pipeline(call, what: str, dev=None, verbose: bool = False):
    """Run the pipeline call; a guardrail block becomes one error line. With verbose, print time and peak memory."""
    import time

    if dev is not None:
        dev.reset_peak_memory_stats()
        dev.synchronize()
    start = time.perf_counter()
    try:
        out = call()
    except GuardrailBlocked as exc:
        raise ScriptError(f"the Cosmos guardrail blocked {exc} ({what}); nothing was written. Change the prompt.")
    if dev is not None:
        dev.synchronize()
        if verbose:
            peak = dev.memory_stats()["peak"] / 2**30
            print(f"Generation time: {time.perf_counter() - start:.2f} s; peak {dev.device_type()} memory "
                  f"{peak:.2f} GiB", flush=True)
    return out
