"""State and crash-safe writes inside the target tree (.cosmos-overlay/).

Writes go through a transaction: every new file is staged under .cosmos-overlay/txn/new, then a journal is
written atomically, then each target is swapped in by rename (the old file moves to txn/old first), then a DONE
marker, then txn/ is removed. Any later command that finds txn/ rolls back (journal without DONE: the old files
move back, new ones go) or finishes the clean-up (DONE present). A kill -9 therefore never leaves a
half-applied tree that claims to be applied. (Staged bytes are not fsynced one by one: this protects against a
killed process, not against power loss in the middle of an apply.)

Test hooks (documented, used by tests/installer): COSMOS_OVERLAY_TEST_FAIL_AT=N raises OSError(ENOSPC) before the
N-th swap (0-based); COSMOS_OVERLAY_TEST_KILL_AT=N sends SIGKILL to this process before the N-th swap.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import signal

from .errors import InstallerError

STATE_DIR = ".cosmos-overlay"
STATE_FILE = f"{STATE_DIR}/state.json"
PRISTINE = f"{STATE_DIR}/pristine"
TXN = f"{STATE_DIR}/txn"
FORMAT = 1


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def disk_mode(full: str) -> int:
    return 0o100755 if os.stat(full).st_mode & 0o111 else 0o100644


def read(target: str, path: str):
    """(bytes, mode) of target/path, or None when absent (a symlink counts as present and foreign)."""
    full = os.path.join(target, path)
    if os.path.islink(full):
        return (b"\0symlink:" + os.readlink(full).encode(), 0o120000)
    if os.path.isdir(full):
        return (b"\0directory", 0o040000)
    if not os.path.isfile(full):
        return None
    with open(full, "rb") as f:
        return f.read(), disk_mode(full)


def load_state(target: str) -> dict | None:
    full = os.path.join(target, STATE_FILE)
    if not os.path.isfile(full):
        return None
    try:
        with open(full, encoding="utf-8") as f:
            st = json.load(f)
        if st.get("format") != FORMAT:
            raise ValueError(f"format {st.get('format')}")
        return st
    except (ValueError, OSError) as e:
        raise InstallerError(f"unreadable installer state: {e}", full,
                             "restore it from a backup or start from a fresh target directory") from None


def state_bytes(st: dict) -> bytes:
    return (json.dumps(st, indent=1, sort_keys=True) + "\n").encode()


def interrupted(target: str) -> bool:
    return os.path.isdir(os.path.join(target, TXN))


def _atomic_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _prune_dirs(target: str, dirs) -> None:
    for d in sorted(dirs, key=lambda x: -x.count("/")):
        try:
            os.rmdir(os.path.join(target, d))
        except OSError:
            pass  # not empty or gone: keep it


def recover(target: str) -> str | None:
    """Finish or roll back an interrupted transaction. Returns a message when something was done."""
    txn = os.path.join(target, TXN)
    if not os.path.isdir(txn):
        sd = os.path.join(target, STATE_DIR)
        if os.path.isdir(sd) and not os.path.isfile(os.path.join(target, STATE_FILE)):
            shutil.rmtree(sd)  # leftover of a finished revert
        return None
    journal = os.path.join(txn, "journal.json")
    if os.path.isfile(os.path.join(txn, "DONE")):
        msg = "finished the clean-up of a completed operation that was interrupted"
    elif os.path.isfile(journal):
        with open(journal, encoding="utf-8") as f:
            j = json.load(f)
        for i, op in enumerate(j["ops"]):
            full = os.path.join(target, op["path"])
            old = os.path.join(txn, "old", str(i))
            if os.path.lexists(old):
                os.makedirs(os.path.dirname(full), exist_ok=True)
                os.replace(old, full)
            elif not op["had_old"] and os.path.lexists(full):
                os.unlink(full)
        _prune_dirs(target, j["new_dirs"])
        msg = f"rolled back an interrupted {j.get('what', 'operation')}; the tree is as it was before it"
    else:
        msg = "discarded an interrupted operation that had not touched the tree yet"
    shutil.rmtree(txn)
    _prune_dirs(target, [STATE_DIR])
    if os.path.isfile(os.path.join(target, STATE_DIR, "created-target")):
        os.unlink(os.path.join(target, STATE_DIR, "created-target"))
        _prune_dirs(target, [STATE_DIR])
        try:
            os.rmdir(target)  # we created it for this operation and it is empty again
        except OSError:
            pass
    return msg


_HELD: dict = {}


@contextlib.contextmanager
def locked(target: str):
    """Exclusive lock on the target directory for one command (kill -9 releases it). No-op if it does not exist."""
    key = os.path.abspath(target)
    if key in _HELD or not os.path.isdir(key):
        yield
        return
    try:
        import fcntl
    except ImportError:  # not POSIX: no concurrent-run protection
        yield
        return
    fd = os.open(key, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise InstallerError("another installer command is running on this tree", key,
                                 "wait for it to finish, then retry") from None
        _HELD[key] = fd
        yield
    finally:
        _HELD.pop(key, None)
        os.close(fd)


def _check_inside(target: str, path: str) -> None:
    """Refuse writing through a symlinked directory that leads out of the tree."""
    real_root = os.path.realpath(target)
    parent = os.path.realpath(os.path.join(target, os.path.dirname(path)))
    if parent != real_root and not parent.startswith(real_root + os.sep):
        raise InstallerError(f"{path} would be written outside the tree through a symlink", target,
                             "replace the symlinked directory by a real one or choose another --target")


def _hook(name: str, i: int) -> None:
    v = os.environ.get(name)
    if v is not None and int(v) == i:
        if name.endswith("KILL_AT"):
            os.kill(os.getpid(), signal.SIGKILL)
        raise OSError(errno.ENOSPC, "No space left on device (test hook)")


def commit(target: str, ops: list, what: str, created_target: bool = False) -> None:
    """ops: [(path, (bytes, mode) or None)] in order. All of them happen, or none (also across kill -9)."""
    for path, _ in ops:
        _check_inside(target, path)
        full = os.path.join(target, path)
        if os.path.isdir(full) and not os.path.islink(full):  # never swap (and later delete) a whole directory
            raise InstallerError(f"a directory is in the way of file {path}", target, "move that directory away")
    os.makedirs(os.path.join(target, STATE_DIR), exist_ok=True)
    with locked(target):
        _commit(target, ops, what, created_target)


def _commit(target: str, ops: list, what: str, created_target: bool) -> None:
    txn = os.path.join(target, TXN)
    new_dirs = set()
    try:
        os.makedirs(os.path.join(txn, "new"))
        os.makedirs(os.path.join(txn, "old"))
        if created_target:  # so a rollback also removes the directory we created
            open(os.path.join(target, STATE_DIR, "created-target"), "w").close()
        for i, (path, content) in enumerate(ops):
            if content is not None:
                staged = os.path.join(txn, "new", str(i))
                with open(staged, "wb") as f:
                    f.write(content[0])
                os.chmod(staged, 0o755 if content[1] & 0o111 else 0o644)
            d = os.path.dirname(path)
            while d and not os.path.isdir(os.path.join(target, d)):
                new_dirs.add(d)
                d = os.path.dirname(d)
        _atomic_json(os.path.join(txn, "journal.json"), {
            "what": what, "new_dirs": sorted(new_dirs),
            "ops": [{"path": p, "had_old": os.path.lexists(os.path.join(target, p))} for p, _ in ops]})
        for i, (path, content) in enumerate(ops):
            _hook("COSMOS_OVERLAY_TEST_KILL_AT", i)
            _hook("COSMOS_OVERLAY_TEST_FAIL_AT", i)
            full = os.path.join(target, path)
            if os.path.lexists(full):
                os.rename(full, os.path.join(txn, "old", str(i)))
            if content is not None:
                os.makedirs(os.path.dirname(full), exist_ok=True)
                os.rename(os.path.join(txn, "new", str(i)), full)
        with open(os.path.join(txn, "DONE"), "w") as f:
            os.fsync(f.fileno())
    except OSError as e:
        where = getattr(e, "filename", None) or target
        try:
            recover(target)
        except OSError:
            raise InstallerError(f"cannot write the tree ({e.strerror}) and the roll-back failed too", str(where),
                                 "fix the cause, then run status: the next apply or revert rolls back") from None
        raise InstallerError(f"cannot write the tree: {e.strerror or e}", str(where),
                             "free disk space or fix permissions and retry; nothing was changed") from None
    shutil.rmtree(txn)
    created = os.path.join(target, STATE_DIR, "created-target")
    if os.path.exists(created):
        os.unlink(created)
    _prune_dirs(target, [STATE_DIR])
