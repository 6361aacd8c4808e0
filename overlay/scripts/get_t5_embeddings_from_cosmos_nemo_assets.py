"""T5-XXL embeddings for Cosmos-NeMo-Assets: one caption for every video (or every extracted image).

    python -m scripts.get_t5_embeddings_from_cosmos_nemo_assets --dataset_path datasets/cosmos_nemo_assets
    python -m scripts.get_t5_embeddings_from_cosmos_nemo_assets --dataset_path datasets/cosmos_nemo_assets_images \
        --is_image

The dataset ships videos only, so the prompt is written to metas/<stem>.txt for each video/image (existing files
are kept) and embedded once. The default prompt is the seed's caption, "A video of sks teal robot." (with
--is_image: "An image of sks teal robot."); --prompt replaces it. Output format, flags (--t5_path/--cache_dir,
--dtype, --num_frames, --overwrite) and the too-few-frames warning are those of scripts/get_t5_embeddings.py, which
does the work.
"""

from __future__ import annotations

import os
import sys

if __package__ != "scripts":  # `python scripts/<name>.py`: the tree root makes `scripts` a package, as under -m
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from scripts.get_t5_embeddings import main as _main  # noqa: E402

DEFAULT_DATASET = "datasets/cosmos_nemo_assets"
DEFAULT_PROMPT = "A video of sks teal robot."
IMAGE_PROMPT = "An image of sks teal robot."


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    prompt = IMAGE_PROMPT if "--is_image" in argv else DEFAULT_PROMPT
    return _main(argv, default_dataset=DEFAULT_DATASET, default_prompt=prompt,
                 description="Compute T5-XXL embeddings for Cosmos-NeMo-Assets (one prompt for all files).")


if __name__ == "__main__":
    sys.exit(main())
