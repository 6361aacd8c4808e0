"""Turn a video dataset into an image dataset for text2image post-training: every --stride-th frame as a JPEG.

    python -m scripts.extract_images_from_videos --input_dataset_dir datasets/cosmos_nemo_assets \
        --output_dataset_dir datasets/cosmos_nemo_assets_images --stride 30

Reads INPUT/videos/*.mp4 and writes OUTPUT/images/<video stem>_<k:08d>.jpg (k = 0, 1, ... for frames 0, stride,
2*stride, ...), the names upstream's image reader and the T5 script (--is_image) pick up. Decoding is PyAV's
(wheels exist for x86_64 and aarch64, unlike decord); JPEGs are written by Pillow at quality --quality.
"""

from __future__ import annotations

import argparse
import os
import sys

if __package__ != "scripts":  # `python scripts/<name>.py`: the tree root makes `scripts` a package, as under -m
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scripts.user_errors import OneLineParser, UserError, run_main  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser(description="Extract every --stride-th frame of INPUT/videos/*.mp4 as JPEG.")
    parser.add_argument("--input_dataset_dir", required=True, help="dataset with videos/*.mp4")
    parser.add_argument("--output_dataset_dir", required=True, help="images go to <this>/images/")
    parser.add_argument("--stride", type=int, default=30, help="keep frames 0, stride, 2*stride, ... (default 30)")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality 1-95 (default 95)")
    args = parser.parse_args(argv)
    if args.stride < 1:
        parser.error("--stride must be >= 1")
    if not 1 <= args.quality <= 95:
        parser.error("--quality must be in 1..95")
    return args


def extract(video_path: str, out_dir: str, stride: int, quality: int) -> int:
    import av

    stem = os.path.splitext(os.path.basename(video_path))[0]
    saved = 0
    with av.open(video_path) as container:
        stream = container.streams.video[0]
        for index, frame in enumerate(container.decode(stream)):
            if index % stride:
                continue
            frame.to_image().save(os.path.join(out_dir, f"{stem}_{saved:08d}.jpg"), quality=quality)
            saved += 1
    return saved


def _hints():
    """scripts/hints.py: runnable commands for the hints (which installer, from where, with which Python)."""
    from scripts import hints

    return hints


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    videos_dir = os.path.join(args.input_dataset_dir, "videos")
    if not os.path.isdir(videos_dir):
        raise UserError(f"no videos/ folder in the input dataset ({videos_dir}). Check --input_dataset_dir, or "
                        f"download the dataset: `{_hints().installer('download --dataset cosmos-nemo-assets')}`.")
    videos = sorted(f for f in os.listdir(videos_dir) if f.endswith(".mp4"))
    if not videos:
        raise UserError(f"no *.mp4 files in {videos_dir}. Put the videos there first.")
    out_dir = os.path.join(args.output_dataset_dir, "images")
    os.makedirs(out_dir, exist_ok=True)
    total = 0
    for name in videos:
        path = os.path.join(videos_dir, name)
        try:
            count = extract(path, out_dir, args.stride, args.quality)
        except Exception as exc:  # a corrupt file: name it, keep what was written
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"cannot decode {path}: {first}. Replace or remove that video and run again.") from None
        print(f"{name}: {count} frame(s)")
        total += count
    print(f"Total frames saved: {total} in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
