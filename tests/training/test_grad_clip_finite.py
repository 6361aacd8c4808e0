"""GradClip(force_finite=True) with patch grad-clip-skips-nan-to-num-when-finite: finite gradients skip the
per-gradient nan_to_num (no op per gradient), non-finite ones are still cleaned before clipping, exactly as before;
portable/shards.all_finite's answers. Upstream's callback on a small real module, in the applied tree."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from .trainer_runs import cpu_env

PROBE = textwrap.dedent('''
    import json, types, torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from cosmos_predict2.callbacks.grad_clip import GradClip
    from cosmos_predict2.portable.shards import all_finite

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__(); self.names = []
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(str(func.overloadpacket.__name__))
            return func(*args, **(kwargs or {}))

    class Net(torch.nn.Module):  # what GradClip calls on the model: parameters() and clip_grad_norm_
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.Sequential(*[torch.nn.Linear(8, 8) for _ in range(6)])
        def clip_grad_norm_(self, max_norm):
            return torch.nn.utils.clip_grad_norm_(self.parameters(), max_norm)

    def run(poison):
        torch.manual_seed(0)
        net = Net()
        net.layers(torch.randn(4, 8)).pow(2).sum().backward()
        if poison:
            g = net.layers[2].weight.grad
            g[0, 0], g[1, 1], g[2, 2] = float("nan"), float("inf"), -float("inf")
        cb = GradClip(clip_norm=1.0, force_finite=True)
        cb.config = types.SimpleNamespace(trainer=types.SimpleNamespace(logging_iter=1000))
        cb._cur_state = cb.img_mag_log
        with Ops() as ops:
            cb.on_before_optimizer_step(net, None, None, None, iteration=1)
        grads = [p.grad for p in net.parameters()]
        return dict(nan_to_num=ops.names.count("nan_to_num"), finite=all(bool(torch.isfinite(g).all()) for g in grads),
                    poisoned=[net.layers[2].weight.grad[i, i].item() for i in range(3)],
                    norm_after=float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

    t = lambda *v: torch.tensor(v, dtype=torch.bfloat16)
    checks = dict(empty=all_finite([]), finite=all_finite([t(1, 2), torch.ones(3)]), nan=all_finite([t(1), t(float("nan"))]),
                  inf=all_finite([torch.ones(2), torch.tensor([float("inf")])]))
    print(json.dumps(dict(clean=run(False), poisoned=run(True), checks=checks)))
''')


def test_grad_clip_skips_nan_to_num_only_when_all_finite(smoke_tree):
    r = subprocess.run([sys.executable, "-c", PROBE], cwd=str(smoke_tree), env=cpu_env(smoke_tree), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["checks"] == {"empty": True, "finite": True, "nan": False, "inf": False}
    assert out["clean"]["nan_to_num"] == 0 and out["clean"]["finite"]  # 12 gradients, no per-gradient op
    assert out["poisoned"]["nan_to_num"] == 12  # one per gradient, as upstream does
    assert out["poisoned"]["finite"] and out["poisoned"]["poisoned"][0] == 0.0
    assert out["poisoned"]["poisoned"][1:] == [0.0, 0.0]  # nan_to_num(posinf=0, neginf=0), then clipped
    assert out["clean"]["norm_after"] <= 1.0 + 1e-5 and out["poisoned"]["norm_after"] <= 1.0 + 1e-5
