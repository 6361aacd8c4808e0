"""DiT blocks compiled whole: one torch.compile graph per block forward (and its backward), for launch-bound steps.

The Text2Image 2B step (4080 tokens) is bound by the host's launch rate: 178 ms of kernels in a 0.63 s step on an
H200 (BENCHMARKS.md 3f), so every op the host dispatches is step time. Compiling each block turns its ~100 forward
and ~200 backward dispatches, and activation checkpointing's Python dispatch mode, into a few graph launches: the
bare step went from 0.68 to 0.18 s (10 -> 39 % MFU) at the same peak memory (BENCHMARKS.md 3g).

`compile_blocks(blocks)` sets each block's `forward` (the CheckpointWrapper's when SAC wraps the block: the
checkpoint, its selective policy and the block are traced together, the way torchtitan compiles AC-wrapped blocks)
to one shared compiled function called with the block (CompiledForward):
- module names, parameters and state dicts are unchanged (checkpoints load either way);
- FSDP2's hooks run eagerly around the compiled forward (they are dynamo-disabled), as with per-block compile in
  torchtitan;
- one function object for all blocks, so the 28 blocks share one compiled graph instead of each counting against
  dynamo's recompile limit; copy.deepcopy rebinds it to the copy;
- if compiling fails, the blocks run eagerly (one warning), like the small compiled kernels (device.maybe_compile).
Inside the graph, portable RoPE/RMSNorm/adaLN trace their eager expressions (device.compiling()). Shapes are static
(dynamic=False): a new input shape compiles once more, and past dynamo's cache limit (8) new shapes run eagerly.

Enabled by `COSMOS_COMPILE_BLOCKS=1` on CUDA only (train.sh sets it for the Text2Image experiments, see
scripts/train_plan.py); NPU and CPU keep the eager blocks (torch_npu's graph mode is a different compiler, and on CPU
the compile costs more than the tiny smoke step). `COSMOS_DISABLE_COMPILE=1` wins over it.
"""

from __future__ import annotations

import torch

from . import device

ENV = "COSMOS_COMPILE_BLOCKS"


def requested() -> bool:
    """COSMOS_COMPILE_BLOCKS as a switch (device.env_flag: a value that is not one is a one-line error)."""
    return device.env_flag(ENV)


def enabled() -> bool:
    """Whether blocks are compiled on this host: requested, and torch.compile allowed on this device (CUDA)."""
    return requested() and device.compile_enabled()


class CompiledForward:
    """A block's forward: the class's shared compiled forward called with the block. A failure of the first
    compiled call (no triton, an unsupported compiler) switches every block of the class to eager, once, with a
    warning, as device.maybe_compile does for the small kernels; after one compiled call succeeded, errors are the
    model's and propagate. copy.deepcopy copies the block reference through the memo: the copy calls itself."""

    def __init__(self, block: torch.nn.Module, compiled, eager, state: dict):
        self.block, self.compiled, self.eager, self.state = block, compiled, eager, state

    def __call__(self, *args, **kwargs):
        state = self.state
        if not state["failed"]:
            try:
                out = self.compiled(self.block, *args, **kwargs)
                state["ok"] = True
                return out
            except device._CONTROL_FLOW:
                raise
            except Exception as exc:
                if state["ok"]:
                    raise
                state["failed"] = True
                print(f"[cosmos-portable] warning: torch.compile of the {type(self.block).__name__} blocks failed "
                      f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); using eager blocks. "
                      f"Set {ENV}=0 to skip compiling.", flush=True)
        return self.eager(self.block, *args, **kwargs)


def compile_blocks(blocks, force: bool = False, backend: str = "inductor") -> int:
    """Compile the forward of every module in `blocks` (an nn.ModuleList/ModuleDict of DiT blocks) in place;
    returns how many were compiled (0 when not enabled and not `force`). Blocks of one class share one graph.
    `backend` is torch.compile's (tests use "aot_eager": dynamo and AOT autograd without code generation)."""
    if not (force or enabled()):
        return 0
    shared: dict = {}
    n = 0
    for block in blocks.values() if isinstance(blocks, torch.nn.ModuleDict) else blocks:
        cls = type(block)
        if cls not in shared:
            shared[cls] = (torch.compile(cls.forward, dynamic=False, backend=backend), cls.forward,
                           {"failed": False, "ok": False})
        block.forward = CompiledForward(block, *shared[cls])
        n += 1
    return n


def is_compiled(block: torch.nn.Module) -> bool:
    fwd = block.__dict__.get("forward")
    return isinstance(fwd, CompiledForward) and fwd.block is block and not fwd.state["failed"]


__all__ = ["ENV", "CompiledForward", "compile_blocks", "enabled", "is_compiled", "requested"]
