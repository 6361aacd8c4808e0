#!/bin/bash
# Fill .gpu/ (git-ignored; carry it to the GPU machine) with what bench/device/gpu_suite.sh needs there:
#   .gpu/cosmos_predict2-1.0.9.tar.gz   upstream sdist (the installer builds the tree from it on the device)
#   .gpu/whl/                           cp312 manylinux wheels of the training path's packages the device image lacks
#   .gpu/data/datasets/smoke/...        2 videos of 94 frames at 704x1280 + 2 images (real-size synthetic data)
#   .gpu/smoke/datasets/smoke/...       the default tiny smoke data
#   .gpu/parity_init.pt, parity_cpu.json  CPU side of the cross-device parity run
# Usage (checkout root, CPU machine with the project venv and PyPI access):
#   bash bench/device/prepare_gpu_carry.sh [SDIST] [PYTHON]
# then: grep -q '^/.gpu/' .git/info/exclude || echo /.gpu/ >> .git/info/exclude   (never commit .gpu)
set -euo pipefail
# default: where `python -m installer apply` downloads the sdist (installer/fetch.py cache_dir)
SDIST=${1:-${COSMOS_OVERLAY_CACHE:-$HOME/.cache/cosmos-predict2-overlay}/cosmos_predict2-1.0.9.tar.gz}
PY=${2:-python}
case $PY in /*) ;; */*) PY="$PWD/$PY" ;; esac  # a relative path (.venv/bin/python) must survive the cd into the tree
[ -f "$SDIST" ] || { echo "error: sdist $SDIST not found (prepare_gpu_carry.sh). Pass its path as the first argument, or run python -m installer apply once (it downloads it there)." >&2; exit 2; }
mkdir -p .gpu/whl
cp "$SDIST" .gpu/
P="--no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
   --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64
   --platform manylinux2010_x86_64 -d .gpu/whl"
# Versions as in requirements/cpu-ci.txt where pinned there; wandb (imported by upstream's grad_clip callback)
# needs pydantic, sentry-sdk, GitPython and opentelemetry, which the image lacks.
$PY -m pip download -q $P braceexpand==0.1.7 decord==0.6.0 diffusers==0.35.1 hydra-core==1.3.2 loguru==0.7.2 \
  megatron-core==0.16.1 omegaconf==2.3.0 qwen-vl-utils==0.0.11 termcolor==2.5.0 webdataset==0.2.111 \
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 unidiff==0.7.5 \
  yacs==0.1.8 wandb==0.31.0 sentry-sdk==2.75.0 GitPython==3.1.45 gitdb==4.0.12 smmap==5.0.3 platformdirs==4.14.8 \
  opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2 opentelemetry-semantic-conventions==0.66b2 \
  opentelemetry-exporter-otlp-proto-http==1.45.2 opentelemetry-exporter-otlp-proto-common==1.45.2 \
  opentelemetry-proto==1.45.2 opentelemetry-exporter-http-transport==0.66b2 \
  opentelemetry-exporter-otlp-common==0.66b2 importlib-metadata==10.2.0
# sdist-only, pure Python: build the wheels here
$PY -m pip wheel -q --no-deps -w .gpu/whl antlr4-python3-runtime==4.9.3 fvcore==0.1.5.post20221221 iopath==0.1.10
TREE=$(mktemp -d)/tree
$PY -m installer apply --source "$SDIST" --target "$TREE" | tail -1
(cd "$TREE" && $PY -m scripts.make_smoke_dataset --root "$OLDPWD/.gpu/data" --frames 94 --size 704 --width 1280 --skip-vae \
   && $PY -m scripts.make_smoke_dataset --root "$OLDPWD/.gpu/smoke" --skip-vae \
   && COSMOS_DEVICE=cpu $PY "$OLDPWD/bench/parity/parity_dit.py" --init "$OLDPWD/.gpu/parity_init.pt" --out "$OLDPWD/.gpu/parity_cpu.json")
du -sh .gpu
