"""Worker for test_grad_clip_local.py (torchrun, gloo): GradClip on FSDP2 gradients, three ways on identical
gradients: upstream's clip_grad_norm_ as shipped (`self.net.parameters()`, a generator), the same function given a
list, and GradClip's one-pass path (portable/shards.clip_grad_norm_local); then GradClip with FusedAdam with the
finite check before the step and after its launch (late_case). Prints one JSON line on rank 0."""

from __future__ import annotations

import json
import types

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from cosmos_predict2.callbacks.grad_clip import GradClip
from cosmos_predict2.portable import shards
from cosmos_predict2.utils import torch_future


class Model(torch.nn.Module):  # what GradClip reads: .net, parameters(), clip_grad_norm_ (as the upstream models)
    def __init__(self, net):
        super().__init__()
        self.net = net

    def clip_grad_norm_(self, max_norm):
        return torch_future.clip_grad_norm_(self.net.parameters(), max_norm)


def build(mesh, dtype, poison=False):
    torch.manual_seed(0)
    net = torch.nn.Sequential(*[torch.nn.Linear(16, 16) for _ in range(4)])
    for layer in net:
        fully_shard(layer, mesh=mesh, mp_policy=MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=dtype))
    fully_shard(net, mesh=mesh, mp_policy=MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=dtype))
    torch.manual_seed(1 + dist.get_rank())
    net(torch.randn(8, 16)).float().pow(2).sum().backward()
    if poison and dist.get_rank() == 0:
        g = shards.local_shard(net[1].weight.grad)
        g[0, 0], g[0, 1] = float("nan"), float("inf")
    return Model(net)


def _load_pristine():
    import importlib.util
    import os

    path = os.path.join(".cosmos-overlay", "pristine", "cosmos_predict2", "utils", "torch_future.py")
    spec = importlib.util.spec_from_file_location("pristine_torch_future", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


pristine = _load_pristine()


def same(a, b):
    return bool(((a == b) | (a.isnan() & b.isnan())).all())


def grads_of(model):
    return [shards.local_shard(p.grad).detach().clone() for p in model.net.parameters()]


def full_norm(model):
    sq = torch.stack([shards.local_shard(p.grad).float().pow(2).sum() for p in model.net.parameters()]).sum()
    dist.all_reduce(sq)
    return float(sq.sqrt())


def callback():
    cb = GradClip(clip_norm=0.05, force_finite=True)
    cb.config = types.SimpleNamespace(trainer=types.SimpleNamespace(logging_iter=1000))
    cb._cur_state = cb.img_mag_log
    return cb


def case(mesh, dtype, poison=False):
    # upstream's clip_grad_norm_ (the pristine bytes the installer keeps) and the patched one, given a generator
    m = build(mesh, dtype, poison)
    before = grads_of(m)
    grads = [p.grad for p in m.net.parameters() if p.grad is not None]
    eligible = shards._shard_groups(grads)[0]
    pristine.clip_grad_norm_(m.net.parameters(), 0.05)
    pristine_scaled = not all(same(a, b) for a, b in zip(before, grads_of(m)))
    m = build(mesh, dtype, poison)
    torch_future.clip_grad_norm_(m.net.parameters(), 0.05)
    patched_scaled = not all(same(a, b) for a, b in zip(before, grads_of(m)))
    # upstream's path, patched (a list): nan_to_num when needed, then clip_grad_norm_
    m = build(mesh, dtype, poison)
    cb = callback()
    cb._clip_local = lambda model: None  # force upstream's path
    cb.on_before_optimizer_step(m, None, None, None, iteration=1)
    upstream = grads_of(m)
    # GradClip's one-pass path
    m = build(mesh, dtype, poison)
    calls = []
    real = shards.clip_grad_norm_local

    def spy(*a, **k):
        out = real(*a, **k)
        calls.append(out is not None)
        return out

    import cosmos_predict2.callbacks.grad_clip as gc_mod
    gc_mod.clip_grad_norm_local = spy
    try:
        callback().on_before_optimizer_step(m, None, None, None, iteration=1)
    finally:
        gc_mod.clip_grad_norm_local = real
    local = grads_of(m)
    diff = max(float((a.float() - b.float()).abs().max()) for a, b in zip(upstream, local))
    scale = max(float(a.float().abs().max()) for a in upstream)
    return dict(eligible=eligible, pristine_scaled=pristine_scaled, patched_scaled=patched_scaled, one_pass_used=calls == [True],
                max_diff=diff, rel_diff=diff / scale, bitwise=all(torch.equal(a, b) for a, b in zip(upstream, local)),
                norm_before=full_norm(build(mesh, dtype, False)) if not poison else None, norm_after=full_norm(m),
                finite=all(bool(torch.isfinite(g).all()) for g in local))


def late_case(mesh, dtype, poison=False):
    """Patch grad-clip-finite-check-after-the-step: GradClip, FusedAdam's fused kernel (forced on; gloo, CPU) and
    the trainer's order, with the finite check before the step and after its launch: the same parameters after
    the step, bitwise, on every rank (a poisoned step on rank 0 only: the all-reduced norm is not finite everywhere,
    so every rank skips and, after zero_grad set the gradients to None, redoes from the ones the check held)."""
    import os

    from cosmos_predict2.portable.optim import FusedAdam

    results, late_used = [], []
    for late in (False, True):
        os.environ["COSMOS_CLIP_LATE_CHECK"] = "1" if late else "0"
        m = build(mesh, dtype, poison)
        opt = FusedAdam(m.net.parameters(), lr=1e-2, weight_decay=0.1, master_weights=True, fused=True)
        cb = callback()
        cb.on_before_optimizer_step(m, opt, None, None, iteration=1)
        late_used.append(cb._late._pending is not None)
        opt.step()
        cb.on_before_zero_grad(m, opt, None, iteration=1)
        opt.zero_grad(set_to_none=True)
        cb.on_train_end(m, iteration=1)  # settles (the next step's start in training): the redo after zero_grad
        results.append([shards.local_shard(p).detach().clone() for p in m.net.parameters()])
    os.environ.pop("COSMOS_CLIP_LATE_CHECK")
    return dict(late_used=late_used, bitwise=all(torch.equal(a, b) for a, b in zip(*results)),
                finite=all(bool(torch.isfinite(p).all()) for p in results[1]))


def main():
    dist.init_process_group("gloo")
    world = dist.get_world_size()
    out = {}
    meshes = {"fsdp": init_device_mesh("cpu", (world,), mesh_dim_names=("shard",))}
    if world == 1:
        meshes["hsdp"] = init_device_mesh("cpu", (1, 1), mesh_dim_names=("replicate", "shard"))
    for name, mesh in meshes.items():
        for dtype in (torch.float32, torch.bfloat16):
            out[f"{name}_{str(dtype)[6:]}"] = case(mesh, dtype)
        out[f"{name}_poisoned"] = case(mesh, torch.float32, poison=True)
    late = {f"fsdp_late_{k}": late_case(meshes["fsdp"], torch.float32, poison=k == "poisoned")
            for k in ("finite", "poisoned")}
    t = torch.ones(3)
    out["plain_eligible"] = shards._shard_groups([t, t])
    if dist.get_rank() == 0:
        print(json.dumps(dict(world=world, cases={k: v for k, v in out.items() if k != "plain_eligible"}, late=late,
                              plain_eligible=[out["plain_eligible"][0], len(out["plain_eligible"][1])])))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
