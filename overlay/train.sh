#!/usr/bin/env bash
# Train one Cosmos-Predict2 experiment on NPU, CUDA or CPU:
#   bash train.sh --EXP=<experiment> --nproc_per_node=8 --nnodes=1 --node_rank=0 \
#        --master_addr=127.0.0.1 [--master_port=auto|N] [--hccl_if_ip=<ip>] [--fresh | --resume[=CHECKPOINT]] \
#        [--dataset=DIR] [--tree=DIR] [--dry-run] [-- key=value ...]
# `bash train.sh --help` lists flags and experiments. Validation, device detection and the environment are decided
# by scripts/train_preflight.py (testable python); this file only runs what it planned, logs, and reports.
set -euo pipefail

# HERE: where train.sh was run from (a symlink not followed: the tree root, or this repository's checkout, whose
# top-level train.sh is a symlink to overlay/train.sh). OWN: the directory of the file itself (symlinks followed).
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OWN="${BASH_SOURCE[0]}"
while [[ -L "$OWN" ]]; do
    link="$(readlink "$OWN")"
    [[ "$link" == /* ]] && OWN="$link" || OWN="$(dirname "$OWN")/$link"
done
OWN="$(cd "$(dirname "$OWN")" && pwd)"
TREE_ARG=""
prev=""
for arg in "$@"; do
    [[ "$arg" == "--" ]] && break
    [[ "$arg" == --tree=* ]] && TREE_ARG="${arg#--tree=}"
    [[ "$prev" == "--tree" ]] && TREE_ARG="$arg"
    prev="$arg"
done
# Installed into a tree root by `apply`: scripts/ is beside us. In the overlay repo checkout: beside the file the
# symlink points to (overlay/scripts/). A copy of train.sh elsewhere finds them through --tree=DIR.
if [[ -n "$TREE_ARG" && -f "$TREE_ARG/scripts/train_preflight.py" ]]; then
    SCRIPTS="$(cd "$TREE_ARG/scripts" && pwd)"
elif [[ -f "$HERE/scripts/train_preflight.py" ]]; then
    SCRIPTS="$HERE/scripts"
elif [[ -f "$OWN/scripts/train_preflight.py" ]]; then
    SCRIPTS="$OWN/scripts"
else
    echo "error: train.sh is not inside a patched cosmos-predict2 tree (no scripts/train_preflight.py beside" \
         "$HERE/train.sh${TREE_ARG:+ or in --tree=$TREE_ARG}). Run the train.sh that \`python -m installer apply\`" \
         "installed in the tree, or pass --tree=<patched tree>." >&2
    exit 2
fi
PYTHON="${PYTHON:-$(command -v python || command -v python3 || true)}"
if [[ -z "$PYTHON" ]]; then
    echo "error: no python interpreter found (PATH). Activate the environment that has torch, or set PYTHON=." >&2
    exit 2
fi

for arg in "$@"; do
    [[ "$arg" == "--" ]] && break
    if [[ "$arg" == "--help" || "$arg" == "-h" ]]; then
        exec "$PYTHON" "$SCRIPTS/train_preflight.py" --help
    fi
done

PLAN="$(mktemp "${TMPDIR:-/tmp}/train-plan.XXXXXX")"
trap 'rm -f "$PLAN"' EXIT
# --tree defaults to this directory; a --tree the user passes comes later and wins.
"$PYTHON" "$SCRIPTS/train_preflight.py" --plan-file="$PLAN" --tree="$HERE" "$@"
# shellcheck source=/dev/null
source "$PLAN"   # exports the device environment; sets TRAIN_CMD, TRAIN_LOG, TRAIN_METRICS, TRAIN_REPORT, ...
if [[ "$TRAIN_DRY_RUN" == 1 ]]; then
    exit 0
fi

cd "$TRAIN_TREE"
if ! mkdir -p "$(dirname "$TRAIN_LOG")" 2>/dev/null; then
    echo "error: cannot create the log directory $(dirname "$TRAIN_LOG") (IMAGINAIRE_OUTPUT_ROOT). Set" \
         "IMAGINAIRE_OUTPUT_ROOT to a writable directory." >&2
    exit 2
fi
set +e
# The log opens with what ran (command, environment set here, notes), then torchrun's output.
{ printf '%s' "$TRAIN_HEADER"; "${TRAIN_CMD[@]}"; } 2>&1 | tee "$TRAIN_LOG"
rc=$?   # pipefail: torchrun's status (last in the group) unless tee itself failed
set -e

# The report never changes the outcome: a failed run stays failed, a good run without metrics stays good.
# Global rank 0 writes the metrics, so only node 0 has something to report.
if [[ "$TRAIN_NODE_RANK" == 0 ]]; then
    "$TRAIN_PYTHON" "$SCRIPTS/train_report.py" --metrics="$TRAIN_METRICS" --out="$TRAIN_REPORT" \
        --log="$TRAIN_LOG" --training-rc="$rc" --resumed-at="$TRAIN_RESUME_ITERATION" || true
fi
if [[ $rc -ne 0 ]]; then
    echo "error: training exited with status $rc ($TRAIN_LOG). Read the first traceback in the log." >&2
fi
exit $rc
