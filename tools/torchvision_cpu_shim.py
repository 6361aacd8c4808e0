"""Test-environment shim: let a CUDA build of torchvision import beside a CPU-only torch.

Only installed by tools/setup_venv.sh, and only when `import torchvision` fails with
"operator torchvision::nms does not exist". That happens where PyPI serves only CUDA torchvision wheels
(x86_64) but the machine runs the CPU torch wheel: torchvision's compiled _C cannot load (it links
libtorch_cuda), and its fake-tensor registration of `nms` then aborts the whole import. Declaring the two op
schemas first lets the pure-Python parts (transforms, which is all Cosmos-Predict2's training path uses) import;
calling a compiled torchvision op still fails loudly ("no kernel"). Product code never depends on this.
"""

from __future__ import annotations

import importlib.abc
import sys

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)


class _DeclareTorchvisionOps(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != "torchvision":
            return None
        sys.meta_path.remove(self)  # once
        import torch

        global _LIB
        _LIB = torch.library.Library("torchvision", "FRAGMENT")
        for schema in _SCHEMAS:
            try:
                _LIB.define(schema)
            except RuntimeError:  # a working torchvision _C already defined it
                pass
        return None  # let the normal finders import torchvision


def install() -> None:
    if not any(isinstance(f, _DeclareTorchvisionOps) for f in sys.meta_path):
        sys.meta_path.insert(0, _DeclareTorchvisionOps())
