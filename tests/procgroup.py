"""Run a test's subprocess so that none of it outlives the test.

`subprocess.run(..., timeout=...)` kills only the process it started: bash (train.sh) or torchrun dies, and
torchrun's workers live on as orphans holding CPU, memory and ports. torchrun even starts each worker in a session
of its own (torch.distributed.elastic's subprocess handler), so killing the launcher's process group misses them.
`run` therefore starts the command in a new session (start_new_session) with a unique token in its environment,
which bash, torchrun and every worker inherit, and on timeout, on any exception in the waiting test
(KeyboardInterrupt included) and after a normal exit (stragglers) SIGKILLs the process group and every process
that carries the token (found in /proc; psutil's child list where there is no /proc).
Every test that starts torchrun, directly or through train.sh, goes through here:
tests/launcher/launcher_helpers.run_train_sh and tests/training/trainer_runs.run_group.
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid

TOKEN_VAR = "COSMOS_TEST_PROCESS_TOKEN"


def _carrying(token: str) -> list[int]:
    needle = f"{TOKEN_VAR}={token}\0".encode()
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if needle in f.read():
                    pids.append(int(name))
        except OSError:  # gone meanwhile, or not readable
            continue
    return pids


def kill_all(leader: int, token: str) -> None:
    """SIGKILL the leader's process group and every process carrying token, wherever it was reparented."""
    if os.path.isdir("/proc/self"):
        pids = _carrying(token)
    else:  # no /proc: the leader's descendants as psutil sees them now
        try:
            import psutil

            pids = [p.pid for p in psutil.Process(leader).children(recursive=True)]
        except Exception:
            pids = []
    try:
        os.killpg(leader, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # the group is already empty
        pass
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def run(argv: list[str], timeout: float, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Like subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, **kwargs); leaves nothing."""
    token = uuid.uuid4().hex
    env = {**(os.environ if env is None else env), TOKEN_VAR: token}
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                          env=env, **kwargs) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_all(proc.pid, token)
            out, err = proc.communicate()
            raise subprocess.TimeoutExpired(argv, timeout, output=out, stderr=err) from None
        except BaseException:
            kill_all(proc.pid, token)
            proc.wait()
            raise
        finally:
            kill_all(proc.pid, token)  # stragglers of a command that exited (a worker its launcher failed to reap)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)
