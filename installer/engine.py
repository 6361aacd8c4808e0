"""apply / revert / status / verify over a target tree: plan everything in memory, then one transaction."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from . import digest, fetch, manifest, overlay, patch, paths, pin, state
from .errors import InstallerError
from .state import PRISTINE, STATE_DIR, STATE_FILE


@dataclass
class Config:
    target: str
    patch_dir: str = field(default_factory=paths.patches_dir)
    overlay_dir: str = field(default_factory=paths.overlay_dir)
    launcher: str | None = field(default_factory=paths.launcher_file)
    force: bool = False
    dry_run: bool = False


@dataclass
class Ours:
    names: list
    files: dict  # overlay + train.sh
    series_digest: str


def load_ours(cfg: Config) -> Ours:
    names = patch.read_series(cfg.patch_dir)
    ours = overlay.load(cfg.overlay_dir, cfg.launcher)
    return Ours(names, ours, digest.series_digest(cfg.patch_dir, names, ours))


def short(d: str) -> str:
    return d[:12]


def build(upstream: dict, cfg: Config, ours: Ours) -> tuple[dict, dict]:
    """(full tree after series + overlay, its managed part). Raises on the first hunk that does not apply."""
    full = patch.apply_series(cfg.patch_dir, upstream, ours.names)
    full.update(ours.files)
    entries = manifest.load()
    managed = {p: v for p, v in full.items() if p in ours.files or p not in entries or entries[p].in_sdist}
    return full, managed


def _list(paths_: list, n: int = 5) -> str:
    return ", ".join(paths_[:n]) + (f" and {len(paths_) - n} more" if len(paths_) > n else "")


# ---- reading the target -----------------------------------------------------------------------------------------

def drift(target: str, st: dict) -> list:
    """Managed or written paths whose bytes on disk are not what the installer left there."""
    out = []
    for p, rec in st["files"].items():
        cur = state.read(target, p)
        if cur is None or state.sha256(cur[0]) != rec["sha256"] or cur[1] != rec["mode"]:
            out.append(p)
    for p in st["deleted"]:
        if os.path.lexists(os.path.join(target, p)):
            out.append(p)
    written = set(st["files"])
    for p in st["managed"]:
        if p not in written:
            cur = state.read(target, p)
            if cur is None or not manifest.matches(p, cur[0]):
                out.append(p)
    return sorted(set(out))


def pristine_from_state(target: str, st: dict, source: str | None, only=None) -> dict:
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
            raise InstallerError(f"pristine bytes of {_list(need, 3)} are gone", target,
                                 "pass --source so they can be restored from upstream")
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

def _ops(target: str, desired: dict) -> list:
    """Only what differs from the disk; state.json last so a finished transaction always carries it."""
    ops = []
    for p in sorted(desired, key=lambda x: (x == STATE_FILE, x)):
        want = desired[p]
        cur = state.read(target, p)
        if want is None:
            if cur is not None:
                ops.append((p, None))
        elif cur is None or cur[0] != want[0] or cur[1] & 0o111 != want[1] & 0o111:
            ops.append((p, want))
    return ops


def apply(cfg: Config, source: str, say=print) -> int:
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
    ours = load_ours(cfg)
    st = state.load_state(target) if os.path.isdir(target) else None
    prev_written, prev_created, prev_backups = set(), set(), set()
    user_backups = {}
    if st is not None:
        changed = drift(target, st)
        if st["series_digest"] == ours.series_digest and not changed:
            say(f"already applied (series {short(ours.series_digest)})")
            return 0
        if changed and not cfg.force:
            raise InstallerError(f"user edits in installer-managed files: {_list(changed)}", target,
                                 "move your edits away (e.g. into a patch) or rerun with --force to overwrite them")
        upstream = fetch.Upstream(pristine_from_state(target, st, source if cfg.force else None), **st["source"])
        prev_written, prev_created = set(st["files"]), set(st["created"])
        prev_backups = set(st["backups"])
        user_backups = dict(st.get("user_backups", {}))
    elif _nonempty(target):
        upstream = pristine_from_tree(target)
    else:
        upstream = fetch.fetch(source)
    for w in upstream.warnings:
        say(w)
    full, managed = build(upstream.files, cfg, ours)
    up = upstream.files

    # Files in the way that are neither upstream nor ours
    foreign = []
    for p, want in full.items():
        if p in up or p in prev_written or p in prev_created:
            continue
        cur = state.read(target, p)
        if cur is not None and cur != want:
            foreign.append(p)
    if foreign and not cfg.force:
        raise InstallerError(f"would overwrite {_list(foreign)}, which {'is' if len(foreign) == 1 else 'are'} "
                             "neither upstream nor installed by this overlay", target,
                             "move it away or rerun with --force (the file is then backed up for revert)")
    for p in foreign:
        user_backups[p] = state.read(target, p)[1]

    desired: dict = {}
    for p in set(up) | prev_created | prev_written:
        desired[p] = full.get(p)
    desired.update(full)
    written = {p: v for p, v in full.items() if up.get(p) != v}
    deleted = sorted(p for p in up if p not in full)
    backups = sorted((set(written) & set(up)) | set(deleted))
    for p in prev_backups | set(user_backups):
        desired[f"{PRISTINE}/{p}"] = None
    for p in backups:
        desired[f"{PRISTINE}/{p}"] = up[p]
    for p in foreign:
        desired[f"{PRISTINE}/{p}"] = state.read(target, p)
    for p in list(user_backups):
        if p in foreign:
            continue
        old = state.read(target, f"{PRISTINE}/{p}")  # kept from a previous --force
        if p not in full:  # this version no longer installs a file there: the user's file comes back
            desired[p] = old
            del user_backups[p]
        elif old is not None:
            desired[f"{PRISTINE}/{p}"] = old
    tree = digest.tree_digest(managed)
    new_state = {
        "format": state.FORMAT, "commit": pin.active().commit,
        "source": {"kind": upstream.kind, "identity": upstream.identity},
        "series_digest": ours.series_digest, "series": ours.names, "tree_digest": tree,
        "files": {p: {"sha256": state.sha256(v[0]), "mode": v[1]} for p, v in sorted(written.items())},
        "created": sorted(p for p in full if p not in up), "deleted": deleted, "backups": backups,
        "user_backups": {p: m for p, m in sorted(user_backups.items())},
        "upstream": sorted(up), "managed": sorted(managed),
    }
    desired[STATE_FILE] = (state.state_bytes(new_state), 0o100644)
    ops = _ops(target, desired)
    n_tree = sum(1 for p, _ in ops if not p.startswith(STATE_DIR + "/"))
    if cfg.dry_run:
        say(f"dry run: would write {n_tree} file(s) in {target} (series {short(ours.series_digest)}, "
            f"{len(written)} patched/overlay file(s), {len(deleted)} deleted); nothing was changed")
        for p, v in ops:
            if not p.startswith(STATE_DIR + "/"):
                say(f"  {'delete' if v is None else 'write '} {p}")
        return 0
    created_target = not os.path.isdir(target)
    state.commit(target, ops, "upgrade" if st else "apply", created_target=created_target)
    _prune_created(target, sorted(prev_created - set(full)), list(up))
    verb = "upgraded to" if st else "applied"
    say(f"{verb} series {short(ours.series_digest)} in {target} (upstream from {upstream.kind}): "
        f"{len(ours.names)} patch(es), {len(ours.files)} overlay file(s), tree digest {short(tree)}")
    rec = digest.read_recorded(os.path.join(cfg.patch_dir, "TREE_DIGEST"))
    if rec and rec != tree:
        say(f"warning: tree digest {short(tree)} differs from the recorded {short(rec)} "
            f"({os.path.join(cfg.patch_dir, 'TREE_DIGEST')}); tell the maintainers")
    return 0


# ---- revert / status / verify -----------------------------------------------------------------------------------

def revert(cfg: Config, source: str | None = None, say=print) -> int:
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
    st = state.load_state(target)
    if st is None:
        say(f"nothing to revert: no overlay is applied in {target}")
        return 0
    changed = drift(target, st)
    if changed and not cfg.force:
        raise InstallerError(f"user edits in installer-managed files: {_list(changed)}", target,
                             "move your edits away or rerun revert with --force to discard them")
    ours_paths = set(st["files"]) | set(st["created"]) | set(st["deleted"])
    up = pristine_from_state(target, st, source, only=ours_paths)
    desired = {}
    for p in ours_paths:
        desired[p] = up.get(p)
    for p in st.get("user_backups", {}):
        desired[p] = state.read(target, f"{PRISTINE}/{p}")
    for p in set(st["backups"]) | set(st.get("user_backups", {})):
        desired[f"{PRISTINE}/{p}"] = None
    desired[STATE_FILE] = None
    ops = _ops(target, desired)
    if cfg.dry_run:
        say(f"dry run: would restore {sum(1 for p, _ in ops if not p.startswith(STATE_DIR))} file(s); nothing changed")
        return 0
    state.commit(target, ops, "revert")
    _prune_created(target, st["created"], st["upstream"])
    state.recover(target)  # removes the now empty state directory
    foreign = [p for p in _foreign(target) if p not in st["created"]]
    say(f"reverted {target} to pristine upstream {pin.active().short} ({len(ops) - 1} file operation(s))")
    if foreign:
        say(f"left in place {len(foreign)} file(s) that are not upstream: {_list(foreign, 10)}")
    edited = [p for p in st["managed"] if p not in ours_paths and not manifest.matches(p, (state.read(target, p)
                                                                                          or (b"", 0))[0])]
    if edited:
        say(f"warning: {len(edited)} upstream file(s) still carry your edits (the overlay never touched them): "
            f"{_list(edited, 10)}")
    return 0


def _prune_created(target: str, gone: list, upstream: list) -> None:
    """Remove bytecode of removed overlay modules and directories only the overlay needed (never upstream's)."""
    keep, dirs = set(), set()
    for p in upstream:
        d = os.path.dirname(p)
        while d:
            keep.add(d)
            d = os.path.dirname(d)
    for p in gone:
        if os.path.lexists(os.path.join(target, p)):
            continue
        d = os.path.dirname(p)
        if p.endswith(".py"):  # __pycache__/<stem>.<tag>.pyc is derived from our file
            cache = os.path.join(target, d, "__pycache__")
            pyc = re.compile(re.escape(os.path.basename(p)[:-3]) + r"\.[^.]+(\.opt-\d+)?\.pyc$")
            if os.path.isdir(cache):
                for n in os.listdir(cache):
                    if pyc.match(n):
                        os.unlink(os.path.join(cache, n))
                dirs.add(f"{d}/__pycache__" if d else "__pycache__")
        while d:
            dirs.add(d)
            d = os.path.dirname(d)
    state._prune_dirs(target, [d for d in dirs if d not in keep])


def status(cfg: Config, say=print) -> int:
    target = os.path.abspath(cfg.target)
    if not os.path.isdir(target):
        raise InstallerError("target directory does not exist", target, "pass --target DIR or run apply first")
    if state.interrupted(target):
        say(f"interrupted: an apply/revert was killed midway in {target}; run apply or revert to recover")
        return 1
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
    full, managed = build(pristine_from_state(target, st, None), cfg, ours)
    bad = [p for p, v in sorted(full.items()) if state.read(target, p) != v]
    bad += [p for p in st["deleted"] if os.path.lexists(os.path.join(target, p))]
    if bad:
        raise InstallerError(f"tree differs from this installer's series {short(ours.series_digest)}: {_list(bad)}",
                             target, "run apply to upgrade")
    say(f"ok: {target} equals series {short(ours.series_digest)} over {pin.active().short} "
        f"(tree digest {digest.tree_digest(managed)})")
    return 0


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
