"""IterSpeed logs each logging iteration's line one step late (patch iter-speed-logs-one-step-late), driven through
upstream's own CallBackGroup in the patched tree, one gloo process on CPU: no host read of a tensor at the logging
iteration (upstream read the loss there and waited for the step's end mark, so the host drained the device), the
line written at the next step's end or at the end of training, with that iteration's loss and speed."""

from __future__ import annotations

import json
import subprocess
import sys

from .trainer_runs import cpu_env, with_reads_mode

DRIVE = with_reads_mode(r"""
import json, sys
import torch, torch.distributed as dist
from types import SimpleNamespace as NS
from imaginaire.lazy_config import LazyCall as L
from imaginaire.utils import log
from imaginaire.utils.callback import CallBackGroup
from cosmos_predict2.callbacks.iter_speed import IterSpeed

dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0, world_size=1)
lines = []
log.info = lambda msg, *a, **k: lines.append(msg)

#READS_MODE#

cfg = NS(trainer=NS(callbacks={"iter_speed": L(IterSpeed)(every_n=4, hit_thres=0)}, logging_iter=4))
group = CallBackGroup(cfg, trainer=None)
model = NS()
group.on_train_start(model, iteration=0)
reads, written = [], []
for it in range(1, 13):
    loss = torch.tensor(float(it))
    Reads.n = 0
    with Reads():
        group.on_training_step_end(model, {}, {"loss": loss}, loss, iteration=it)
    reads.append(Reads.n)
    written.append(len(lines))
group.on_train_end(model, iteration=12)
print(json.dumps(dict(lines=lines, reads=reads, written=written)))
""")


def test_iter_speed_logs_the_logging_step_one_step_late_without_a_read(smoke_tree, tmp_path):
    r = subprocess.run([sys.executable, "-c", DRIVE, str(tmp_path / "pg")], cwd=smoke_tree, env=cpu_env(smoke_tree),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    speed = [line for line in got["lines"] if "iter_speed" in line]
    # iteration 4 starts the clock (no line, as upstream); 8's line at step 9's end, 12's at the end of training
    assert len(speed) == 2, got
    assert speed[0].startswith("8 : iter_speed ") and speed[0].endswith("| Loss: 8.0000"), speed
    assert speed[1].startswith("12 : iter_speed ") and speed[1].endswith("| Loss: 12.0000"), speed
    assert "(mean of the last 4)" in speed[0]
    assert got["written"][7] == got["written"][6] and got["written"][8] == got["written"][7] + 1, got
    # the logging iterations read nothing on the host; the step after reads the copied loss (a host copy)
    assert [got["reads"][i - 1] for i in (4, 8, 12)] == [0, 0, 0], got
