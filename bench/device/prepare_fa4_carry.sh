#!/bin/bash
# FlashAttention-4 for the GPU machine (optional flash_cute attention backend), cp312 x86_64 wheels:
#   .fa4a/cu13.tar.xz   the CuTe DSL's cu13 libraries (nvidia-cutlass-dsl-libs-cu13, 92 MB as a wheel) unpacked and
#                       re-packed with xz -9 (61 MiB): a device call carries at most 64 MiB, so these go alone
#   .gpu/fa4whl/        flash-attn-4 and its other wheels (10 MB), carried with .gpu
# Usage (checkout root, CPU machine with PyPI access): bash bench/device/prepare_fa4_carry.sh [PYTHON]
# then: grep -q '^/.fa4a/' .git/info/exclude || echo /.fa4a/ >> .git/info/exclude   (never commit it)
# GPU: call 1 carry [".fa4a"]: `bash bench/device/gpu_suite.sh fa4_unpack`; call 2 (same warm machine) carry
# [".gpu"]: `bash bench/device/gpu_suite.sh fa4 setup ...` with COSMOS_ATTN_BACKEND=flash_cute or an *_fa4 variant.
set -euo pipefail
PY=${1:-python}
P="--no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
   --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64"
mkdir -p .fa4a .gpu/fa4whl
W=$(mktemp -d)
$PY -m pip download -q $P -d "$W" nvidia-cutlass-dsl-libs-cu13==4.8.1
$PY -m pip download -q $P -d .gpu/fa4whl flash-attn-4==4.0.0b36 nvidia-cutlass-dsl==4.8.1 \
  nvidia-cutlass-dsl-libs-base==4.8.1 nvidia-cutlass-dsl-libs-core==4.8.1 quack-kernels==0.6.5 \
  apache-tvm-ffi==0.1.15.post2 torch-c-dlpack-ext==0.1.5
mkdir "$W/x" && (cd "$W/x" && unzip -q ../nvidia_cutlass_dsl_libs_cu13-*.whl)
tar cf - -C "$W/x" . | xz -T2 -9 > .fa4a/cu13.tar.xz
rm -rf "$W"
du -sh .fa4a .gpu/fa4whl
