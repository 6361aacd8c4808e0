"""GradClip with patch grad-clip-finite-check-after-the-step (portable/shards.py LateFiniteClip): with an optimizer
that can skip its step on the device (FusedAdam's fused kernel; forced on here, CPU), the callback's finite check
moves after the step's launch. Checked on upstream's callback, a small bf16 net, FusedAdam with fp32 masters and
an LR scheduler, in the trainer's order (on_before_optimizer_step, step, scheduler, on_before_zero_grad), three
steps, the second with NaN/inf gradients:
- no host read (bool/item/float of a tensor) between the callback's start and the step's end with the late check,
  and at least one with the check before the step (COSMOS_CLIP_LATE_CHECK=0), so the test sees the difference;
- parameters, fp32 masters, moments, step counts, gradients and the logged norm equal bitwise to the check before
  the step, on finite and on non-finite steps (upstream's zeroing, the norm taken again, the step redone at its
  learning rate);
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

    def run(late, fused=True):
        os.environ["COSMOS_CLIP_LATE_CHECK"] = "1" if late else "0"
        torch.manual_seed(0)
        model = Model()
        opt = FusedAdam(model.parameters(), lr=1e-2, weight_decay=0.1, master_weights=True, fused=fused)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 / (1 + i))
        cb = GradClip(clip_norm=0.05, force_finite=True)
        cb.config = types.SimpleNamespace(trainer=types.SimpleNamespace(logging_iter=1000))
        cb._cur_state = cb.img_mag_log
        x = torch.randn(4, 8, dtype=torch.bfloat16)
        out = dict(reads_in_step=[], norms=[])
        for it in (1, 2, 3):
            model.net(x).float().pow(2).sum().backward()
            if it == 2:
                g = model.net[2].weight.grad
                g[0, 0], g[1, 1], g[2, 2] = float("nan"), float("inf"), -float("inf")
            reads[0] = 0
            cb.on_before_optimizer_step(model, opt, sched, None, iteration=it)
            opt.step()
            out["reads_in_step"].append(reads[0])
            sched.step()
            cb.on_before_zero_grad(model, opt, sched, iteration=it)
            out["norms"].append(float(cb.img_mag_log.state))
            if it == 3:
                out["grads"] = [p.grad.float().tolist() for p in model.parameters()]
            opt.zero_grad(set_to_none=True)
        ps = list(model.parameters())
        out["params"] = [p.float().tolist() for p in ps]
        out["masters"] = [opt._masters[p].tolist() for p in ps]
        out["moments"] = [opt.state[p][k].tolist() for p in ps for k in ("exp_avg", "exp_avg_sq")]
        out["steps"] = [g["step"] for g in opt.param_groups]
        out["can_skip"] = opt.can_skip_on_device(ps[0].device)
        return out

    print(json.dumps(dict(late=run(True), before=run(False), foreach=run(True, fused=False))))
''')


def test_grad_clip_checks_after_the_step_with_the_same_values(smoke_tree):
    r = subprocess.run([sys.executable, "-c", PROBE], cwd=str(smoke_tree), env=cpu_env(smoke_tree), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    late, before, foreach = out["late"], out["before"], out["foreach"]
    assert late["can_skip"] and not foreach["can_skip"]
    assert late["reads_in_step"] == [0, 0, 0]  # the host went through GradClip and the step without waiting
    assert all(n >= 1 for n in before["reads_in_step"]) and all(n >= 1 for n in foreach["reads_in_step"])
    for key in ("params", "masters", "moments", "grads", "norms", "steps"):
        assert late[key] == before[key], key  # bitwise (JSON floats of the same fp32/bf16 values)
    assert late["steps"] == [3]
    # the logged norm of the non-finite step is upstream's second norm (after the zeroing), a finite value
    assert all(v == v and abs(v) != float("inf") for v in late["norms"])
