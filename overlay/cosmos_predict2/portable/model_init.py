"""Materialising DiTs that upstream builds on the meta device.

Upstream builds the DiT under `init_weights_on_device()` (parameters on meta) and fills it from a checkpoint with
`load_state_dict(assign=True)`. Two things break from there:
- random init (`dit_path=""`) leaves every parameter on meta, so training cannot start;
- the EMA copy is built *outside* the meta context: a full random init on the host (about 57 GB fp32 per rank for
  14B) that also draws from the global CPU RNG and so shifts every later CPU random draw (data order, text dropout,
  number of conditional frames), only to be overwritten by a copy of the DiT.
`materialize_random` gives meta parameters storage and runs the modules' own initialisers; `materialize_ema_from`
gives the meta-built EMA the DiT's values directly (fp32, as the EMA updater requires), consuming no RNG and
without holding a second copy of the state dict.
"""

from __future__ import annotations

import torch
from torch import nn


def _meta_entries(module: nn.Module):
    for owner_name, owner in module.named_modules():
        for kind, table in (("param", owner._parameters), ("buffer", owner._buffers)):
            for name, tensor in table.items():
                if tensor is not None and tensor.is_meta:
                    full = f"{owner_name}.{name}" if owner_name else name
                    yield owner, kind, name, full, tensor


def meta_tensor_names(module: nn.Module) -> list[str]:
    return [full for *_, full, _t in _meta_entries(module)]


def assert_materialized(module: nn.Module, what: str) -> None:
    """One clear error instead of 'Cannot copy out of meta tensor' deep inside .to()."""
    missing = meta_tensor_names(module)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise RuntimeError(
            f"{what}: {len(missing)} tensors were not in the checkpoint ({shown}); "
            "check that dit_path points at a checkpoint of this model size"
        )


@torch.no_grad()
def materialize_random(module: nn.Module, device: torch.device | str = "cpu") -> nn.Module:
    """Random-initialise every meta parameter/buffer of `module` the way its constructors would.

    Real tensors (e.g. buffers built outside the meta context) are left untouched.
    """
    for owner, kind, name, _full, tensor in list(_meta_entries(module)):
        real = torch.zeros(tensor.shape, dtype=tensor.dtype, device=device)
        if kind == "param":
            owner._parameters[name] = nn.Parameter(real, requires_grad=tensor.requires_grad)
        else:
            owner._buffers[name] = real
    # Leaf initialisers first (what each constructor ran), then the model-level scheme, which overrides them.
    for sub in module.modules():
        if sub is not module and hasattr(sub, "reset_parameters") and not hasattr(sub, "init_weights"):
            sub.reset_parameters()
    if hasattr(module, "init_weights"):  # every Cosmos DiT has one
        module.init_weights()
    return module


@torch.no_grad()
def materialize_ema_from(ema: nn.Module, source: nn.Module) -> nn.Module:
    """Fill a meta-built EMA network with the (already loaded or initialised) values of `source`.

    Parameters pair up by name; each EMA tensor keeps the dtype it was declared with (fp32 for the EMA), on
    the source's device.
    """
    src_params = dict(source.named_parameters())
    src_buffers = dict(source.named_buffers())
    for owner, kind, name, full, tensor in list(_meta_entries(ema)):
        src = (src_params if kind == "param" else src_buffers).get(full)
        if src is None or src.is_meta:
            raise RuntimeError(f"EMA init: source network has no materialised {kind} '{full}'")
        real = src.detach().to(dtype=tensor.dtype).clone()
        if kind == "param":
            owner._parameters[name] = nn.Parameter(real, requires_grad=False)
        else:
            owner._buffers[name] = real
    return ema
