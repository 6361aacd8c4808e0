#!/usr/bin/env bash
# The main job on a fresh machine, CPU only: set up the venv, apply the series to the real upstream bytes (PyPI
# sdist, verified against the pinned commit), generate the smoke data, and train the tiny 2B Video2World
# experiment through train.sh -> torchrun -> upstream's trainer; train.sh prints the report at the end.
#   bash tools/smoke_run.sh [TARGET_DIR]        (default: ./cosmos-predict2)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${1:-$here/cosmos-predict2}"
bash "$here/tools/setup_venv.sh"
py="$here/.venv/bin/python"
(cd "$here" && "$py" -m installer apply --target "$target")
cd "$target"
[ -f checkpoints/smoke/tokenizer.pth ] || "$py" -m scripts.make_smoke_dataset
PYTHON="$py" bash train.sh --EXP=predict2_video2world_training_2b_cosmos_nemo_assets_smoke --nproc_per_node=1
