#!/usr/bin/env bash
# The main job on a fresh machine, CPU only: set up the venv, apply the series to the real upstream bytes (PyPI
# sdist, verified against the pinned commit), generate the smoke data, and train the tiny 2B Video2World
# experiment through train.sh -> torchrun -> upstream's trainer; train.sh prints the report at the end.
#   bash tools/smoke_run.sh [TARGET_DIR] [train.sh flags ...] [-- key=value ...]     (default: ./cosmos-predict2)
# Everything after the target goes to train.sh as it is, e.g.
#   bash tools/smoke_run.sh /tmp/cosmos --fresh --master_port=29600 -- trainer.max_iter=10
# SMOKE_EXP=<experiment> trains another one (default the 2B Video2World smoke experiment); SMOKE_SETUP_VENV=0 skips
# tools/setup_venv.sh when .venv is already set up.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="$here/cosmos-predict2"
if [[ $# -gt 0 && "$1" != -* ]]; then
    target="$1"
    shift
fi
if [[ "${SMOKE_SETUP_VENV:-1}" != 0 ]]; then
    bash "$here/tools/setup_venv.sh"
fi
py="$here/.venv/bin/python"
(cd "$here" && "$py" -m installer apply --target "$target")
cd "$target"
[ -f checkpoints/smoke/tokenizer.pth ] || "$py" -m scripts.make_smoke_dataset
PYTHON="$py" bash train.sh --EXP="${SMOKE_EXP:-predict2_video2world_training_2b_cosmos_nemo_assets_smoke}" \
    --nproc_per_node=1 "$@"
