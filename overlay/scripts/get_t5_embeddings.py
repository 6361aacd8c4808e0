"""Pre-compute T5-XXL prompt embeddings for a video or image dataset, in the format upstream's readers load.

    python -m scripts.get_t5_embeddings --dataset_path datasets/my_videos            # one prompt per metas/*.txt
    python -m scripts.get_t5_embeddings --dataset_path datasets/my_images --is_image [--prompt "An image of ..."]

Dataset layout (cosmos_predict2/data/dataset_video.py and dataset_image.py):
    DIR/videos/<stem>.mp4  (or DIR/images/<stem>.jpg with --is_image)
    DIR/metas/<stem>.txt   the prompt; written from --prompt when missing (existing ones are kept)
    DIR/t5_xxl/<stem>.pickle   written here: pickle of a list holding ONE float16 ndarray [n_tokens, 1024], the
                           encoder's last hidden state for the prompt's real tokens (padding rows dropped; the
                           readers zero-pad back to 512 rows and build the mask from n_tokens)
Existing pickles are kept unless --overwrite. Videos with too few frames for the experiment (the reader needs at
least --num_frames, 93 for the Cosmos-NeMo-Assets experiments; unpatched upstream needed strictly more) are listed
in one warning line, because the loader would only skip them later, inside training.

The encoder is transformers' T5EncoderModel + T5TokenizerFast loaded from --t5_path (alias --cache_dir; default
checkpoints/google-t5/t5-11b as the installer's `download --model t5-11b --target TREE` lays it out). Upstream's helper
class is not used: importing it reaches a module-level flash-attn assert. The device (NPU, CUDA or CPU) is
detected once by cosmos_predict2.portable.device (COSMOS_DEVICE=cpu|cuda|npu forces it).
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys

if __package__ != "scripts":  # `python scripts/<name>.py`: the tree root makes `scripts` a package, as under -m
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scripts.user_errors import OneLineParser, UserError, run_main  # noqa: E402

T5_DIM = 1024  # T5-XXL hidden size; upstream's readers hard-code it (dataset_utils._T5_EMBED_DIM)
DEFAULT_T5 = os.path.join("checkpoints", "google-t5", "t5-11b")
_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


class ScriptError(UserError):
    """A failure phrased as the one line the user sees (without the 'error: ' prefix)."""


def device_layer():
    """cosmos_predict2.portable.device from the tree this script lives in (works for `python scripts/x.py` too)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if root not in sys.path:
        sys.path.insert(0, root)
    try:
        from cosmos_predict2.portable import device
    except ImportError as exc:
        raise ScriptError(
            f"the device layer cosmos_predict2.portable.device cannot be imported from {root} ({exc}). Run the "
            "script inside a tree prepared by `python -m installer apply`."
        ) from exc
    except RuntimeError as exc:  # COSMOS_DEVICE asks for a device that is absent; already one line
        raise ScriptError(str(exc).removeprefix("error: ")) from exc
    return device


def _hints():
    """scripts/hints.py: runnable commands for the hints (which installer, from where, with which Python)."""
    from scripts import hints

    return hints


def add_common_args(parser: argparse.ArgumentParser, default_dataset: str, default_prompt: str | None) -> None:
    parser.add_argument("--dataset_path", default=default_dataset, help=f"dataset root (default {default_dataset})")
    parser.add_argument(
        "--prompt",
        default=default_prompt,
        help="prompt written to metas/<stem>.txt for every video/image that has none"
        + (f" (default {default_prompt!r})" if default_prompt else ""),
    )
    parser.add_argument("--is_image", action="store_true", help="image dataset: DIR/images/*.jpg")
    parser.add_argument("--max_length", type=int, default=512, help="token limit of the encoder (default 512)")
    parser.add_argument(
        "--t5_path",
        "--cache_dir",
        dest="t5_path",
        default=DEFAULT_T5,
        help=f"folder with the T5 config, weights and tokenizer (default {DEFAULT_T5})",
    )
    parser.add_argument("--dtype", choices=list(_DTYPES), default="float32",
                        help="encoder compute dtype (default float32, as upstream; bfloat16 halves memory)")
    parser.add_argument("--num_frames", type=int, default=93,
                        help="frames the experiment samples per video; shorter videos are reported (default 93)")
    parser.add_argument("--overwrite", action="store_true", help="recompute existing t5_xxl/*.pickle")


def media_stems(dataset: str, is_image: bool) -> tuple[str, list[str]]:
    sub, ext = ("images", ".jpg") if is_image else ("videos", ".mp4")
    folder = os.path.join(dataset, sub)
    if not os.path.isdir(folder):
        other = "--is_image" if not is_image else "no --is_image"
        raise ScriptError(
            f"no {sub}/ folder in the dataset ({folder}). Check --dataset_path (or use {other} for a "
            f"{'video' if is_image else 'image'} dataset)."
        )
    stems = sorted(f[: -len(ext)] for f in os.listdir(folder) if f.endswith(ext))
    if not stems:
        raise ScriptError(f"no *{ext} files in {folder}. Put the {sub} there first.")
    return folder, stems


def count_frames(path: str) -> int:
    """Frame count as upstream's reader (decord) sees it; PyAV where decord is absent (aarch64 hosts)."""
    try:
        from decord import VideoReader, cpu

        return len(VideoReader(path, ctx=cpu(0), num_threads=1))
    except ImportError:
        pass
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        if stream.frames:
            return int(stream.frames)
        return sum(1 for _ in container.decode(stream))


def short_videos(folder: str, stems: list[str], num_frames: int) -> list[str]:
    """'<name> (<n> frames)' for every video the reader cannot sample num_frames from (needs >= num_frames)."""
    out = []
    for stem in stems:
        name = stem + ".mp4"
        try:
            n = count_frames(os.path.join(folder, name))
        except Exception as exc:  # unreadable file: report it with the short ones rather than crash
            out.append(f"{name} (unreadable: {type(exc).__name__})")
            continue
        if n < num_frames:
            out.append(f"{name} ({n} frames)")
    return out


def write_metas(dataset: str, stems: list[str], prompt: str | None) -> dict[str, str]:
    """metas/<stem>.txt for every stem (written from prompt when missing); returns stem -> prompt text."""
    metas = os.path.join(dataset, "metas")
    os.makedirs(metas, exist_ok=True)
    prompts, missing = {}, []
    for stem in stems:
        path = os.path.join(metas, stem + ".txt")
        if not os.path.isfile(path):
            if prompt is None:
                missing.append(stem + ".txt")
                continue
            with open(path, "w", encoding="utf-8") as f:
                f.write(prompt)
        with open(path, encoding="utf-8") as f:
            text = f.read().strip()
        if not text:
            raise ScriptError(f"empty prompt file {path}. Write the caption into it or delete it and pass --prompt.")
        prompts[stem] = text
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ScriptError(f"no prompt for {shown} (in {metas}). Write those files or pass --prompt \"...\".")
    return prompts


class T5Encoder:
    """T5-XXL encoder returning upstream's per-prompt embedding (real tokens only, float16)."""

    def __init__(self, path: str, device, dtype: str = "float32") -> None:
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ScriptError(
                f"no T5 checkpoint at {path} (--t5_path). Run `{_hints().installer('download --model t5-11b')}` "
                "(then run this from the tree), or point --t5_path at a folder with config.json, the weights and "
                "the tokenizer."
            )
        import torch
        from transformers import T5EncoderModel, T5TokenizerFast

        self.torch = torch
        self.device = device
        try:
            self.tokenizer = T5TokenizerFast.from_pretrained(path)
            self.model = T5EncoderModel.from_pretrained(path, torch_dtype=getattr(torch, _DTYPES[dtype]))
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ScriptError(f"cannot load T5 from {path}: {first}. Download it again: "
                              f"`{_hints().installer('download --model t5-11b')}`.") from exc
        if self.model.config.d_model != T5_DIM:
            raise ScriptError(
                f"{path} has hidden size {self.model.config.d_model}, not {T5_DIM} (T5-XXL). Point --t5_path at "
                "google-t5/t5-11b: upstream's readers expect [n, 1024] embeddings."
            )
        self.model.to(device).eval()

    def encode(self, prompts: list[str], max_length: int = 512) -> list:
        torch = self.torch
        # Padding to max_length like upstream; rows past each prompt's length are dropped below.
        batch = self.tokenizer(prompts, return_tensors="pt", truncation=True, padding="max_length",
                               max_length=max_length)
        ids = batch.input_ids.to(self.device)
        mask = batch.attention_mask.to(self.device)
        with torch.inference_mode():
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        lengths = mask.sum(dim=1).tolist()
        hidden = hidden.float().cpu().numpy().astype("float16")
        return [hidden[i, : int(n)] for i, n in enumerate(lengths)]


def run(args) -> int:
    dataset = args.dataset_path
    if not os.path.isdir(dataset):
        raise ScriptError(f"dataset folder not found ({dataset}). Check --dataset_path (Cosmos-NeMo-Assets: "
                          f"`{_hints().installer('download --dataset cosmos-nemo-assets')}`).")
    folder, stems = media_stems(dataset, args.is_image)
    if not args.is_image:
        short = short_videos(folder, stems, args.num_frames)
        if short:
            print(
                f"warning: {len(short)} of {len(stems)} video(s) in {folder} have fewer than {args.num_frames} "
                f"frames, which the loader cannot sample (it needs at least --num_frames): "
                f"{', '.join(short)}. Replace them or train with a smaller num_frames.",
                file=sys.stderr,
                flush=True,
            )
    prompts = write_metas(dataset, stems, args.prompt)
    out_dir = os.path.join(dataset, "t5_xxl")
    os.makedirs(out_dir, exist_ok=True)
    todo = [s for s in stems if args.overwrite or not os.path.isfile(os.path.join(out_dir, s + ".pickle"))]
    if not todo:
        print(f"all {len(stems)} embeddings already in {out_dir} (use --overwrite to recompute)")
        return 0
    dev = device_layer()
    device = dev.get_device()
    print(f"loading T5 from {args.t5_path} on {device} ({args.dtype})", flush=True)
    encoder = T5Encoder(args.t5_path, device, args.dtype)
    unique = sorted({prompts[s] for s in todo})  # one forward pass per distinct prompt
    embeddings = {}
    for i in range(0, len(unique), 8):
        chunk = unique[i : i + 8]
        for text, emb in zip(chunk, encoder.encode(chunk, args.max_length)):
            embeddings[text] = emb
    for stem in todo:
        path = os.path.join(out_dir, stem + ".pickle")
        with open(path + ".tmp", "wb") as f:
            pickle.dump([embeddings[prompts[stem]]], f)
        os.replace(path + ".tmp", path)
    print(f"wrote {len(todo)} embedding(s) for {len(unique)} prompt(s) to {out_dir}")
    return 0


def main(argv: list[str] | None = None, default_dataset: str = "datasets/hdvila",
         default_prompt: str | None = None, description: str | None = None) -> int:
    parser = OneLineParser(description=description or __doc__.split("\n\n")[0])
    add_common_args(parser, default_dataset, default_prompt)
    args = parser.parse_args(argv)
    return run_main(run, args, interrupted="interrupted (keyboard). Run again: finished embeddings are kept.")


if __name__ == "__main__":
    sys.exit(main())
