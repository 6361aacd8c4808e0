"""apply / revert / status / verify over a target tree: gather the inputs, plan in memory (plan.py: pure, writes
nothing), then commit the plan as one transaction (commit() here, over state.commit)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from . import digest, fetch, manifest, overlay, patch, paths, pin, state
from .errors import InstallerError
from .plan import Plan, TargetView, _list, check_apply, check_revert, plan_apply, plan_revert, revert_paths
from .plan import build as _build
from .plan import drift as _drift
from .state import EDITS, PRISTINE, STATE_DIR, STATE_FILE


@dataclass
class Config:
    target: str
    patch_dir: str = field(default_factory=paths.patches_dir)
    overlay_dir: str = field(default_factory=paths.overlay_dir)
    force: bool = False
    dry_run: bool = False


@dataclass
class Ours:
    names: list
    files: dict  # overlay/
    series_digest: str


def load_ours(cfg: Config) -> Ours:
    names = patch.read_series(cfg.patch_dir)
    ours = overlay.load(cfg.overlay_dir)
    return Ours(names, ours, digest.series_digest(cfg.patch_dir, names, ours))


def short(d: str) -> str:
    return d[:12]


def build(upstream: dict, cfg: Config, ours: Ours) -> tuple[dict, dict]:
    """(full tree after series + overlay, its managed part). Raises on the first hunk that does not apply."""
    return _build(upstream, cfg.patch_dir, ours)


# ---- reading the target -----------------------------------------------------------------------------------------

def drift(target: str, st: dict) -> list:
    """Managed or written paths whose bytes on disk are not what the installer left there."""
    return _drift(TargetView(target), st)


def pristine_from_state(target: str, st: dict, source: str | None, only=None,
                        todo: str = "pass --source so they can be restored from upstream") -> dict:
    """The upstream files as they were before apply: backups for what we changed, the disk for the rest."""
    up, need = {}, []
    entries = manifest.load()
    for p in st["upstream"]:
        if only is not None and p not in only:
            continue
        cur = state.read(target, os.path.join(PRISTINE, p)) if p in st["backups"] else state.read(target, p)
        if cur is not None and manifest.matches(p, cur[0]):
            up[p] = (cur[0], entries[p].mode)
        elif entries[p].in_sdist:
            need.append(p)
    if need:  # only reachable with --force over user edits of untouched library files
        if source is None:
            raise InstallerError(f"pristine bytes of {_list(need, 3)} are gone", target, todo)
        fetched = fetch.fetch(source).files
        for p in need:
            up[p] = fetched[p]
    return up


def _foreign(target: str) -> list:
    """Files of a directory that are not upstream files (state dir and .git excluded)."""
    entries = manifest.load()
    out = []
    for root, dirs, names in os.walk(target):
        rel_root = os.path.relpath(root, target).replace(os.sep, "/")
        if rel_root == ".":
            dirs[:] = [d for d in dirs if d not in (".git", STATE_DIR)]
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for n in names:
            rel = n if rel_root == "." else f"{rel_root}/{n}"
            if rel not in entries:
                out.append(rel)
    return sorted(out)


def _nonempty(target: str) -> bool:
    return os.path.isdir(target) and any(n != STATE_DIR for n in os.listdir(target))


def pristine_from_tree(target: str) -> fetch.Upstream:
    entries = manifest.load()
    bad = []
    for p in manifest.library_paths():
        cur = state.read(target, p)
        if cur is None or not manifest.matches(p, cur[0]):
            bad.append(p)
    if bad:
        n_ok = len(manifest.library_paths()) - len(bad)
        what = ("target directory exists and is not a cosmos-predict2 tree" if n_ok == 0 else
                f"target is not pristine cosmos-predict2@{pin.active().short}: {_list(bad, 3)} "
                f"{'is' if len(bad) == 1 else 'are'} missing or changed")
        raise InstallerError(what, target, "choose an empty or new --target, or restore the upstream files")
    files = {}
    for p, e in entries.items():
        cur = state.read(target, p)
        if cur is not None and manifest.matches(p, cur[0]):
            files[p] = (cur[0], e.mode)
    return fetch.Upstream(files, "tree", os.path.abspath(target))


# ---- apply ------------------------------------------------------------------------------------------------------

def commit(plan: Plan) -> None:
    """Execute a plan: its operations as one crash-consistent transaction (state.commit: journal, then the
    txn/COMMITTED marker). Directories it empties go too, except those that hold upstream files of this tree."""
    plan.check()
    state.commit(plan.target, list(plan.ops), plan.kind, created_target=plan.created_target,
                 keep_dirs=set(plan.keep_dirs))


def _check_target(cfg: Config) -> None:
    """Refuse a target inside this checkout (or its patches/overlay), or one that contains them."""
    t = os.path.realpath(os.path.abspath(cfg.target))
    root = paths.resource_root()
    allowed = os.path.realpath(os.path.join(root, "cosmos-predict2"))  # the default target, git-ignored
    for d in {os.path.realpath(x) for x in (root, cfg.overlay_dir, cfg.patch_dir) if x}:
        inside = t == d or t.startswith(d + os.sep)
        if (inside and t != allowed) or d.startswith(t + os.sep):
            raise InstallerError(f"target {'is inside' if inside else 'contains'} the overlay's own files ({d})",
                                 cfg.target, "choose a --target outside this checkout (./cosmos-predict2 is fine)")


def _orphans(target: str) -> None:
    """Backups without state.json: never delete them, never pretend the tree is pristine."""
    left = state.leftovers(target)
    if left and not os.path.lexists(os.path.join(target, STATE_FILE)):
        raise InstallerError(f"installer state {STATE_FILE} is missing but {len(left)} backup file(s) remain "
                             f"({_list(left, 3)})", target,
                             "nothing was changed; restore state.json from a backup, or copy the files under "
                             f"{STATE_DIR}/pristine and {STATE_DIR}/edits back by hand and then remove {STATE_DIR}")


def apply(cfg: Config, source: str, say=print) -> int:
    _check_target(cfg)
    with state.locked(cfg.target):
        return _apply(cfg, source, say)


def _apply(cfg: Config, source: str, say=print) -> int:
    target = os.path.abspath(cfg.target)
    if os.path.exists(target) and not os.path.isdir(target):
        raise InstallerError("target is a file, not a directory", target, "choose another --target")
    if os.path.isdir(target):
        if cfg.dry_run and state.interrupted(target):
            raise InstallerError("an apply/revert was interrupted", target,
                                 "run apply or revert without --dry-run to recover first")
        msg = state.recover(target)
        if msg:
            say(f"note: {msg} ({target})")
        _orphans(target)
    ours = load_ours(cfg)
    st = state.load_state(target) if os.path.isdir(target) else None
    view = TargetView(target)
    early = check_apply(view, st, ours, cfg.force)  # before fetching anything: nothing to do, or a refusal
    if early is not None:
        early.check()
        say(f"already applied (series {short(ours.series_digest)})")
        return 0
    if st is not None:
        upstream = fetch.Upstream(pristine_from_state(target, st, source if cfg.force else None), **st["source"])
    elif _nonempty(target):
        upstream = pristine_from_tree(target)
    else:
        upstream = fetch.fetch(source)
    for w in upstream.warnings:
        say(w)
    plan = plan_apply(view, st, upstream, ours, cfg.patch_dir, pin.active().commit, cfg.force)
    plan.check()
    if cfg.dry_run:
        n_tree = sum(1 for p, _ in plan.ops if not p.startswith(STATE_DIR + "/"))
        say(f"dry run: would write {n_tree} file(s) in {target} (series {short(ours.series_digest)}, "
            f"{plan.n_written} patched/overlay file(s), {len(plan.deleted)} deleted); nothing was changed")
        for p, v in plan.ops:
            if not p.startswith(STATE_DIR + "/"):
                say(f"  {'delete' if v is None else 'write '} {p}")
        return 0
    commit(plan)
    verb = "upgraded to" if st else "applied"
    if plan.edited:
        say(f"backed up your version of {len(plan.edited)} file(s) that --force overwrote to "
            f"{os.path.join(target, EDITS)}/ (revert puts them back): {_list(list(plan.edited), 10)}")
    if plan.foreign:
        say(f"backed up {len(plan.foreign)} file(s) of yours that were in the way to "
            f"{os.path.join(target, PRISTINE)}/ (revert puts them back): {_list(list(plan.foreign), 10)}")
    tree = plan.tree_digest
    say(f"{verb} series {short(ours.series_digest)} in {target} (upstream from {upstream.kind}): "
        f"{len(ours.names)} patch(es), {len(ours.files)} overlay file(s), tree digest {short(tree)}")
    rec = digest.read_recorded(os.path.join(cfg.patch_dir, "TREE_DIGEST"))
    if rec and rec != tree:
        say(f"warning: tree digest {short(tree)} differs from the recorded {short(rec)} "
            f"({os.path.join(cfg.patch_dir, 'TREE_DIGEST')}); tell the maintainers")
    return 0


# ---- revert / status / verify -----------------------------------------------------------------------------------

def revert(cfg: Config, source: str | None = None, say=print) -> int:
    _check_target(cfg)
    with state.locked(cfg.target):
        return _revert(cfg, source, say)


def _revert(cfg: Config, source: str | None = None, say=print) -> int:
    target = os.path.abspath(cfg.target)
    if not os.path.isdir(target):
        raise InstallerError("target directory does not exist", target, "pass --target DIR")
    if cfg.dry_run and state.interrupted(target):
        raise InstallerError("an apply/revert was interrupted", target, "run revert without --dry-run to recover")
    msg = state.recover(target) if not cfg.dry_run else None
    if msg:
        say(f"note: {msg} ({target})")
    _orphans(target)
    st = state.load_state(target)
    if st is None:
        try:
            pristine_from_tree(target)
        except InstallerError as e:
            raise InstallerError(f"nothing to revert: no installer state ({STATE_FILE}), and {e.what}", target,
                                 "restore state.json from a backup, or restore the upstream files by hand "
                                 "(apply --source ... into a new --target gives you pristine copies)") from None
        say(f"nothing to revert: no overlay is applied in {target}")
        return 0
    view = TargetView(target)
    early = check_revert(view, st, cfg.force)  # before fetching anything
    if early is not None:
        early.check()
    ours_paths = revert_paths(st)
    up = pristine_from_state(target, st, source, only=ours_paths)
    plan = plan_revert(view, st, up, cfg.force)
    plan.check()
    ops, restored = plan.ops, list(plan.restored)
    if cfg.dry_run:
        say(f"dry run: would restore {sum(1 for p, _ in ops if not p.startswith(STATE_DIR))} file(s); nothing changed")
        return 0
    commit(plan)
    foreign = [p for p in _foreign(target) if p not in st["created"] or p in restored]
    say(f"reverted {target} to pristine upstream {pin.active().short} ({len(ops) - 1} file operation(s))")
    if restored:
        say(f"put back your version of {len(restored)} file(s) that apply --force had backed up: "
            f"{_list(sorted(restored), 10)}")
    if foreign:
        say(f"left in place {len(foreign)} file(s) that are not upstream: {_list(foreign, 10)}")
    edited = [p for p in st["managed"] if p not in ours_paths and not manifest.matches(p, (state.read(target, p)
                                                                                          or (b"", 0))[0])]
    if edited:
        say(f"warning: {len(edited)} upstream file(s) still carry your edits (the overlay never touched them): "
            f"{_list(edited, 10)}")
    return 0


def status(cfg: Config, say=print) -> int:
    target = os.path.abspath(cfg.target)
    if not os.path.isdir(target):
        raise InstallerError("target directory does not exist", target, "pass --target DIR or run apply first")
    if state.interrupted(target):
        will = {"roll forward": "finish it (it had completed)",
                "roll back": "roll it back (the tree returns to what it was before)",
                "clean up": "remove its leftovers (nothing in the tree to undo)"}[state.pending(target)]
        say(f"interrupted: an apply/revert was killed midway in {target}; run recover (or apply or revert) to {will}")
        return 1
    _orphans(target)
    st = state.load_state(target)
    if st is None:
        pristine_from_tree(target)  # raises when this is not the upstream tree
        say(f"pristine upstream cosmos-predict2@{pin.active().short} (no overlay applied)")
        return 0
    changed = drift(target, st)
    if changed:
        say(f"drifted: {len(changed)} installer-managed file(s) changed since apply: {_list(changed, 10)}")
        return 1
    line = f"applied (series {short(st['series_digest'])}, tree digest {short(st['tree_digest'])})"
    try:
        cur = load_ours(cfg).series_digest
        if cur != st["series_digest"]:
            line += f"; this installer has series {short(cur)}: run apply to upgrade"
    except InstallerError:
        pass
    say(line)
    return 0


def verify(cfg: Config, say=print) -> int:
    """0 only when the tree equals exactly what this installer's series produces from upstream."""
    target = os.path.abspath(cfg.target)
    st = _require_applied(target, "run apply first")
    ours = load_ours(cfg)
    changed = drift(target, st)
    if changed:
        raise InstallerError(f"tree differs from what apply wrote: {_list(changed)}", target,
                             "run apply --force to restore, or revert")
    full, managed = build(pristine_from_state(target, st, None, todo="run 'apply --force --source pypi' (or "
                                              "another --source) to restore them"), cfg, ours)
    bad = [p for p, v in sorted(full.items()) if state.read(target, p) != v]
    bad += [p for p in st["deleted"] if os.path.lexists(os.path.join(target, p))]
    if bad:
        raise InstallerError(f"tree differs from this installer's series {short(ours.series_digest)}: {_list(bad)}",
                             target, "run apply to upgrade")
    say(f"ok: {target} equals series {short(ours.series_digest)} over {pin.active().short} "
        f"(tree digest {digest.tree_digest(managed)})")
    return 0


def recover(cfg: Config, say=print) -> int:
    """Finish or roll back an interrupted apply/revert, then say what the tree is (status)."""
    target = os.path.abspath(cfg.target)
    if not os.path.isdir(target):
        raise InstallerError("target directory does not exist", target, "pass --target DIR")
    with state.locked(target):
        msg = state.recover(target)
    say(f"{msg} ({target})" if msg else f"nothing to recover in {target}")
    if not os.path.isdir(target) or not os.listdir(target):
        how = "empty" if os.path.isdir(target) else "gone"
        say(f"no tree: the interrupted apply had created {target} and it is {how} again (apply installs one)")
        return 0
    return status(cfg, say)


def _require_applied(target: str, todo: str) -> dict:
    """The state of a tree that an apply completed on, or one clear error saying why there is none."""
    if not os.path.isdir(target):
        raise InstallerError("target directory does not exist", target, "pass --target DIR")
    if state.interrupted(target):
        raise InstallerError("an apply/revert was interrupted", target, "run apply or revert to recover")
    st = state.load_state(target)
    if st is None:
        raise InstallerError("no overlay is applied", target, todo)
    return st


def tree_digest_of(target: str) -> str:
    st = _require_applied(target, "run apply first, or use --from-source")
    files = {}
    for p in st["managed"]:
        cur = state.read(target, p)
        if cur is None:
            raise InstallerError(f"managed file {p} is missing", target, "run apply --force or revert")
        files[p] = cur
    return digest.tree_digest(files)
