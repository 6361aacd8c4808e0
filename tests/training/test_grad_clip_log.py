"""GradClip's log with patch grad-clip-log-reads-only-for-wandb, upstream's callback in the patched tree: on a logging
iteration without a wandb run it starts its norm averages again without reading them on the host (the read waited
for everything queued on the stream and its values went nowhere); with a wandb run (a stand-in recording what
wandb.log gets) it reads them and logs the averages, as upstream."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from .trainer_runs import cpu_env, with_reads_mode

PROBE = with_reads_mode(textwrap.dedent('''
    import json, sys, types, torch
    from cosmos_predict2.callbacks import grad_clip as gc
    #READS_MODE#

    logged = []
    if sys.argv[1] == "wandb":  # a stand-in for an active wandb run
        gc.wandb = types.SimpleNamespace(run=object(), log=lambda d, step: logged.append((d, step)))
    else:
        gc.wandb = types.SimpleNamespace(run=None, log=lambda d, step: logged.append((d, step)))
    cb = gc.GradClip(clip_norm=1.0)
    cb.config = types.SimpleNamespace(trainer=types.SimpleNamespace(logging_iter=2))
    reads = []
    for it, norm in ((1, 3.0), (2, 5.0), (3, 7.0), (4, 9.0)):
        cb.img_mag_log.update(torch.tensor(norm))
        Reads.n = 0
        with Reads():
            cb._log(it)
        reads.append(Reads.n)
    print(json.dumps(dict(reads=reads, logged=logged, left=[cb.img_mag_log.iter_count, cb.img_mag_log.state])))
'''))


def _probe(tree, mode):
    r = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=str(tree), env=cpu_env(tree), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_grad_clip_log_reads_the_norms_only_for_a_wandb_run(smoke_tree):
    quiet = _probe(smoke_tree, "none")
    assert quiet["reads"] == [0, 0, 0, 0] and quiet["logged"] == [], quiet  # no read, nothing logged
    assert quiet["left"] == [0, 0], quiet  # the averages started again at each logging iteration
    run = _probe(smoke_tree, "wandb")
    assert run["reads"][0] == run["reads"][2] == 0 and run["reads"][1] >= 1 and run["reads"][3] >= 1, run
    assert [(d["clip_grad_norm/image"], d["iteration"], step) for d, step in run["logged"]] == [(4.0, 2, 2),
                                                                                              (8.0, 4, 4)], run
