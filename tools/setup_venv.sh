#!/usr/bin/env bash
# Create the CPU virtual environment used by the smoke run and the tests.
#   bash tools/setup_venv.sh [VENV_DIR]      (default: .venv next to this repository's setup.py)
# Python 3.11 + torch 2.13.0 CPU (+ torchvision 0.28.0 pinned: unpinned, pip pulls a multi-GB CUDA torch),
# upstream's training dependencies and the installer's (run it from the checkout: python -m installer).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$here/.venv}"
py="${PYTHON:-python3.11}"
if ! command -v "$py" >/dev/null 2>&1; then
  echo "error: $py not found (tools/setup_venv.sh). Install Python 3.11 or set PYTHON=/path/to/python3.10-or-3.11." >&2
  exit 1
fi
say() { echo "setup_venv: $*" >&2; }
if [ ! -x "$venv/bin/python" ]; then
  say "creating $venv with $("$py" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
  "$py" -m venv "$venv"
else
  say "using the existing $venv"
fi
say "upgrading pip"
"$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
n="$(grep -cEv '^[[:space:]]*(#|$)' "$here/requirements/cpu-ci.txt")"
say "installing $n pinned packages from requirements/cpu-ci.txt (torch CPU, upstream's training stack, diffusers," \
    "the installer's and the tests'; the first run downloads about 2 GB and takes minutes)"
"$venv/bin/python" -m pip install -q -r "$here/requirements/cpu-ci.txt"
say "checking that torchvision imports beside the CPU torch"
# torchvision from PyPI is a CUDA build; beside the CPU torch its compiled ops cannot load and its import aborts.
if ! tv_err="$("$venv/bin/python" -c "import torchvision" 2>&1)"; then
  if [[ "$tv_err" == *"operator torchvision::nms does not exist"* ]]; then
    site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    cp "$here/tools/torchvision_cpu_shim.py" "$site/_cosmos_torchvision_cpu_shim.py"
    echo "import _cosmos_torchvision_cpu_shim as s; s.install()" > "$site/_cosmos_torchvision_cpu_shim.pth"
    echo "note: torchvision is a CUDA build beside a CPU torch; installed tools/torchvision_cpu_shim.py into $venv" >&2
  fi
  "$venv/bin/python" -c "import torchvision" || { echo "error: torchvision does not import in $venv; see the message above." >&2; exit 1; }
fi
echo "$venv ready: $("$venv/bin/python" -c 'import sys, torch; print(f"Python {sys.version.split()[0]}, torch {torch.__version__}")')"
