"""The plan of an apply or revert: what the tree must become, decided without writing anything.

`plan_apply` / `plan_revert` take their inputs — the pristine upstream files (bytes, mode), the series and the overlay
(engine.Ours), the target's installer state and a read-only `TargetView` of its files — and return an immutable
`Plan`: every file operation with its final bytes and mode (in the order `state.commit` executes them as one
transaction, state.json last), the backups it keeps for revert, and the refusal found, if any. They never write:
the target is only read, through the view (memoised, so one plan sees one snapshot), and the series' patch files
are only read. engine.py gathers the inputs, asks for a plan, then prints it (--dry-run) or commits it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from . import digest, manifest, patch, state
from .errors import InstallerError
from .state import EDITS, PRISTINE, STATE_DIR, STATE_FILE


def _list(paths_: list, n: int = 5) -> str:
    return ", ".join(paths_[:n]) + (f" and {len(paths_) - n} more" if len(paths_) > n else "")


class TargetView:
    """Read-only view of a target directory; every read is memoised (one plan = one snapshot). No method writes."""

    def __init__(self, target: str):
        self.target = os.path.abspath(target)
        self._read: dict = {}
        self._exact: dict = {}

    def isdir(self) -> bool:
        return os.path.isdir(self.target)

    def read(self, p: str):
        """state.read: (bytes, git-style mode) or None."""
        if p not in self._read:
            self._read[p] = state.read(self.target, p)
        return self._read[p]

    def read_exact(self, p: str):
        """state.read_exact: (bytes, the file's own mode) or None."""
        if p not in self._exact:
            self._exact[p] = state.read_exact(self.target, p)
        return self._exact[p]

    def lexists(self, p: str) -> bool:
        return os.path.lexists(os.path.join(self.target, p))

    def pyc_of(self, gone: list) -> list:
        """Bytecode that Python derived from overlay modules that are going away (__pycache__/<stem>.<tag>.pyc)."""
        out = []
        for p in gone:
            if not p.endswith(".py"):
                continue
            d = os.path.dirname(p)
            cache = os.path.join(self.target, d, "__pycache__")
            pyc = re.compile(re.escape(os.path.basename(p)[:-3]) + r"\.[^.]+(\.opt-\d+)?\.pyc$")
            if os.path.isdir(cache) and not os.path.islink(cache):
                out += [f"{d}/__pycache__/{n}" if d else f"__pycache__/{n}" for n in sorted(os.listdir(cache))
                        if pyc.match(n) and os.path.isfile(os.path.join(cache, n))]
        return out


@dataclass(frozen=True)
class Refusal:
    """Why the plan must not be committed: one `error: <what> (<where>). <what to do>.` line."""
    what: str
    where: str
    todo: str

    def error(self) -> InstallerError:
        return InstallerError(self.what, self.where, self.todo)


@dataclass(frozen=True)
class Plan:
    """What an apply/upgrade/revert does to `target`. kind "noop": already applied, nothing to do."""
    kind: str                           # "apply" | "upgrade" | "revert" | "noop" (also the journal's 'what')
    target: str
    ops: tuple = ()                     # ((path, (bytes, mode) or None), ...) in commit order, state.json last
    keep_dirs: tuple = ()               # directories holding upstream files: a deletion never prunes them
    created_target: bool = False        # the target directory does not exist yet (a roll-back removes it again)
    refusal: Refusal | None = None
    series_digest: str = ""
    tree_digest: str = ""
    n_written: int = 0                  # patched or overlay files that differ from upstream (apply)
    deleted: tuple = ()                 # upstream files the series deletes (apply)
    edited: tuple = ()                  # the user's edits of managed files that --force backs up to EDITS
    foreign: tuple = ()                 # files in the way that --force backs up to PRISTINE
    restored: tuple = ()                # the user's files a revert puts back from EDITS

    @property
    def writes(self) -> tuple:
        """(path, (bytes, mode)) written in the tree itself (outside the state directory)."""
        return tuple((p, v) for p, v in self.ops if v is not None and not p.startswith(STATE_DIR + "/"))

    @property
    def deletes(self) -> tuple:
        """Paths removed from the tree itself (outside the state directory)."""
        return tuple(p for p, v in self.ops if v is None and not p.startswith(STATE_DIR + "/"))

    @property
    def backups(self) -> tuple:
        """(path, (bytes, mode)) kept under the state directory for revert (upstream, foreign and edited files)."""
        return tuple((p, v) for p, v in self.ops if v is not None and p.startswith((PRISTINE + "/", EDITS + "/")))

    def check(self) -> None:
        if self.refusal is not None:
            raise self.refusal.error()


# ---- pure pieces shared with status / verify / digest -----------------------------------------------------------

def build(upstream: dict, patch_dir: str, ours) -> tuple[dict, dict]:
    """(full tree after series + overlay, its managed part). Raises on the first hunk that does not apply."""
    full = patch.apply_series(patch_dir, upstream, ours.names)
    full.update(ours.files)
    entries = manifest.load()
    managed = {p: v for p, v in full.items() if p in ours.files or p not in entries or entries[p].in_sdist}
    return full, managed


def drift(view: TargetView, st: dict) -> list:
    """Managed or written paths whose bytes on disk are not what the installer left there."""
    out = []
    for p, rec in st["files"].items():
        cur = view.read(p)
        if cur is None or state.sha256(cur[0]) != rec["sha256"] or cur[1] != rec["mode"]:
            out.append(p)
    for p in st["deleted"]:
        if view.lexists(p):
            out.append(p)
    written = set(st["files"])
    for p in st["managed"]:
        if p not in written:
            cur = view.read(p)
            if cur is None or not manifest.matches(p, cur[0]):
                out.append(p)
    return sorted(set(out))


def _ops(view: TargetView, desired: dict) -> tuple:
    """Only what differs from the disk (a git mode compares the x bit, any other mode exactly); state.json last."""
    ops = []
    for p in sorted(desired, key=lambda x: (x == STATE_FILE, x)):
        want = desired[p]
        if want is None:
            if view.read(p) is not None:
                ops.append((p, None))
            continue
        git_mode = want[1] in (0o100644, 0o100755)
        cur = view.read(p) if git_mode else view.read_exact(p)
        if cur is None or cur[0] != want[0] or (cur[1] & 0o111 != want[1] & 0o111 if git_mode else cur[1] != want[1]):
            ops.append((p, want))
    return tuple(ops)


def _keep_dirs(upstream_paths) -> tuple:
    return tuple(sorted({d for p in upstream_paths for d in state._ancestors(p)}))


# ---- apply ------------------------------------------------------------------------------------------------------

def check_apply(view: TargetView, st: dict | None, ours, force: bool) -> Plan | None:
    """What apply decides before it needs upstream's bytes: nothing to do (kind "noop"), a refusal, or None (go on)."""
    if st is None:
        return None
    changed = drift(view, st)
    if st["series_digest"] == ours.series_digest and not changed:
        return Plan("noop", view.target, series_digest=ours.series_digest)
    if changed and not force:
        return Plan("upgrade", view.target, refusal=Refusal(
            f"user edits in installer-managed files: {_list(changed)}", view.target,
            "move your edits away (e.g. into a patch) or rerun with --force to overwrite them"))
    return None


def plan_apply(view: TargetView, st: dict | None, upstream, ours, patch_dir: str, commit: str,
               force: bool = False) -> Plan:
    """The apply (st None) or upgrade (st: the target's state) of `ours` over `upstream` (fetch.Upstream: the
    pristine files, path -> (bytes, mode), and where they came from)."""
    early = check_apply(view, st, ours, force)
    if early is not None:
        return early
    target = view.target
    prev_written, prev_created, prev_backups = set(), set(), set()
    user_backups, edits, edited = {}, {}, {}
    if st is not None:
        prev_written, prev_created = set(st["files"]), set(st["created"])
        prev_backups = set(st["backups"])
        user_backups = dict(st.get("user_backups", {}))
        edits = dict(st.get("edits", {}))
        for p in drift(view, st):  # --force: the user's version of every file it overwrites is kept for revert
            cur = view.read_exact(p)
            if cur is not None and cur[1] != 0o040000:
                edited[p] = cur
                edits[p] = cur[1]
    full, managed = build(upstream.files, patch_dir, ours)
    up = upstream.files

    # Files in the way that are neither upstream nor ours
    foreign = []
    for p, want in full.items():
        if p in up or p in prev_written or p in prev_created:
            continue
        cur = view.read(p)
        if cur is not None and cur != want:
            foreign.append(p)
    if foreign and not force:
        return Plan("upgrade" if st else "apply", target, refusal=Refusal(
            f"would overwrite {_list(foreign)}, which {'is' if len(foreign) == 1 else 'are'} "
            "neither upstream nor installed by this overlay", target,
            "move it away or rerun with --force (the file is then backed up for revert)"))
    foreign_bytes = {p: view.read_exact(p) for p in foreign}
    for p in foreign:
        user_backups[p] = foreign_bytes[p][1]

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
        desired[f"{PRISTINE}/{p}"] = foreign_bytes[p]
    for p, v in edited.items():
        desired[f"{EDITS}/{p}"] = v
    for p in list(user_backups):
        if p in foreign:
            continue
        old = view.read_exact(f"{PRISTINE}/{p}")  # kept from a previous --force
        if p not in full:  # this version no longer installs a file there: the user's file comes back
            desired[p] = old
            del user_backups[p]
        elif old is not None:
            desired[f"{PRISTINE}/{p}"] = old
    tree = digest.tree_digest(managed)
    new_state = {
        "format": state.FORMAT, "commit": commit,
        "source": {"kind": upstream.kind, "identity": upstream.identity},
        "series_digest": ours.series_digest, "series": ours.names, "tree_digest": tree,
        "files": {p: {"sha256": state.sha256(v[0]), "mode": v[1]} for p, v in sorted(written.items())},
        "created": sorted(p for p in full if p not in up), "deleted": deleted, "backups": backups,
        "user_backups": {p: m for p, m in sorted(user_backups.items())},
        "edits": {p: m for p, m in sorted(edits.items())},
        "upstream": sorted(up), "managed": sorted(managed),
    }
    for p in view.pyc_of(sorted(prev_created - set(full))):
        desired[p] = None
    desired[STATE_FILE] = (state.state_bytes(new_state), 0o100644)
    return Plan("upgrade" if st else "apply", target, ops=_ops(view, desired), keep_dirs=_keep_dirs(up),
                created_target=not view.isdir(), series_digest=ours.series_digest, tree_digest=tree,
                n_written=len(written), deleted=tuple(deleted), edited=tuple(sorted(edited)),
                foreign=tuple(foreign))


# ---- revert -----------------------------------------------------------------------------------------------------

def check_revert(view: TargetView, st: dict, force: bool) -> Plan | None:
    """What revert decides before it needs upstream's bytes: a refusal, or None (go on)."""
    changed = drift(view, st)
    if changed and not force:
        return Plan("revert", view.target, refusal=Refusal(
            f"user edits in installer-managed files: {_list(changed)}", view.target,
            "move your edits away or rerun revert with --force to discard them"))
    return None


def revert_paths(st: dict) -> set:
    """The tree paths an apply wrote, created or deleted: what a revert restores (from upstream's bytes)."""
    return set(st["files"]) | set(st["created"]) | set(st["deleted"])


def plan_revert(view: TargetView, st: dict, up: dict, force: bool = False) -> Plan:
    """Back to pristine upstream: `up` holds upstream's bytes of (at least) revert_paths(st) that upstream has."""
    early = check_revert(view, st, force)
    if early is not None:
        return early
    ours_paths = revert_paths(st)
    desired = {}
    for p in ours_paths:
        desired[p] = up.get(p)
    for p in st.get("user_backups", {}):
        desired[p] = view.read_exact(f"{PRISTINE}/{p}")
    restored = []
    for p in st.get("edits", {}):
        v = view.read_exact(f"{EDITS}/{p}")
        if v is not None and v[1] != 0o040000:
            desired[p] = v
            restored.append(p)
        desired[f"{EDITS}/{p}"] = None
    for p in set(st["backups"]) | set(st.get("user_backups", {})):
        desired[f"{PRISTINE}/{p}"] = None
    for p in view.pyc_of([p for p in st["created"] if desired.get(p) is None]):
        desired[p] = None
    desired[STATE_FILE] = None
    return Plan("revert", view.target, ops=_ops(view, desired), keep_dirs=_keep_dirs(st["upstream"]),
                series_digest=st["series_digest"], tree_digest=st["tree_digest"], restored=tuple(restored))
