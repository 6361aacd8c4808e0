"""A trainer callback for tests/training/test_gc_policy.py: at iterations 2 and 4, with the garbage-collection policy
holding automatic collection off, collect with DEBUG_SAVEALL and print what the step's reference cycles held."""

import gc
import json

import torch

from imaginaire.utils.callback import Callback


class CycleProbe(Callback):
    def on_training_step_end(self, model, data_batch, output_batch, loss, iteration=0):
        if iteration not in (2, 4):
            return
        enabled = gc.isenabled()
        gc.set_debug(gc.DEBUG_SAVEALL)
        found = gc.collect()
        gc.set_debug(0)
        tensors = [o for o in gc.garbage if isinstance(o, torch.Tensor)]
        row = dict(iteration=iteration, gc_enabled=enabled, unreachable=found, tensors=len(tensors),
                   tensor_bytes=sum(t.untyped_storage().nbytes() for t in tensors))
        gc.garbage.clear()
        print("GC_CYCLE_PROBE " + json.dumps(row), flush=True)
