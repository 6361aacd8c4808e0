"""Cosmos-Predict2 Text2Image inference through Hugging Face diffusers, on Ascend NPU, CUDA or CPU.

    python -m scripts.hf_text2image outputs/t2i --prompt "A teal robot on a workbench."     # or --prompt file.txt
        [--model nvidia/Cosmos-Predict2-2B-Text2Image | <local diffusers folder>] [--height 768 --width 1360]
        [--steps 35 --guidance 7 --seed 42 --dtype bfloat16] [--negative_prompt TEXT|FILE]
        [--use_safety_checker] [--random_weights | --tiny] [-v]

Writes OUTPUT/output.png. Upstream's flags are kept (output, --prompt, --negative_prompt, --model, --revision,
-v, --seed, --steps, --guidance, --height, --width); --prompt/--negative_prompt take text or a file path.

Device: detected once by cosmos_predict2.portable.device (NPU when torch_npu reports one, else CUDA, else CPU;
COSMOS_DEVICE forces it). The initial noise comes from a CPU generator seeded with --seed, so one seed gives the
same starting latents on every device. On NPU, diffusers' `_native_npu` attention backend is selected when the
installed diffusers routes the Cosmos transformer's attention through its dispatcher; diffusers 0.35.x calls
torch's scaled_dot_product_attention directly in the Cosmos processor, which torch_npu serves on NPU (and
diffusers' RMSNorm takes its npu_rms_norm branch by itself).

Safety checker: diffusers' Cosmos2 pipelines build cosmos_guardrail.CosmosSafetyChecker when given None and refuse
to run without a checker object. Without --use_safety_checker this script passes NoOpSafetyChecker (defined
in scripts/inference_common.py: `.to()` ignored, `check_text_safety` -> True, `check_video_safety` -> frames unchanged) -- the NVIDIA Open
Model License asks you to keep the guardrail on when you publish or serve outputs. With --use_safety_checker the
real CosmosSafetyChecker (pip install cosmos-guardrail; it downloads its models from the hub) is built and kept on
the CPU: the pipeline's `.to(device)` calls are ignored by CpuGuardrail, so the guardrail never occupies
accelerator memory. A blocked prompt or output stops the run with one line and writes nothing; faces the
guardrail blurs are written blurred.

--random_weights builds the pipeline from --model's configs (only *.json and the tokenizer are read or fetched)
with random weights, on the device directly: real sizes and speed without downloading weights. With a hub id it
still fetches those configs (a few hundred KB); offline, pass a local diffusers folder as --model.

--tiny is the offline demo: a tiny random pipeline (scripts/tiny_pipelines.py) built locally with no network and no
files, --model ignored, small defaults (64x96 pixels, 4 steps, float32; video: 9 frames) unless you pass them. The
picture is noise; everything else (encoder, DiT, VAE, scheduler, pipeline, writing the file) is the real path.

Versions: tested end to end (tiny random pipelines, CPU, torch 2.13) with diffusers 0.35.1 and 0.34.0, each
with transformers 4.56.2 (tokenizers 0.22) and 4.51.3 (tokenizers 0.21); and with transformers 5.17.0 (tokenizers
0.23.2, huggingface_hub 1.33.0) together with diffusers 0.35.2, 0.36.0, 0.37.1, 0.38.0, 0.39.0, 0.40.0, 0.41.0 and
0.42.1 (diffusers <= 0.35.1 cannot import under transformers 5). Cosmos2TextToImagePipeline /
Cosmos2VideoToWorldPipeline need diffusers >= 0.34. Note: diffusers' RMSNorm calls torch_npu.npu_rms_norm whenever
torch_npu is installed, so on an Ascend host forcing COSMOS_DEVICE=cpu fails inside diffusers; run on the NPU there.
"""

from __future__ import annotations

import argparse
import os
import sys

if __package__ != "scripts":  # `python scripts/<name>.py`: the tree root makes `scripts` a package, as under -m
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from scripts import inference_common as common  # noqa: E402

ScriptError = common.ScriptError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Cosmos-Predict2 Text2Image inference with diffusers.")
    common.add_common_args(parser, "nvidia/Cosmos-Predict2-2B-Text2Image", 768, 1360)
    args = parser.parse_args(argv)
    try:
        common.apply_tiny_defaults(parser, args)
        prompt, negative, dev, device, checker = common.prepare(args)
        import diffusers

        pipe = common.load_pipeline(diffusers.Cosmos2TextToImagePipeline, args, device, checker)
        attention = common.select_attention(pipe, dev.device_type())
        if args.verbose:
            common.print_settings(args, prompt, negative, device, attention)
        os.makedirs(args.output, exist_ok=True)
        print("Generating image...", flush=True)
        image = common.run_pipeline(lambda: pipe(**common.sampling_kwargs(args, prompt, negative)).images[0],
                                    "text2image", dev, args.verbose)
        path = os.path.join(args.output, "output.png")
        image.save(path)
        print(f"Saved image to: {path}")
        return 0
    except ScriptError as exc:
        common.die(str(exc))
    except KeyboardInterrupt:
        common.die("interrupted (keyboard). Nothing was written.")
    return 1


if __name__ == "__main__":
    sys.exit(main())
