"""GradClip with patch grad-clip-finite-check-after-the-step (portable/shards.py LateFiniteClip): with an optimizer
that can skip its step on the device (FusedAdam's fused kernel; forced on here, CPU), the callback's finite check
moves after the step's launch. Checked on upstream's callback, a small bf16 net, FusedAdam with fp32 masters and
an LR scheduler, in the trainer's order (on_training_step_start, on_before_optimizer_step, step, scheduler,
on_before_zero_grad, the EMA update, zero_grad(set_to_none)), three steps, the second with NaN/inf gradients:
- no host read (bool/item/float of a tensor) from the callback's start through zero_grad with the late check
  settled at the next step's start, and at least one when it settles in on_before_zero_grad
  (COSMOS_CLIP_SETTLE_NEXT_STEP=0) or before the step (COSMOS_CLIP_LATE_CHECK=0), so the test sees the difference;
- parameters, fp32 masters, moments, step counts, gradients, the logged norm and an fp32 EMA equal bitwise to the
  check before the step, on finite and on non-finite steps (upstream's zeroing, the norm taken again, the step
  redone at its learning rate after zero_grad set the gradients to None: from the gradients the check held). On CPU
  the EMA update cannot skip on the device (portable/lerp_kernel.py is CUDA-only), so it settles the check itself
  (the card runs the skip: tests/ops/test_cuda.py);
- an optimizer that cannot skip on the device (the foreach path) keeps the check before the step."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from .trainer_runs import cpu_env

PROBE = textwrap.dedent('''
    import json, os, types, torch
    from cosmos_predict2.callbacks.grad_clip import GradClip
    from cosmos_predict2.portable import upcast
    from cosmos_predict2.portable.optim import FusedAdam

    reads = [0]
    def counting(name):
        orig = getattr(torch.Tensor, name)
        def f(self, *a, **k):
            reads[0] += 1
            return orig(self, *a, **k)
        setattr(torch.Tensor, name, f)
    for name in ("__bool__", "item", "__float__", "__int__", "tolist"):
        counting(name)

    class Model(torch.nn.Module):  # what GradClip calls on the model: net, parameters() and clip_grad_norm_
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(*[torch.nn.Linear(8, 8) for _ in range(6)]).to(torch.bfloat16)
        def clip_grad_norm_(self, max_norm):
            return torch.nn.utils.clip_grad_norm_(self.parameters(), max_norm)
        def is_image_batch(self, data_batch):
            return True

    def run(late, fused=True, defer=True, ema=False, on_device=False):
        os.environ["COSMOS_CLIP_LATE_CHECK"] = "1" if late else "0"
        os.environ["COSMOS_CLIP_SETTLE_NEXT_STEP"] = "1" if defer else "0"
        os.environ["COSMOS_CLIP_ON_DEVICE"] = "1" if on_device else "0"
        torch.manual_seed(0)
        model = Model()
        ps = list(model.parameters())
        opt = FusedAdam(ps, lr=1e-2, weight_decay=0.1, master_weights=True, fused=fused)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 / (1 + i))
        cb = GradClip(clip_norm=0.05, force_finite=True)
        cb.config = types.SimpleNamespace(trainer=types.SimpleNamespace(logging_iter=1000))
        ema_w = [p.detach().float().clone() for p in ps]
        x = torch.randn(4, 8, dtype=torch.bfloat16)
        out = dict(reads_in_step=[], grads=[])
        for it in (1, 2, 3):  # the trainer's order
            cb.on_training_step_start(model, {}, iteration=it)
            model.net(x).float().pow(2).sum().backward()
            if it == 2:
                g = model.net[2].weight.grad
                g[0, 0], g[1, 1], g[2, 2] = float("nan"), float("inf"), -float("inf")
            reads[0] = 0
            cb.on_before_optimizer_step(model, opt, sched, None, iteration=it)
            opt.step()
            sched.step()
            cb.on_before_zero_grad(model, opt, sched, iteration=it)
            if ema:  # the model's on_before_zero_grad
                upcast.ema_update_(ema_w, ps, 0.9)
            grads = [p.grad.float() for p in ps]
            opt.zero_grad(set_to_none=True)
            out["reads_in_step"].append(reads[0])  # from the callback's start through zero_grad
            out["grads"].append([g.tolist() for g in grads])
        cb.on_train_end(model, iteration=3)
        out["norm"] = [float(cb.img_mag_log.state), cb.img_mag_log.iter_count]
        out["params"] = [p.float().tolist() for p in ps]
        out["masters"] = [opt._masters[p].tolist() for p in ps]
        out["moments"] = [opt.state[p][k].tolist() for p in ps for k in ("exp_avg", "exp_avg_sq")]
        out["steps"] = [g["step"] for g in opt.param_groups]
        out["ema"] = [t.tolist() for t in ema_w]
        out["can_skip"] = opt.can_skip_on_device(ps[0].device)
        out["grads_left"] = [p.grad is None for p in ps]
        return out

    print(json.dumps(dict(late=run(True), zero_grad=run(True, defer=False), before=run(False),
                          on_device=run(True, on_device=True),
                          foreach=run(True, fused=False), late_ema=run(True, ema=True), before_ema=run(False, ema=True))))
''')


def test_grad_clip_checks_after_the_step_with_the_same_values(smoke_tree):
    r = subprocess.run([sys.executable, "-c", PROBE], cwd=str(smoke_tree), env=cpu_env(smoke_tree), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    late, zero, before, foreach = out["late"], out["zero_grad"], out["before"], out["foreach"]
    assert late["can_skip"] and not foreach["can_skip"]
    # from GradClip's on_before_optimizer_step through zero_grad: the host never waited with the check settled at
    # the next step's start; settled in on_before_zero_grad (COSMOS_CLIP_SETTLE_NEXT_STEP=0) it reads once there
    assert late["reads_in_step"] == [0, 0, 0], late["reads_in_step"]
    for run in (zero, before, foreach):
        assert all(n >= 1 for n in run["reads_in_step"]), run["reads_in_step"]
    for run in (late, zero, out["late_ema"]):
        ref = out["before_ema"] if run is out["late_ema"] else before
        for key in ("params", "masters", "moments", "norm", "steps", "ema"):
            assert run[key] == ref[key], (key, [k for k, v in out.items() if v is run])  # bitwise (JSON floats of the same fp32/bf16 values)
        # the gradients as zero_grad found them; settled at the next step's start, the non-finite step's were still
        # untouched then (the redo zeroes them later)
        finite_steps = [0, 2] if run is late else [0, 1, 2]
        assert [run["grads"][i] for i in finite_steps] == [ref["grads"][i] for i in finite_steps]
    # COSMOS_CLIP_ON_DEVICE=1 needs portable/adamw_kernel.py (CUDA): on CPU the skip-and-redo mode runs, the same
    assert out["on_device"] == late
    assert late["steps"] == [3] and late["norm"][1] == 3 and all(late["grads_left"])  # set to None again after a redo
    # the non-finite step was redone after zero_grad had set the gradients to None: from the gradients the check
    # held (the parameters moved on all three steps)
    assert out["late_ema"]["ema"] != late["ema"]
    # the logged norm sums upstream's norms, the non-finite step's taken after the zeroing: a finite value
    assert late["norm"][0] == late["norm"][0] and abs(late["norm"][0]) != float("inf")
