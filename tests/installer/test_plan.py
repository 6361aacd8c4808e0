"""The apply/revert plan (installer/plan.py) on its own, on the REAL upstream sdist's tree: planning never writes
(bytes, modes and mtimes of the tree, and the count of installer file-system operations, are the same before and
after), the same inputs give the same plan, a refusal is data that names the file, and committing a plan
(engine.commit) is the whole apply/revert."""

from __future__ import annotations

import dataclasses
import os
import shutil

import pytest

from inst_helpers import cli, one_error_line, snapshot
from installer import engine, fetch, pin, state
from installer.errors import InstallerError
from installer.plan import Plan, TargetView, plan_apply, plan_revert, revert_paths
from installer.state import EDITS, PRISTINE, STATE_DIR, STATE_FILE


def disk(root) -> dict:
    """Every entry under root: (bytes or None for a directory, st_mode, st_mtime_ns)."""
    out = {}
    for dirpath, dirs, names in os.walk(root):
        for n in dirs + names:
            full = os.path.join(dirpath, n)
            s = os.lstat(full)
            data = None if os.path.isdir(full) else open(full, "rb").read()
            out[os.path.relpath(full, root)] = (data, s.st_mode, s.st_mtime_ns)
    s = os.lstat(root)
    out["."] = (None, s.st_mode, s.st_mtime_ns)
    return out


class NoWrites:
    """Asserts on exit that the tree and the installer's operation counter are unchanged."""

    def __init__(self, root):
        self.root = root

    def __enter__(self):
        self.before, self.ops = disk(self.root), state._OPS[0]
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            assert state._OPS[0] == self.ops, "planning ran a counted file-system operation"
            after = disk(self.root)
            assert after == self.before, sorted(set(after.items()) ^ set(self.before.items()))[:4]


def plan_of(tree, force=False) -> tuple[Plan, dict, object]:
    """(plan, full tree the series builds, upstream) of `apply` on tree, inputs gathered as engine.apply does."""
    cfg = engine.Config(target=str(tree))
    ours = engine.load_ours(cfg)
    st = state.load_state(str(tree))
    if st is None:
        up = engine.pristine_from_tree(str(tree))
    else:
        up = fetch.Upstream(engine.pristine_from_state(str(tree), st, None), **st["source"])
    full, _ = engine.build(up.files, cfg, ours)
    return plan_apply(TargetView(tree), st, up, ours, cfg.patch_dir, pin.active().commit, force), full, up


@pytest.fixture
def tree(tmp_path, pristine):
    t = tmp_path / "t"
    shutil.copytree(pristine, t, symlinks=True)
    return t


def test_plan_on_pristine_tree_writes_series_and_overlay_deletes_nothing(tree):
    with NoWrites(tree):
        plan, full, up = plan_of(tree)
    changed = {p: v for p, v in full.items() if up.files.get(p) != v}
    assert plan.kind == "apply" and plan.refusal is None and not plan.created_target
    assert len(changed) > 20 and plan.n_written == len(changed)
    assert dict(plan.writes) == changed  # every file the tree gets, with its final bytes and mode
    assert plan.deletes == () and plan.deleted == () and plan.edited == () and plan.foreign == ()
    assert dict(plan.backups) == {f"{PRISTINE}/{p}": up.files[p] for p in changed if p in up.files}
    assert plan.ops[-1][0] == STATE_FILE and [p for p, _ in plan.ops].count(STATE_FILE) == 1
    assert "cosmos_predict2" in plan.keep_dirs
    engine.commit(plan)  # the plan is the whole apply: the tree is then what the CLI verifies
    r = cli("verify", "--target", tree)
    assert r.returncode == 0, r.stderr


def test_plan_is_deterministic_and_immutable(tree):
    with NoWrites(tree):
        a, _, _ = plan_of(tree)
        b, _, _ = plan_of(tree)
    assert a == b and a.ops == b.ops and hash(a) == hash(b)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.ops = ()
    engine.commit(a)
    st = state.load_state(str(tree))
    up = engine.pristine_from_state(str(tree), st, None, only=revert_paths(st))
    with NoWrites(tree):
        r1 = plan_revert(TargetView(tree), st, up)
        r2 = plan_revert(TargetView(tree), st, up)
    assert r1 == r2


def test_user_edit_without_force_is_a_refusal_naming_the_file(tree):
    assert cli("apply", "--target", tree).returncode == 0
    st = state.load_state(str(tree))
    edited = sorted(st["backups"])[0]  # a patched upstream file
    with open(tree / edited, "ab") as f:
        f.write(b"# my edit\n")
    mine = (tree / edited).read_bytes()
    with NoWrites(tree):
        plan, full, _ = plan_of(tree)
    assert plan.refusal is not None and edited in plan.refusal.what and plan.ops == ()
    with pytest.raises(InstallerError) as e:
        engine.commit(plan)  # a refused plan is never executed
    assert (tree / edited).read_bytes() == mine
    r = cli("apply", "--target", tree)  # the CLI prints the plan's refusal, word for word
    assert one_error_line(r) == f"error: {e.value}" and "user edits in installer-managed files" in str(e.value)

    with NoWrites(tree):
        forced, _, _ = plan_of(tree, force=True)
    assert forced.refusal is None and forced.kind == "upgrade" and forced.edited == (edited,)
    assert dict(forced.backups)[f"{EDITS}/{edited}"][0] == mine  # the user's bytes are kept for revert
    assert dict(forced.writes) == {edited: full[edited]}


def test_foreign_file_in_the_way_is_a_refusal_and_force_backs_it_up(tree):
    (tree / "train.sh").write_bytes(b"#!/bin/sh\necho mine\n")
    with NoWrites(tree):
        plan, _, _ = plan_of(tree)
    assert plan.refusal is not None and "train.sh" in plan.refusal.what and plan.ops == ()
    r = cli("apply", "--target", tree)
    assert one_error_line(r) == f"error: {plan.refusal.error()}"
    with NoWrites(tree):
        forced, _, _ = plan_of(tree, force=True)
    assert forced.foreign == ("train.sh",)
    assert dict(forced.backups)[f"{PRISTINE}/train.sh"][0] == b"#!/bin/sh\necho mine\n"


def test_revert_plan_restores_upstream_and_its_commit_gives_the_pristine_tree(tree, pristine):
    assert cli("apply", "--target", tree).returncode == 0
    st = state.load_state(str(tree))
    up = engine.pristine_from_state(str(tree), st, None, only=revert_paths(st))
    with NoWrites(tree):
        plan = plan_revert(TargetView(tree), st, up)
    assert plan.kind == "revert" and plan.refusal is None
    assert dict(plan.writes) == {p: up[p] for p in st["files"] if p in up}
    assert set(plan.deletes) == set(st["created"])
    assert all(v is None for p, v in plan.ops if p.startswith(STATE_DIR + "/"))
    assert plan.ops[-1] == (STATE_FILE, None)
    engine.commit(plan)
    assert snapshot(tree) == snapshot(pristine)
