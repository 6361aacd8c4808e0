"""LossLog without a host read per step (patches loss-log-no-host-read-per-step, loss-log-reads-one-step-late,
loss-log-reads-without-wait),
driven through upstream's own CallBackGroup in the patched tree, one gloo process: non-finite losses are left out of
the average exactly as upstream's skip did, each is reported (upstream's message) at the step after the next logging
iteration or at the end of training, no step reads anything on the host before its backward, and only the step
after a logging iteration reads at its end (the logging step's figures, which the device is past by then)."""

from __future__ import annotations

import json
import subprocess
import sys

from .trainer_runs import cpu_env, with_reads_mode

DRIVE = with_reads_mode(r"""
import json, math, sys
import torch, torch.distributed as dist
from types import SimpleNamespace as NS
from imaginaire.lazy_config import LazyCall as L
from imaginaire.utils import log
from imaginaire.utils.callback import CallBackGroup
from cosmos_predict2.callbacks.loss_log import LossLog

dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0, world_size=1)
messages = []
log.critical = lambda msg, rank0_only=True: messages.append(msg)
stats = []
import cosmos_predict2.callbacks.loss_log as ll
log_due = ll.LossLog._log_due
def recording_log_due(self):  # the figures a log read, when it read them
    got = log_due(self)
    if got is not None:
        stats.append(list(got))
    return got
ll.LossLog._log_due = recording_log_due

#READS_MODE#

cfg = NS(trainer=NS(callbacks={"loss_log": L(LossLog)()}, logging_iter=4))
group = CallBackGroup(cfg, trainer=None)
model = NS(is_image_batch=lambda batch: True)
losses = [1.0, float("nan"), 3.0, 5.0, float("inf"), 2.0]
reads, reads_before_backward, logged = [], [], []
for it, v in enumerate(losses, 1):
    loss = torch.tensor(v)
    Reads.n = 0
    with Reads():
        group.on_before_backward(model, loss, iteration=it)
    reads_before_backward.append(Reads.n)
    Reads.n = 0
    with Reads():
        group.on_training_step_end(model, {}, {"loss": torch.tensor([v, v])}, loss, iteration=it)
    reads.append(Reads.n)
    logged.append((sum(m.startswith("Unstable") for m in messages), len(stats)))
group.on_train_end(model, iteration=len(losses))
print(json.dumps(dict(messages=messages, stats=stats, reads=reads, reads_before_backward=reads_before_backward,
                      logged=logged)))
""")


def test_loss_log_keeps_nonfinite_losses_out_without_a_read_per_step(smoke_tree, tmp_path):
    r = subprocess.run([sys.executable, "-c", DRIVE, str(tmp_path / "pg")], cwd=smoke_tree, env=cpu_env(smoke_tree),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    # iterations 1-4 logged for 4: the nan of iteration 2 left out, mean of 1, 3, 5; 3 finite steps counted
    assert got["stats"] == [[3.0, 3]], got
    # no read before any backward (upstream read the loss there on logging iterations); at step ends only at 5, the
    # step after the log: the finite flags, the count and the average of iterations 1-4, one step late
    assert got["reads_before_backward"] == [0] * 6, got
    assert got["reads"][:4] == [0, 0, 0, 0] and got["reads"][4] > 0 and got["reads"][5] == 0, got
    assert [n_stats for _, n_stats in got["logged"]] == [0, 0, 0, 0, 1, 1], got
    assert [n_msgs for n_msgs, _ in got["logged"]][3:5] == [0, 1], got  # iteration 2's nan reported at step 5
    unstable = [m for m in got["messages"] if m.startswith("Unstable loss")]
    assert len(unstable) == 2, got
    assert unstable[0].startswith("Unstable loss nan at iteration 2 with is_image_batch: True"), unstable
    assert "reported at iteration 4" in unstable[0]
    assert unstable[1].startswith("Unstable loss inf at iteration 5"), unstable  # at the end of training
    assert "reported at iteration 6" in unstable[1]


LONG = r"""
import json, sys
import torch, torch.distributed as dist
from types import SimpleNamespace as NS
from imaginaire.lazy_config import LazyCall as L
from imaginaire.utils.callback import CallBackGroup
import cosmos_predict2.callbacks.loss_log as ll

dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0, world_size=1)
stats = []
log_due = ll.LossLog._log_due
ll.LossLog._log_due = lambda self: (lambda got: stats.append(list(got)) if got else None)(log_due(self))
cfg = NS(trainer=NS(callbacks={"loss_log": L(ll.LossLog)()}, logging_iter=1000))
group = CallBackGroup(cfg, trainer=None)
model = NS(is_image_batch=lambda batch: False)
for it in range(1, 1002):
    loss = torch.tensor(2.0)
    group.on_training_step_end(model, {}, {"loss": torch.tensor([2.0])}, loss, iteration=it)
group.on_train_end(model, iteration=1001)
print(json.dumps(stats))
"""


def test_logging_iteration_right_after_the_1000_step_report(smoke_tree, tmp_path):
    """LossLog reports unstable losses every 1000 steps of a long logging interval; a logging iteration on that very
    step finds no checks left and still logs the interval's average (1000 finite steps)."""
    r = subprocess.run([sys.executable, "-c", LONG, str(tmp_path / "pg")], cwd=smoke_tree, env=cpu_env(smoke_tree),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == [[2.0, 1000]]
