"""Tests never leave processes behind: a timed-out run is killed with its whole process group (tests/procgroup.py).

Processes are found by a marker in their environment (inherited by bash, torchrun and every worker), read from
/proc, so the check sees exactly this run's processes and nothing else on the machine.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid

import pytest

from launcher_helpers import SMOKE, run_train_sh
from tests import procgroup

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")


def alive_with(marker: str) -> list[int]:
    """pids (not zombies) whose environment holds marker."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if marker.encode() not in f.read():
                    continue
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:  # exited meanwhile, or not ours to read
            continue
        if state not in ("Z", "X"):
            found.append(int(pid))
    return found


def gone_soon(marker: str, within: float = 10.0) -> list[int]:
    deadline = time.monotonic() + within
    while (left := alive_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


SPAWN = "sleep 120 & wait"  # bash with a grandchild, the shape of train.sh -> torchrun -> workers


def test_plain_subprocess_run_orphans_the_grandchild_procgroup_does_not():
    marker = f"COSMOS_PROCGROUP_TEST={uuid.uuid4().hex}"
    env = {**os.environ, marker.split("=")[0]: marker.split("=")[1]}
    with pytest.raises(subprocess.TimeoutExpired):
        subprocess.run(["bash", "-c", SPAWN], env=env, timeout=1, capture_output=True)
    orphans = alive_with(marker)
    try:
        assert orphans, "subprocess.run's timeout killed the grandchild too: this test would prove nothing"
    finally:
        for pid in orphans:
            os.kill(pid, 9)
    marker = f"COSMOS_PROCGROUP_TEST={uuid.uuid4().hex}"
    env = {**os.environ, marker.split("=")[0]: marker.split("=")[1]}
    with pytest.raises(subprocess.TimeoutExpired):
        procgroup.run(["bash", "-c", SPAWN], env=env, timeout=1)
    assert gone_soon(marker) == []


def test_timed_out_training_leaves_no_process(launch_tree, tmp_path):
    """A real train.sh -> torchrun -> worker run cut off by the test's timeout: nothing of it survives."""
    for timeout in (20, 45, 90):  # long enough that the worker is up (machines under load start slowly)
        marker = uuid.uuid4().hex
        with pytest.raises(subprocess.TimeoutExpired) as e:
            run_train_sh([f"--EXP={SMOKE['v2w_2b']}", "--", "trainer.max_iter=1000"], tree=launch_tree,
                         env={"IMAGINAIRE_OUTPUT_ROOT": str(tmp_path / marker), "COSMOS_DEVICE": "cpu",
                              "COSMOS_PROCGROUP_TEST": marker},
                         script=os.path.join(launch_tree, "train.sh"), timeout=timeout)
        assert gone_soon(marker) == [], "processes of the timed-out run are still alive"
        if "process group up" in (e.value.output or ""):  # the worker had started: the kill reached it
            return
    pytest.fail(f"the training worker never started within {timeout} s; output:\n{(e.value.output or '')[-2000:]}")


def test_every_test_that_starts_torchrun_goes_through_procgroup():
    """Static guard: a test module that launches torch.distributed.run (or train.sh) uses the group-safe runner."""
    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    offenders = []
    for root, _, files in os.walk(tests):
        for name in files:
            path = os.path.join(root, name)
            if not name.endswith(".py") or name == "procgroup.py" or path == os.path.abspath(__file__):
                continue
            text = open(path, encoding="utf-8").read()
            if '"torch.distributed.run"' in text and "procgroup" not in text and "run_group" not in text:
                offenders.append(os.path.relpath(path, tests))
    assert offenders == []
