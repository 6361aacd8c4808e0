"""Run a test's subprocess in a process group of its own, and never leave any of it behind.

`subprocess.run(..., timeout=...)` kills only the process it started: bash (train.sh) or torchrun dies, and
torchrun's workers (or torchrun itself, under bash) live on as orphans holding CPU, memory and ports. `run` starts
the command in a new session (start_new_session: its own process group, pgid == its pid) and kills that whole group
on timeout, on any exception in the waiting test (KeyboardInterrupt included) and, after a normal exit, kills
whatever the command left running in its group. Every test that starts torchrun (directly or through train.sh)
goes through here: tests/launcher/launcher_helpers.run_train_sh, tests/training/trainer_runs.run_group.
"""

from __future__ import annotations

import os
import signal
import subprocess


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # the group is already empty
        pass


def run(argv: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """Like subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs), group-safe."""
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                          **kwargs) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc.pid)
            out, err = proc.communicate()
            raise subprocess.TimeoutExpired(argv, timeout, output=out, stderr=err) from None
        except BaseException:
            kill_group(proc.pid)
            proc.wait()
            raise
        finally:
            kill_group(proc.pid)  # stragglers of a command that exited (a worker its launcher failed to reap)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)
