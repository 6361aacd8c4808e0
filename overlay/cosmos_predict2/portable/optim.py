"""AdamW with fp32 master weights on any device: the portable stand-in for upstream's apex-based FusedAdam.

Upstream's `fusedadamw` optimizer (cosmos_predict2/utils/fused_adam_dtensor.py) needs apex's CUDA extension.
This class keeps its constructor and semantics on torch's `_foreach_*` kernels (CUDA, NPU, CPU):
- decoupled weight decay (`adam_w_mode=True`: p -= lr * wd * p) or L2 (`adam_w_mode=False`: g += wd * p),
  bias correction, moments in fp32, one step counter per param group, as apex's multi_tensor_adam;
- `master_weights=True`: bf16/fp16 parameters get fp32 master copies, cloned from the LOCAL shard of DTensor
  (FSDP2) parameters at the first step; the update is applied to the master and copied back (rounded once), so
  updates smaller than half a bf16 ulp accumulate instead of vanishing. fp32 parameters are updated in place;
- moments are kept with the parameter's sharding (DTensor for DTensor parameters), so torch.distributed's
  get/set_optimizer_state_dict gather and scatter them correctly;
- masters are NOT part of `state_dict()` (like upstream): they are rebuilt from the parameters at the next step,
  also after `load_state_dict()`. Call `reset_master_weights()` if parameters are overwritten between steps;
- `capturable` is accepted and ignored: lr and step stay Python numbers (LR schedulers keep working), and
  lr/step tensors from upstream checkpoints are converted on load. `master_weights` does not require
  `capturable` here;
- `fused=True` (and `fused=None` on CUDA unless COSMOS_FUSED_ADAM=0): the update of each bucket is torch's
  fused Adam(W) kernel (torch._fused_adamw_, the kernel of torch.optim.AdamW(fused=True)) on the fp32 work tensors,
  one pass over them instead of nine foreach passes: 2.29 against 7.76 ms per 256M parameters on an H200
  (BENCHMARKS.md section 1), and the Text2Image 2B bare step 0.156 against 0.186 s (BENCHMARKS.md 3j). The same
  arithmetic to fp32 rounding (tests/ops/test_optim.py, tests/ops/test_cuda.py); bias correction off keeps the
  foreach path. Other devices keep the foreach path unless `fused=True` (torch_npu's fused kernel is not measured).
- bf16 gradients are copied to fp32 per bucket by one foreach copy into a buffer kept for the run
  (portable/upcast.py), not one `.float()` kernel per parameter.
- CUDA, fused: parameters with fp32 masters (and fp32 parameters) take portable/adamw_kernel.py instead, one Triton
  launch per dtype set that reads the bf16 gradients in registers and writes the bf16 parameters in the same pass
  (28 bytes per element against about 56 for upcast + torch's kernel + copy back + GradClip's scale). Lists it cannot
  take, and COSMOS_ADAM_KERNEL=0, keep torch's kernel.
- `scale_grads_in_next_step(coef)`: the next step() multiplies the gradients by GradClip's coefficient (in the
  Triton kernel's registers, else in place just before the update), so GradClip's late check (portable/shards.py
  LateFiniteClip) needs no pass of its own over the gradients.
- `skip_next_step_if(found_inf)`: the next step() runs, but the fused kernel leaves everything as it was when the
  0-dim device flag is 1 (its `found_inf`, as AMP uses it); `redo_skipped_step()` then runs that step again, with
  the learning rate and step count it had. GradClip's finite check after the step (portable/shards.py
  LateFiniteClip) uses the pair so that the host does not wait for the backward before launching the step.
- each parameter's local shard, moments and master are looked up once and kept while the same parameters have
  gradients at the same storages (`_layout`): the step's host work per parameter is then the gradient alone.
"""

from __future__ import annotations

import math
import operator
from itertools import chain

import torch

from . import adamw_kernel, device, shards, upcast
from .shards import local_shard  # no DTensor dispatch per parameter and step
from .user_error import UserRuntimeError, UserValueError

try:
    from torch.distributed.tensor import DTensor, distribute_tensor
except ImportError:  # torch builds without distributed
    DTensor = None
    distribute_tensor = None

_LOW_PRECISION = (torch.bfloat16, torch.float16)
STATS = {"entry_builds": 0}  # for benchmarks and tests: how often step() looked its parameters' entries up


def _by_dtype(tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    groups: dict = {}
    for t in tensors:
        groups.setdefault(t.dtype, []).append(t)
    return list(groups.values())


def _scalar(x) -> float:
    return float(x.item()) if isinstance(x, torch.Tensor) else float(x)


_IS_SPARSE = operator.attrgetter("is_sparse")
_DTYPE = operator.attrgetter("dtype")


class _Layout:
    """One param group's step, kept between steps (FusedAdam._layout): per parameter with a gradient its local shard,
    moments and master (`fixed`, by index); per device the indices of its parameters and the sets that
    portable/adamw_kernel.py takes in one launch each, with their lists (work, moments, parameters) built once."""

    __slots__ = ("key", "fixed", "devices")

    def __init__(self, key: tuple, fixed: list, grad_dtypes: tuple) -> None:
        self.key, self.fixed = key, fixed
        by_device: dict = {}
        for i, f in enumerate(fixed):
            by_device.setdefault(f[0].device, []).append(i)
        self.devices = []  # (device, indices, kernel sets: (indices, work, exp_avgs, exp_avg_sqs, params or None))
        for dev, idx in by_device.items():
            sets: dict = {}
            for i in idx:
                local, _, _, master = fixed[i]
                if master is None and local.dtype != torch.float32:
                    continue  # low precision without a master: the transient fp32 copy of _update
                sets.setdefault((master is not None, grad_dtypes[i], local.dtype), []).append(i)
            kernel_sets = [
                (ii, [fixed[i][3] if has_master else fixed[i][0] for i in ii], [fixed[i][1] for i in ii],
                 [fixed[i][2] for i in ii], [fixed[i][0] for i in ii] if has_master else None)
                for (has_master, _, _), ii in sets.items()
            ]
            self.devices.append((dev, idx, kernel_sets))

    def entries(self, idx: list, grads: list) -> list:
        """(param local, grad local, exp_avg, exp_avg_sq, master or None) for the parameters at `idx`."""
        f = self.fixed
        return [(f[i][0], grads[i], f[i][1], f[i][2], f[i][3]) for i in idx]


class FusedAdam(torch.optim.Optimizer):
    # step() copies every master it updated back into its parameter (rounded once), so imaginaire's
    # LowPrecisionCallback, which reads this flag (patch low-precision-callback-skips-written-back-masters), skips
    # its master -> parameter copy after the step: rewriting the same values cost ~1,700 DTensor ops and one copy of
    # all parameters per step on the 2B net.
    masters_written_back = True
    # step() keeps each parameter's local shard, moments and master between steps (_layout); False looks them up
    # again at every step, as before (bench/bench_adam_host.py runs both)
    keep_entries = True

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        bias_correction: bool = True,
        betas=(0.9, 0.999),
        eps: float = 1e-8,
        adam_w_mode: bool = True,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        capturable: bool = False,
        master_weights: bool = False,
        fused: bool | None = None,
        **unused,
    ) -> None:
        if amsgrad:
            raise UserRuntimeError("FusedAdam does not support amsgrad (portable.optim). Use amsgrad=False.")
        if not 0.0 <= _scalar(lr):
            raise UserValueError(f"invalid learning rate {lr} (portable.optim). Use lr >= 0.")
        betas = tuple(float(b) for b in betas)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise UserValueError(f"invalid betas {betas} (portable.optim). Use two values in [0, 1).")
        defaults = dict(
            lr=_scalar(lr), bias_correction=bias_correction, betas=betas, eps=eps, weight_decay=weight_decay
        )
        super().__init__(params, defaults)
        self.adam_w_mode = bool(adam_w_mode)
        self.capturable = capturable  # accepted for config compatibility; see module docstring
        self.master_weights = bool(master_weights)
        # True/False: the caller decides (any device with the kernel); None: on CUDA unless COSMOS_FUSED_ADAM=0
        self.fused = fused
        self._fused_env = device.env_flag("COSMOS_FUSED_ADAM", default=True) if fused is None else False
        self._masters: dict = {}
        self._found_inf: torch.Tensor | None = None  # for the next step() only (skip_next_step_if)
        self._grad_scale: torch.Tensor | None = None  # for the next step() only (scale_grads_in_next_step)
        self._sanitize = False  # for the next step() only (sanitize_next_step)
        self._skippable: list = []  # (group, step count before, lr) of the last step() taken with a flag
        self._kept: dict = {}  # id(group) -> _Layout: see _layout; cleared when masters or state are dropped or loaded
        for group in self.param_groups:
            group["lr"] = _scalar(group["lr"])

    # ------------------------------------------------------------------ masters

    def reset_master_weights(self) -> None:
        """Drop the fp32 masters; they are cloned again from the parameters at the next step."""
        self._masters.clear()
        self._forget_entries()

    def _forget_entries(self) -> None:
        self._kept.clear()

    @property
    def param_groups_master(self) -> list[dict]:
        """Upstream's master layout, which imaginaire's LowPrecisionCallback reads after every step to copy the
        masters into the parameters. step() has already written them back, so for us that copy is a no-op;
        parameters without a master (fp32, or no gradient yet) are paired with themselves."""
        return [{"params": [self._masters.get(p, local_shard(p)) for p in g["params"]]} for g in self.param_groups]

    def uses_fused_kernel(self, dev: torch.device) -> bool:
        """Whether step() runs torch's fused AdamW kernel for parameters on `dev` (see the module docstring)."""
        return self.fused if self.fused is not None else (self._fused_env and dev.type == "cuda")

    def can_skip_on_device(self, dev: torch.device) -> bool:
        """Whether skip_next_step_if works for parameters on `dev`: only the fused kernel reads the flag."""
        return self.uses_fused_kernel(dev) and all(g.get("bias_correction", True) for g in self.param_groups)

    def can_sanitize_on_device(self, dev: torch.device) -> bool:
        """Whether sanitize_next_step runs in portable/adamw_kernel.py's update for parameters on `dev` (CUDA with
        the kernel on; parameters it cannot take get the in-place nan_to_num instead)."""
        return self.can_skip_on_device(dev) and dev.type == "cuda" and adamw_kernel.enabled()

    def sanitize_next_step(self) -> None:
        """The next step() takes NaN/inf gradient elements as 0 (upstream GradClip's nan_to_num, before the scale of
        scale_grads_in_next_step): in registers where portable/adamw_kernel.py runs (the gradients stay as they are),
        by an in-place nan_to_num elsewhere. Finite gradients are unchanged by it, so a step that needed nothing is
        the same step bitwise."""
        self._sanitize = True

    def skip_next_step_if(self, found_inf: torch.Tensor) -> None:
        """The next step() leaves parameters, masters and moments as they are when the 0-dim float tensor
        `found_inf` (on the parameters' device) is 1, without the host reading it. Only where can_skip_on_device."""
        self._found_inf = found_inf

    def scale_grads_in_next_step(self, coef: torch.Tensor, n_grads: int) -> bool:
        """The next step() multiplies the gradients by the 0-dim device tensor `coef` (GradClip's coefficient)
        before using them, as an in-place multiply of the gradients just before the step would: portable/
        adamw_kernel.py does it in registers, the other paths by that in-place multiply. Taken (True) only when the
        `n_grads` gradients the caller means are as many as this optimizer's parameters with a gradient."""
        if sum(p.grad is not None for g in self.param_groups for p in g["params"]) != n_grads:
            return False
        self._grad_scale = coef
        return True

    def zero_grad(self, set_to_none: bool = True) -> None:
        """torch's zero_grad. Zeroing in place would leave a step whose finite check is still pending
        (portable/shards.py LateFiniteClip) nothing to redo from: that check is settled first. Setting to None (the
        trainer's way) needs no wait: the pending check holds its own references to the gradients."""
        if not set_to_none:
            shards.settle_unsettled()
        super().zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def redo_skipped_step(self) -> None:
        """Run the last step() taken with a skip flag again, as if it had been the step: same step count, same
        learning rate (an LR scheduler may have moved it since). The caller knows the flag was 1 (nothing written)."""
        groups, self._skippable = self._skippable, []
        for group, step_before, lr in groups:
            group["step"] = step_before
            self._step_group(group, lr=lr)

    def _master_for(self, p: torch.Tensor) -> torch.Tensor | None:
        local = local_shard(p)
        if not self.master_weights or local.dtype not in _LOW_PRECISION:
            return None
        m = self._masters.get(p)
        if m is None or m.shape != local.shape or m.device != local.device:
            m = local.detach().clone().float()
            self._masters[p] = m
        return m

    def _moments(self, p: torch.Tensor):
        state = self.state[p]
        if len(state) == 0:
            # fp32 moments with the parameter's sharding (DTensor in, DTensor out).
            state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
        return local_shard(state["exp_avg"]), local_shard(state["exp_avg_sq"])

    # ------------------------------------------------------------------ step

    @torch.no_grad()
    def step(self, closure=None, grad_scaler=None, **deprecated):
        if any(v is not None for v in deprecated.values()):
            raise UserRuntimeError(
                "FusedAdam.step() takes no grads/output_params/scale/grad_norms (portable.optim). "
                "Call step() with no arguments."
            )
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        found_inf, self._found_inf = self._found_inf, None
        grad_scale, self._grad_scale = self._grad_scale, None
        sanitize, self._sanitize = self._sanitize, False
        self._skippable = []
        for group in self.param_groups:
            if found_inf is not None:
                self._skippable.append((group, group.get("step", 0), _scalar(group["lr"])))
            self._step_group(group, found_inf=found_inf, grad_scale=grad_scale, sanitize=sanitize)
        return loss

    def _step_group(self, group: dict, lr: float | None = None, found_inf: torch.Tensor | None = None,
                    grad_scale: torch.Tensor | None = None, sanitize: bool = False) -> None:
        layout, grads = self._layout(group)
        if layout is None:
            return
        group["step"] = int(_scalar(group.get("step", 0))) + 1
        step = group["step"]
        lr = _scalar(group["lr"]) if lr is None else lr
        beta1, beta2 = (float(b) for b in group["betas"])
        eps, wd = float(group["eps"]), float(group["weight_decay"])
        bc1 = 1.0 - beta1**step if group.get("bias_correction", True) else 1.0
        bc2 = 1.0 - beta2**step if group.get("bias_correction", True) else 1.0

        # Per device, in buckets of upcast.BUCKET_NUMEL elements: each foreach call stays on one device and the
        # fp32 copies of bf16 grads fit the upcast buffer.
        fused_step = step if group.get("bias_correction", True) else None  # the fused kernel always corrects
        for dev, idx, kernel_sets in layout.devices:
            scale = grad_scale.to(dev) if grad_scale is not None else None
            if found_inf is not None and not (self.uses_fused_kernel(dev) and fused_step is not None):
                raise UserRuntimeError(f"FusedAdam: a skip flag was given for {dev.type} parameters, where the "
                                       "foreach path cannot read it (portable.optim). Check can_skip_on_device first.")
            if self.uses_fused_kernel(dev):  # one Triton launch per (master?, dtypes) set where it applies
                idx = self._kernel_update(idx, kernel_sets, grads, lr, beta1, beta2, eps, wd, bc1, bc2, found_inf,
                                          scale, sanitize)
                if not idx:
                    continue
            dev_entries = layout.entries(idx, grads)  # (param local, grad local, exp_avg, exp_avg_sq, master)
            if sanitize:  # the entries the kernel did not take: upstream's in-place nan_to_num, before the scale
                for e in dev_entries:
                    torch.nan_to_num(e[1], nan=0.0, posinf=0.0, neginf=0.0, out=e[1])
            if scale is not None:  # the other paths: GradClip's in-place multiply, here (per dtype, as it)
                for ts in _by_dtype([e[1] for e in dev_entries]):
                    torch._foreach_mul_(ts, scale)
            # torch's fused kernel's step count: one 0-dim tensor per device and step, shared by the buckets (it only
            # reads it), not a fill per bucket
            steps = None
            if self.uses_fused_kernel(dev) and fused_step is not None:
                steps = torch.full((), float(fused_step), dtype=torch.float32, device=dev)
            for a, b in upcast.buckets([e[0] for e in dev_entries]):
                self._update(dev_entries[a:b], lr, beta1, beta2, eps, wd, bc1, bc2, steps, found_inf)

    def _layout(self, group: dict):
        """(the group's _Layout, the local shards of its gradients), or (None, None) when no parameter has one.
        The layout is kept from the last step while the same parameters have gradients of the same dtypes, their
        local shards are the same tensors at the same storages, and no master or state was dropped or loaded since:
        looking each parameter up and grouping it for the kernel took 4.6 ms per step of the 2B net's 567 on a
        2-core CPU, 1.9 ms with the layout kept (bench/bench_adam_host.py), host time between the backward and the
        optimizer's launch (BENCHMARKS 3s, 3t). A parameter that moves to a new storage (`.data` assigned, a new
        shard) is looked up again, its master kept if the shape and device did not change, as before; values
        written into the parameters in place need reset_master_weights(), as before. State replaced other than by
        load_state_dict() (assigning `opt.state[p]`) is not seen."""
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return None, None
        grads = [p.grad for p in params]
        if any(map(_IS_SPARSE, grads)):
            raise UserRuntimeError("FusedAdam does not support sparse gradients (portable.optim).")
        grads = list(map(local_shard, grads))
        locals_ = list(map(local_shard, params))
        try:
            storages = tuple(map(torch.Tensor.data_ptr, locals_))
        except RuntimeError:  # a tensor without storage (a subclass, a fake tensor): looked up at every step
            storages = None
        grad_dtypes = tuple(map(_DTYPE, grads))
        key = (tuple(map(id, params)), tuple(map(id, locals_)), storages, grad_dtypes)
        layout = self._kept.get(id(group)) if self.keep_entries and storages is not None else None
        if layout is None or layout.key != key:
            layout = _Layout(key, [self._fixed_entry(p, local) for p, local in zip(params, locals_)], grad_dtypes)
            if storages is not None:
                self._kept[id(group)] = layout
            STATS["entry_builds"] += 1
        return layout, grads

    def _fixed_entry(self, p: torch.Tensor, local: torch.Tensor) -> tuple:
        if local.dtype not in (torch.float32, *_LOW_PRECISION):
            raise UserRuntimeError(f"FusedAdam supports fp32/bf16/fp16 parameters, got {local.dtype} (portable.optim).")
        m, v = self._moments(p)
        return local, m, v, self._master_for(p)

    def _kernel_update(self, idx, kernel_sets, grads, lr, beta1, beta2, eps, wd, bc1, bc2, found_inf, grad_scale,
                       sanitize: bool = False) -> list:
        """portable/adamw_kernel.py for the sets it takes (fp32 work tensors: masters, or fp32 parameters); the
        indices left for the other paths are returned."""
        done: set = set()
        for ii, work, exp_avgs, exp_avg_sqs, params in kernel_sets:
            if adamw_kernel.step_(work, [grads[i] for i in ii], exp_avgs, exp_avg_sqs, params, lr=lr, beta1=beta1,
                                  beta2=beta2, eps=eps, weight_decay=wd, adamw=self.adam_w_mode, bias_correction1=bc1,
                                  bias_correction2=bc2, grad_scale=grad_scale, found_inf=found_inf,
                                  sanitize=sanitize):
                done.update(ii)
        if len(done) == len(idx):
            return []
        return [i for i in idx if i not in done] if done else idx

    def _update(self, bucket, lr, beta1, beta2, eps, wd, bc1, bc2, fused_step: torch.Tensor | None = None,
                found_inf: torch.Tensor | None = None) -> None:
        params = [e[0] for e in bucket]
        grads = [e[1] for e in bucket]  # never modified in place below
        if any(g.dtype != torch.float32 for g in grads):  # bf16 grads: fp32 copies in a few launches, not one each
            grads = upcast.upcast(grads, upcast.STEP)
        exp_avgs = [e[2] for e in bucket]
        exp_avg_sqs = [e[3] for e in bucket]
        # The tensor the math runs on: the fp32 master, the fp32 parameter itself, or (low precision without
        # masters, as apex's non-master kernel) a transient fp32 copy written back below.
        work = [e[4] if e[4] is not None else (e[0] if e[0].dtype == torch.float32 else e[0].float()) for e in bucket]

        if fused_step is not None:  # one kernel: decay, moments, bias correction, update (torch.optim's fused AdamW)
            steps = [fused_step] * len(work)
            kernel = torch._fused_adamw_ if self.adam_w_mode else torch._fused_adam_  # L2: wd * p added to the grad
            kernel(work, grads, exp_avgs, exp_avg_sqs, [], steps, lr=lr, beta1=beta1, beta2=beta2, weight_decay=wd,
                   eps=eps, amsgrad=False, maximize=False, found_inf=found_inf)
            self._copy_back(params, work)
            return
        if not self.adam_w_mode and wd != 0.0:
            grads = torch._foreach_add(grads, work, alpha=wd)
        torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
        if self.adam_w_mode and wd != 0.0:
            torch._foreach_mul_(work, 1.0 - lr * wd)
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denom, math.sqrt(bc2))
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(work, exp_avgs, denom, value=-lr / bc1)
        self._copy_back(params, work)

    @staticmethod
    def _copy_back(params, work) -> None:
        back = [(p, w) for p, w in zip(params, work) if p is not w]
        if back:
            torch._foreach_copy_([p for p, _ in back], [w for _, w in back])  # one rounding to bf16/fp16

    # ------------------------------------------------------------------ state dict

    def state_dict(self) -> dict:
        """torch's state_dict, with a finite check still pending (portable/shards.py LateFiniteClip) settled first:
        a step skipped on the device is redone before its state is read (GradClip settles before a checkpoint save
        itself; this covers savers that do not tell the callbacks)."""
        shards.settle_unsettled()
        return super().state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        # torch casts floating state to the parameter dtype on load, which would round our fp32 moments to bf16:
        # keep the incoming tensors aside and put them back in fp32 afterwards.
        saved_ids = list(chain.from_iterable(g["params"] for g in state_dict["param_groups"]))
        incoming = {k: dict(v) for k, v in state_dict["state"].items()}
        super().load_state_dict(state_dict)
        params = list(chain.from_iterable(g["params"] for g in self.param_groups))
        id_to_param = dict(zip(saved_ids, params))
        for key, st in incoming.items():
            p = id_to_param.get(key)
            if p is None:
                continue
            for name in ("exp_avg", "exp_avg_sq"):
                if name in st and isinstance(st[name], torch.Tensor):
                    self.state[p][name] = self._fp32_like(st[name], p)
        for group in self.param_groups:
            group["lr"] = _scalar(group["lr"])  # upstream (capturable) checkpoints hold a tensor
            if "step" in group:
                group["step"] = int(_scalar(group["step"]))
        self._masters.clear()  # rebuilt from the (possibly just loaded) parameters at the next step
        self._forget_entries()  # the kept entries name the old moments

    @staticmethod
    def _fp32_like(value: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        if DTensor is not None and isinstance(p, DTensor):
            if isinstance(value, DTensor):
                return value.to(device=p.device, dtype=torch.float32)
            value = value.to(device=p.device, dtype=torch.float32)
            if value.shape == p.shape:
                return distribute_tensor(value, p.device_mesh, p.placements)
            return DTensor.from_local(value, p.device_mesh, p.placements, shape=p.shape, stride=p.stride())
        return value.to(device=p.device, dtype=torch.float32)
