#!/bin/bash
# Fill .gpu_infer/ (git-ignored; carry it to the GPU machine) with what bench/device/real_size_scripts.py needs there:
#   .gpu_infer/cosmos_predict2-1.0.9.tar.gz   upstream sdist (the installer builds the tree from it on the device)
#   .gpu_infer/whl/    cp312 wheels: the tested diffusers/transformers pair (0.35.1 / 4.56.2 with tokenizers 0.22.2,
#                      huggingface_hub 0.35.3, peft 0.17.1: GPU images often ship transformers 5, which diffusers
#                      0.35 cannot import), PyAV (the scripts' video I/O), unidiff (the installer)
#   .gpu_infer/data/   2 videos of 94 frames at 704x1280 (made like bench/device/prepare_gpu_carry.sh's)
# Usage (checkout root, CPU machine with the project venv and PyPI access; about 55 MB):
#   bash bench/device/prepare_gpu_infer_carry.sh [SDIST] [PYTHON]
# then, on the GPU machine (carry [".gpu_infer"]):
#   python3 -m pip install -q --no-index --no-deps --target /tmp/si .gpu_infer/whl/*.whl && export PYTHONPATH=/tmp/si
#   python3 -m installer apply --source .gpu_infer/cosmos_predict2-1.0.9.tar.gz --target /tmp/ti
#   python3 bench/device/real_size_scripts.py /tmp/ti --v2w-steps 3
set -euo pipefail
# default: where `python -m installer apply` downloads the sdist (installer/fetch.py cache_dir)
SDIST=${1:-${COSMOS_OVERLAY_CACHE:-$HOME/.cache/cosmos-predict2-overlay}/cosmos_predict2-1.0.9.tar.gz}
PY=${2:-python}
case $PY in /*) ;; */*) PY="$PWD/$PY" ;; esac  # a relative path (.venv/bin/python) must survive the cd into the tree
[ -f "$SDIST" ] || { echo "error: sdist $SDIST not found (prepare_gpu_infer_carry.sh). Pass its path as the first argument, or run python -m installer apply once (it downloads it there)." >&2; exit 2; }
mkdir -p .gpu_infer/whl
cp "$SDIST" .gpu_infer/
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu_infer/whl \
  diffusers==0.35.1 transformers==4.56.2 tokenizers==0.22.2 huggingface-hub==0.35.3 peft==0.17.1 av==19.0.2 unidiff==0.7.5
TREE=$(mktemp -d)/tree
$PY -m installer apply --source "$SDIST" --target "$TREE" | tail -1
(cd "$TREE" && $PY -m scripts.make_smoke_dataset --root "$OLDPWD/.gpu_infer/data" --frames 94 --size 704 --width 1280 --skip-vae)
rm -rf .gpu_infer/data/datasets/smoke/cosmos_nemo_assets_images
du -sh .gpu_infer
