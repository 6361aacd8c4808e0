"""Cosmos-Predict2 Video2World inference through Hugging Face diffusers, on Ascend NPU, CUDA or CPU.

    python -m scripts.hf_video2world outputs/v2w --prompt "A teal robot picks up a cup." --image first_frame.jpg
        [--image clip.mp4 | --video clip.mp4] [--num_conditional_frames 5]
        [--model nvidia/Cosmos-Predict2-2B-Video2World | <local diffusers folder>]
        [--height 704 --width 1280 --frames 93 --fps 16] [--steps 35 --guidance 7 --seed 42 --dtype bfloat16]
        [--negative_prompt TEXT|FILE] [--use_safety_checker] [--random_weights | --tiny] [-v]

Writes OUTPUT/output.mp4 (H.264 through PyAV, no ffmpeg binary needed). Upstream's flags are kept (output,
--prompt, --negative_prompt, --image, --video, --model, --revision, -v, --seed, --steps, --guidance, --height,
--width, --frames, --fps). --image takes an image or a video file; a video conditions on its last
--num_conditional_frames frames (default 5; diffusers would otherwise use every frame, and a clip as long as
--frames would leave nothing to generate). --frames must be 4k+1 (the VAE compresses time by 4). With --tiny (the
offline demo, see scripts/hf_text2image.py) and no --image/--video, a generated colour gradient is the condition.

Device selection, attention on NPU, the no-op and CPU-pinned safety checkers, --random_weights and the tested
diffusers/transformers versions are described in scripts/hf_text2image.py; the code both scripts share is
scripts/inference_common.py.
"""

from __future__ import annotations

import argparse
import os
import sys

if __package__ != "scripts":  # `python scripts/<name>.py`: the tree root makes `scripts` a package, as under -m
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from scripts import inference_common as common  # noqa: E402

ScriptError = common.ScriptError


def load_frames(path: str, keep_last: int):
    """RGB PIL frames of a video (its last `keep_last`), decoded with PyAV."""
    import av

    try:
        with av.open(path) as container:
            frames = [f.to_image().convert("RGB") for f in container.decode(container.streams.video[0])]
    except Exception as exc:  # not a video, corrupt file
        raise ScriptError(f"cannot decode the conditioning video {path}: {common._first_line(exc)}. Pass an mp4 or "
                          "an image.") from exc
    if not frames:
        raise ScriptError(f"the conditioning video {path} has no frames. Pass another video or an image.")
    return frames[-keep_last:]


def load_condition(args):
    """(image, video) for the pipeline: exactly one is set."""
    from PIL import Image

    sources = [p for p in (args.image, args.video) if p]
    if not sources and getattr(args, "tiny", False):
        return gradient_image(args.height, args.width), None
    if len(sources) != 1:
        raise ScriptError("pass exactly one conditioning input: --image IMAGE_OR_VIDEO or --video VIDEO "
                          f"(got {len(sources)}).")
    path = sources[0]
    if not os.path.isfile(path):
        raise ScriptError(f"conditioning file not found ({path}). Check --image/--video.")
    if args.video or path.lower().endswith(common.VIDEO_EXTS):
        return None, load_frames(path, args.num_conditional_frames)
    try:
        with Image.open(path) as im:
            return im.convert("RGB"), None
    except Exception as exc:
        raise ScriptError(f"cannot read the conditioning image {path}: {common._first_line(exc)}. Pass a JPEG/PNG "
                          "or a video.") from exc


def gradient_image(height: int, width: int):
    """A smooth colour gradient: the conditioning image of the --tiny demo when none is given."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([255 * x / max(width - 1, 1), 255 * y / max(height - 1, 1), np.full_like(x, 128)], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8))


def write_mp4(frames, path: str, fps: int) -> None:
    """PIL frames -> H.264 mp4 (mpeg4 where the PyAV build lacks libx264)."""
    import av
    import numpy as np

    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    tmp = path + ".part.mp4"
    with av.open(tmp, mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames[0].size
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "18"}
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.asarray(image.convert("RGB")), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Cosmos-Predict2 Video2World inference with diffusers.")
    common.add_common_args(parser, "nvidia/Cosmos-Predict2-2B-Video2World", 704, 1280)
    parser.add_argument("--image", help="conditioning image, or a video (its last --num_conditional_frames frames)")
    parser.add_argument("--video", help="conditioning video (upstream's flag; same as --image VIDEO)")
    parser.add_argument("--num_conditional_frames", type=int, default=5,
                        help="frames taken from the end of a conditioning video (default 5)")
    parser.add_argument("--frames", type=int, default=93, help="frames to generate, 4k+1 (default 93)")
    parser.add_argument("--fps", type=int, default=16, help="frame rate given to the model and the mp4 (default 16)")
    args = parser.parse_args(argv)
    try:
        common.apply_tiny_defaults(parser, args)
        if args.frames < 1 or (args.frames - 1) % 4:
            raise ScriptError(f"--frames {args.frames} must be 4k+1 (e.g. 93, 121): the VAE compresses time by 4.")
        if args.num_conditional_frames < 1:
            raise ScriptError("--num_conditional_frames must be >= 1.")
        if args.fps < 1:
            raise ScriptError(f"--fps {args.fps} must be >= 1.")
        image, video = load_condition(args)
        prompt, negative, dev, device, checker = common.prepare(args)
        import diffusers

        pipe = common.load_pipeline(diffusers.Cosmos2VideoToWorldPipeline, args, device, checker)
        attention = common.select_attention(pipe, dev.device_type())
        if args.verbose:
            common.print_settings(args, prompt, negative, device, attention)
            what = "generated gradient image" if image is not None and not (args.image or args.video) else "image"
            print(f"Conditioning: {what if image is not None else f'{len(video)} video frame(s)'}; "
                  f"{args.frames} frames at {args.fps} fps, {args.height}x{args.width}", flush=True)
        os.makedirs(args.output, exist_ok=True)
        print("Generating video...", flush=True)
        frames = common.run_pipeline(lambda: pipe(
            image=image, video=video, num_frames=args.frames, fps=args.fps,
            **common.sampling_kwargs(args, prompt, negative),
        ).frames[0], "video2world", dev, args.verbose)
        path = os.path.join(args.output, "output.mp4")
        write_mp4(frames, path, args.fps)
        print(f"Saved video to: {path}")
        return 0
    except ScriptError as exc:
        common.die(str(exc))
    except KeyboardInterrupt:
        common.die("interrupted (keyboard). Nothing was written.")
    return 1


if __name__ == "__main__":
    sys.exit(main())
