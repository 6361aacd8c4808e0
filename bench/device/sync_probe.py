"""Where a training step makes the host wait for the device: torch's CUDA sync debug mode inside the trainer.

A trainer callback. From iteration $SYNC_PROBE_FROM (default 6: after the start-up steps, whose synchronizations
upstream means) it sets `torch.cuda.set_sync_debug_mode("warn")`, so every op that synchronizes the stream (`.item()`,
`.tolist()`, a copy from pageable host memory, `nonzero`, ...) warns, and records each warning with the Python frames
of the patched tree (and of torch.utils / torch.optim) that led to it, per iteration (numbered as in metrics.jsonl;
the data loading between two steps is billed to the step that ended). After every step it rewrites
$SYNC_PROBE_OUT (JSON: {"from": N, "iterations": {it: [[site, count], ...]}}), so the file is complete when the run
is stopped after its last metrics line. Event waits (what late reads use) are not synchronizing ops: not counted.

Register (gpu_suite.sh stage t2i_syncs):
    PYTHONPATH=bench/device:$PYTHONPATH bash train.sh ... -- ++trainer.callbacks.sync_probe={_target_:sync_probe.SyncProbe}
Then `python bench/device/sync_probe.py OUT.json` prints one JSON line per site: iterations seen, count per step.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import traceback
import warnings

try:
    from imaginaire.utils.callback import Callback as _Callback
except ImportError:  # the summary side runs outside the tree
    _Callback = object

MARK = "synchronizing CUDA operation"


def _on_cuda() -> bool:
    from cosmos_predict2.portable import device  # the one place that decides the device

    return device.is_cuda()


def _site(stack, root: str) -> str:
    """The innermost frames of the tree (or torch's optimizer / utils) that led to the warning, innermost last."""
    keep = []
    for fr in stack:
        f = fr.filename
        if f.startswith(root) or "/torch/optim/" in f or "/torch/utils/" in f:
            rel = os.path.relpath(f, root) if f.startswith(root) else "torch/" + f.split("/torch/", 1)[1]
            keep.append(f"{rel}:{fr.lineno}:{fr.name}")
    return " <- ".join(reversed(keep[-3:])) or "(outside the tree)"


class SyncProbe(_Callback):
    def __init__(self) -> None:
        super().__init__()
        self.start = int(os.environ.get("SYNC_PROBE_FROM", "6"))
        self.out = os.environ.get("SYNC_PROBE_OUT", "sync_probe.json")
        self.root = os.getcwd() + os.sep
        self.iteration = None
        self.sites: dict = collections.defaultdict(collections.Counter)
        self._show = None

    def _showwarning(self, message, category, filename, lineno, file=None, line=None):
        if MARK in str(message) and self.iteration is not None:
            self.sites[self.iteration][_site(traceback.extract_stack()[:-1], self.root)] += 1
        elif self._show is not None:
            self._show(message, category, filename, lineno, file, line)

    def on_training_step_start(self, model, data_batch, iteration: int = 0) -> None:
        import torch

        self.iteration = iteration + 1  # the number it ends with (metrics' numbering); data loading before this
        if self.iteration == self.start and _on_cuda():  # hook is billed to the step that ended
            self._show = warnings.showwarning
            warnings.showwarning = self._showwarning
            warnings.filterwarnings("always", message=".*" + MARK)
            torch.cuda.set_sync_debug_mode("warn")

    def on_training_step_end(self, model, data_batch, output_batch, loss, iteration: int = 0) -> None:
        if iteration < self.start:
            return
        with open(self.out, "w") as f:
            json.dump({"from": self.start, "iterations": {str(k): sorted(v.items()) for k, v in self.sites.items()}}, f)

    def on_train_end(self, model, iteration: int = 0) -> None:
        import torch

        if _on_cuda():
            torch.cuda.set_sync_debug_mode("default")


def summary(path: str) -> list[dict]:
    """One row per site: the iterations it synchronized in and how often per step."""
    data = json.load(open(path))
    per = collections.defaultdict(dict)
    for it, sites in data["iterations"].items():
        for site, n in sites:
            per[site][int(it)] = n
    rows = [dict(bench="sync_probe", site=s, iterations=sorted(v), per_step=[v[i] for i in sorted(v)]) for s, v in per.items()]
    return sorted(rows, key=lambda r: -len(r["iterations"]))


if __name__ == "__main__":
    for row in summary(sys.argv[1]):
        print(json.dumps(row))
