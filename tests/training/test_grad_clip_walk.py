"""GradClip with patch grad-clip-keeps-its-parameter-walk, upstream's callback in the patched tree: the module walks
that find the net's gradients (net and model, ~2,300 modules for the 2B Text2Image model: host time while the device
idles between the backward and the optimizer step) run at its first step only, with the same parameters chosen."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from .trainer_runs import cpu_env

PROBE = textwrap.dedent('''
    import json, torch
    from cosmos_predict2.callbacks import grad_clip as gc

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(8)])
            self.net_ema = torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(8)]).requires_grad_(False)

    walks = []
    real = torch.nn.Module.parameters
    torch.nn.Module.parameters = lambda self, recurse=True: walks.append(type(self).__name__) or real(self, recurse)
    m = Model()
    walks.clear()  # construction walked the EMA net once (requires_grad_)
    cb = gc.GradClip(clip_norm=1.0)
    chosen = []
    for step in range(4):
        m.zero_grad(set_to_none=True)
        m.net(torch.randn(2, 4)).sum().backward()
        chosen.append(len(cb._net_grad_params(m)))
    m.net_ema[0].bias.grad = torch.ones(4)  # a gradient outside the net: upstream's path
    print(json.dumps(dict(walks=len(walks), chosen=chosen, outside=cb._net_grad_params(m))))
''')


def test_grad_clip_walks_the_modules_once(smoke_tree):
    r = subprocess.run([sys.executable, "-c", PROBE], cwd=str(smoke_tree), env=cpu_env(smoke_tree),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["chosen"] == [16, 16, 16, 16] and out["outside"] is None, out
    # m.zero_grad walks the model once per step (4), GradClip twice at its first step only: 2 (upstream: 8)
    assert out["walks"] == 4 + 2, out
