"""Crash consistency, tested the way SQLite and ALICE do it: kill the installer after its N-th file-system
operation, for (a sample of) every N, then recover and check the tree.

Every file-system operation of a transaction goes through installer/state.py `_fs`, which counts it; with
`_CRASH_AFTER = N` the process sends itself SIGKILL right after operation N. For each scenario (apply on a pristine
tree, revert, apply --force over user edits, upgrade to a newer series, apply into a new directory) the harness:
  1. runs the command once without a crash: the tree it leaves is AFTER, the tree it started from is BEFORE, and it
     learns K (operations) and C (the count at which the COMMITTED marker was durable);
  2. for each crash point N in 0..K: copies BEFORE, runs the command in a forked child that SIGKILLs itself after
     operation N; checks that `status` says `interrupted` and which way recovery will go (roll forward iff N >= C);
     for every third point also kills the recovery itself at a point; then runs `recover` and checks that the
     tree is byte-equal (contents, x bit, symlinks, directories) to BEFORE or AFTER, that it is AFTER exactly
     when N >= C, and that `status` says which (status says "remove its leftovers" when the journal is gone:
     before it was written, or after the clean-up removed it; the tree is then already what recovery leaves).
COSMOS_OVERLAY_CRASH_POINTS=all enumerates every N; the default (CI) samples POINTS_PER_SCENARIO points per
scenario: the first ones, every point around the commit marker, the last ones, and evenly spaced ones between.
fsync is counted but skipped here (COSMOS_OVERLAY_TEST_NO_FSYNC semantics): a killed process loses nothing that
fsync would keep. The random-kill loop at the end kills real `python -m installer` processes at random times.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from inst_helpers import REPO, cli, edit_as_user, snapshot
from installer import cli as installer_cli
from installer import engine, state
from installer import pin

PIN = pin.default().commit

POINTS_PER_SCENARIO = 36
PATCHES = REPO / "patches" / PIN


def _quiet_main(args) -> int:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return installer_cli.main([str(a) for a in args])


def run_counted(args) -> tuple[int, int, int]:
    """(exit code, operations, count at COMMITTED) of one uncrashed run, in this process."""
    state._OPS[0], state._COMMITTED_AT[0] = 0, -1
    old = state._NO_FSYNC
    state._NO_FSYNC = True
    try:
        rc = _quiet_main(args)
    finally:
        state._NO_FSYNC = old
    return rc, state._OPS[0], state._COMMITTED_AT[0]


def run_crashing(fn, n: int) -> int:
    """fn() in a forked child that SIGKILLs itself after file-system operation n; returns its wait status."""
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            state._OPS[0], state._CRASH_AFTER, state._NO_FSYNC = 0, str(n), True
            rc = fn()
        except BaseException:
            rc = 99
        os._exit(rc if isinstance(rc, int) else 0)
    _, status = os.waitpid(pid, 0)
    return status


def status_line(tree, res) -> tuple[int, str]:
    out = []
    try:
        rc = engine.status(_cfg(tree, res), say=out.append)
    except Exception as e:  # noqa: BLE001 - an error is an answer too
        return 1, f"error: {e}"
    return rc, out[-1]


def _cfg(tree, res) -> engine.Config:
    cfg = engine.Config(target=str(tree))
    if res:
        cfg.patch_dir, cfg.overlay_dir = str(res[1]), str(res[3])
    return cfg


def recover(tree, res) -> tuple[int, list]:
    out = []
    rc = engine.recover(_cfg(tree, res), say=out.append)
    return rc, out


def snap(tree):
    """snapshot(), with the source directory in state.json (an in-place apply records it) made neutral. A target
    that a rolled-back fresh apply leaves as an empty directory counts as absent."""
    s = snapshot(tree)
    if not s:
        return None
    st = s.get(".cosmos-overlay/state.json")
    if st is not None:
        s[".cosmos-overlay/state.json"] = (re.sub(rb'"identity": "/[^"]*"', b'"identity": "TREE"', st[0]), st[1])
    return s


def sample(k: int, c: int) -> list:
    pts = set(range(k + 1))
    if os.environ.get("COSMOS_OVERLAY_CRASH_POINTS", "") == "all":
        return sorted(pts)
    want = int(os.environ.get("COSMOS_OVERLAY_CRASH_POINTS") or POINTS_PER_SCENARIO)
    chosen = {0, 1, 2, 3} | set(range(k - 9, k + 1))
    chosen |= {p for p in range(c - 6, c + 6) if p in pts}
    rest = want - len(chosen)
    if rest > 0:
        step = max(1, k // rest)
        chosen |= set(range(4, k, step))
    return sorted(p for p in chosen if p in pts)


def make_before(kind, tmp_path, pristine, upstream_sdist):
    """(tree, resources args, command args) of one scenario, the tree in its BEFORE state."""
    tree = tmp_path / "before"
    if kind == "fresh":
        return tree, (), ["apply", "--source", upstream_sdist, "--target", tree]
    shutil.copytree(pristine, tree, symlinks=True)
    if kind == "apply":
        return tree, (), ["apply", "--target", tree]
    assert _quiet_main(["apply", "--target", tree]) == 0
    if kind == "revert":
        return tree, (), ["revert", "--target", tree]
    if kind == "force":
        st = state.load_state(str(tree))
        edit_as_user(tree, st, sorted(st["backups"])[0], "/usr/bin/true")
        return tree, (), ["apply", "--force", "--target", tree]
    if kind == "upgrade":
        pd, ov = tmp_path / "patches", tmp_path / "overlay"
        shutil.copytree(PATCHES, pd)
        shutil.copytree(REPO / "overlay", ov, ignore=shutil.ignore_patterns("__pycache__"))
        res = ("--patches-dir", pd, "--overlay-dir", ov)
        assert _quiet_main(["revert", "--target", tree]) == 0
        names = [ln for ln in (pd / "series").read_text().splitlines() if ln and not ln.startswith("#")]
        (pd / "series").write_text("\n".join(names[:-1]) + "\n")  # the old version lacks the last patch ...
        (ov / "cosmos_predict2" / "portable" / "gone_later.py").write_text("OLD = 1\n")  # ... and has one more file
        assert _quiet_main(["apply", "--target", tree, *res]) == 0
        (pd / "series").write_text("\n".join(names) + "\n")
        (ov / "cosmos_predict2" / "portable" / "gone_later.py").unlink()
        (ov / "added_later.txt").write_text("new\n")
        return tree, res, ["apply", "--target", tree, *res]
    raise AssertionError(kind)


def retarget(args, old, new):
    return [new if a == old else a for a in args]


@pytest.mark.parametrize("kind", ["apply", "revert", "force", "upgrade", "fresh"])
def test_every_crash_point_recovers_to_before_or_after(kind, tmp_path, pristine, upstream_sdist):
    before_tree, res, args = make_before(kind, tmp_path, pristine, upstream_sdist)
    before = snap(before_tree)
    before_status = status_line(before_tree, res) if before is not None else (0, "(no tree)")
    ref = tmp_path / "ref"
    if before is not None:
        shutil.copytree(before_tree, ref, symlinks=True)
    rc, k, c = run_counted(retarget(args, before_tree, ref))
    assert rc == 0 and k > 20 and 0 < c <= k, (rc, k, c)
    after = snap(ref)
    after_status = status_line(ref, res)
    assert after != before and after_status[0] == 0
    rng = random.Random(f"{kind}")
    points = sample(k, c)
    for i, n in enumerate(points):
        tree = tmp_path / f"n{n}"
        if before is not None:
            shutil.copytree(before_tree, tree, symlinks=True)
        st = run_crashing(lambda: _quiet_main(retarget(args, before_tree, tree)), n)
        assert os.WIFSIGNALED(st) and os.WTERMSIG(st) == signal.SIGKILL, (kind, n, st)
        if not tree.exists():
            assert n <= 1, (kind, n)  # only a fresh apply killed before its first operation leaves nothing
            continue
        forward = n >= c
        if state.interrupted(str(tree)):
            rc_s, line = status_line(tree, res)
            assert rc_s == 1 and line.startswith("interrupted:"), (kind, n, line)
            if "remove its leftovers" not in line:  # no journal: the tree stands as it is, either way
                assert ("finish it" in line) == forward, (kind, n, c, line)
            if i % 3 == 0:  # a crash during the recovery itself must not change where recovery ends
                run_crashing(lambda: recover(tree, res)[0], rng.randrange(1, 40))
        rc_r, out = recover(tree, res)
        got = snap(tree)
        want = after if forward else before
        assert got == want, (kind, n, c, out, sorted(set((got or {}).items()) ^ set((want or {}).items()))[:6])
        if got is not None:
            assert out[-1] == (after_status if forward else before_status)[1], (kind, n, out)
            assert rc_r == (after_status if forward else before_status)[0], (kind, n, out)
        shutil.rmtree(tree, ignore_errors=True)
    print(f"{kind}: {len(points)} of {k + 1} crash points checked (COMMITTED durable after operation {c})")


def test_random_kills_of_real_processes(tmp_path, pristine):
    """Kill `python -m installer apply|revert` (a real process) at random moments; each time recover and check."""
    tree = tmp_path / "t"
    shutil.copytree(pristine, tree, symlinks=True)
    pristine_snap = snap(tree)
    ref = tmp_path / "ref"
    shutil.copytree(pristine, ref, symlinks=True)
    assert cli("apply", "--target", ref).returncode == 0
    applied_snap = snap(ref)
    rng = random.Random(15)
    outcomes = []
    env = dict(os.environ, COSMOS_OVERLAY_TEST_NO_FSYNC="1")
    for _ in range(int(os.environ.get("COSMOS_OVERLAY_RANDOM_KILLS") or 8)):
        cmd = "apply" if snap(tree) == pristine_snap else "revert"
        p = subprocess.Popen([sys.executable, "-m", "installer", cmd, "--target", str(tree)], cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.1, 0.6))
        p.send_signal(rng.choice([signal.SIGKILL, signal.SIGINT]))
        p.wait()
        r = cli("recover", "--target", tree)
        now = snap(tree)
        assert now in (pristine_snap, applied_snap), r.stdout + r.stderr
        assert r.stdout.splitlines()[-1].startswith("pristine upstream" if now == pristine_snap else "applied ("), \
            r.stdout
        outcomes.append(now == applied_snap)
    print(f"random kills: {len(outcomes)} runs, {sum(outcomes)} ended applied")
