"""State and crash-safe writes inside the target tree (.cosmos-overlay/).

One transaction per command (docs/DESIGN.md, "Crash consistency"):
  1. prepare: every new file is staged and fsynced under .cosmos-overlay/txn/new, then txn/journal.json is written
     atomically (tmp + fsync + rename + fsync of txn/). Nothing in the tree has changed yet.
  2. swap: each target moves to txn/old/<i>, the staged file takes its place (rename); then every touched
     directory is fsynced.
  3. commit point: txn/COMMITTED is created and fsynced with its directory. Its presence alone decides: present =
     roll forward (the new tree stands; finish the clean-up), absent = roll back (the journal undoes every swap;
     undoing is idempotent). No decision depends on the order in which a directory lists its entries.
  4. clean-up, in a fixed order that keeps COMMITTED until the very end: displaced files, directories the
     transaction emptied (journal 'prune'), journal, fsync of txn/, COMMITTED, txn/, an empty state directory.
SIGINT/SIGTERM/SIGHUP are held back from prepare to the end of the clean-up; SIGKILL and power loss are
covered by the rule in 3. Every file-system operation goes through `_fs`, which counts it.

Test hooks (inert unless set; used by tests/installer): COSMOS_OVERLAY_CRASH_AFTER=N sends SIGKILL to this
process right after the N-th counted file-system operation (N=0: before the first); COSMOS_OVERLAY_COUNT_OPS=FILE
writes the number of counted operations (and the count at which COMMITTED was durable) to FILE at exit;
COSMOS_OVERLAY_TEST_NO_FSYNC=1 counts but skips fsync (for process-kill tests, where it changes nothing);
COSMOS_OVERLAY_TEST_FAIL_AT=N raises OSError(ENOSPC) before the N-th swap (0-based); COSMOS_OVERLAY_TEST_KILL_AT=N
sends SIGKILL before the N-th swap.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import hashlib
import json
import os
import posixpath
import signal
import stat

from .errors import InstallerError

STATE_DIR = ".cosmos-overlay"
STATE_FILE = f"{STATE_DIR}/state.json"
PRISTINE = f"{STATE_DIR}/pristine"  # upstream bytes of files we changed, and foreign files --force moved away
EDITS = f"{STATE_DIR}/edits"  # the user's edits of managed files that apply --force overwrote
TXN = f"{STATE_DIR}/txn"
COMMITTED = "COMMITTED"
FORMAT = 1
RESERVED = (".git", STATE_DIR)
SYMLINK = 0o120000


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def disk_mode(full: str) -> int:
    return 0o100755 if os.stat(full).st_mode & 0o111 else 0o100644


def read(target: str, path: str):
    """(bytes, git-style mode) of target/path, or None when absent (a symlink counts as present and foreign)."""
    full = os.path.join(target, path)
    if os.path.islink(full):
        return (b"\0symlink:" + os.readlink(full).encode(), SYMLINK)
    if os.path.isdir(full):
        return (b"\0directory", 0o040000)
    if not os.path.isfile(full):
        return None
    with open(full, "rb") as f:
        return f.read(), disk_mode(full)


def read_exact(target: str, path: str):
    """Like read(), but the mode is the file's own (0o100600 stays 0o100600): for the user's files we back up."""
    full = os.path.join(target, path)
    if os.path.islink(full):
        return (os.readlink(full).encode(), SYMLINK)
    if os.path.isdir(full) or not os.path.isfile(full):
        return read(target, path)
    with open(full, "rb") as f:
        return f.read(), stat.S_IFREG | (os.stat(full).st_mode & 0o7777)


# ---- validation of everything read back from disk ---------------------------------------------------------------

def safe_rel(p) -> bool:
    """A normalised relative path inside the tree that does not touch .git or (unless allowed) our state."""
    return (isinstance(p, str) and p != "" and not p.startswith("/") and "\\" not in p and "\0" not in p
            and posixpath.normpath(p) == p and ".." not in p.split("/"))


def _bad_state(full: str, why: str):
    return InstallerError(f"installer state is invalid: {why}", full,
                          "nothing was changed; restore it from a backup or start from a fresh target directory")


PATH_LISTS = ("created", "deleted", "backups", "upstream", "managed")
PATH_MAPS = ("files", "user_backups", "edits")


def validate(st, full: str) -> dict:
    if not isinstance(st, dict):
        raise _bad_state(full, "not a JSON object")
    if st.get("format") != FORMAT:
        raise _bad_state(full, f"format {st.get('format')!r}, expected {FORMAT}")
    for key in PATH_LISTS + PATH_MAPS:
        v = st.get(key, [] if key in PATH_LISTS else {})
        if key in ("created", "deleted", "backups", "upstream", "managed", "files") and key not in st:
            raise _bad_state(full, f"'{key}' is missing")
        if not isinstance(v, list if key in PATH_LISTS else dict):
            raise _bad_state(full, f"'{key}' has the wrong type")
        for p in v:
            if not safe_rel(p) or p.split("/")[0] in RESERVED:
                raise _bad_state(full, f"'{key}' lists {p!r}, which is not a normalised path inside the tree")
    for key in ("user_backups", "edits"):
        for p, m in st.get(key, {}).items():
            if not isinstance(m, int) or stat.S_IFMT(m) not in (stat.S_IFREG, SYMLINK):
                raise _bad_state(full, f"'{key}' gives {p!r} the mode {m!r}")
    from . import manifest  # upstream paths are manifest paths; anything else is not ours to restore or delete
    entries = manifest.load()
    for key in ("upstream", "deleted", "backups"):
        for p in st[key]:
            if p not in entries:
                raise _bad_state(full, f"'{key}' lists {p!r}, which is not an upstream file")
    return st


def load_state(target: str) -> dict | None:
    full = os.path.join(target, STATE_FILE)
    if not os.path.lexists(full):
        return None
    if os.path.islink(full) or not os.path.isfile(full):
        raise _bad_state(full, "not a regular file")
    try:
        with open(full, encoding="utf-8") as f:
            st = json.load(f)
    except (ValueError, OSError) as e:
        raise InstallerError(f"unreadable installer state: {e}", full,
                             "nothing was changed; restore it from a backup or start from a fresh target "
                             "directory") from None
    return validate(st, full)


def leftovers(target: str) -> list:
    """Files under .cosmos-overlay/ other than state.json and the transaction: backups an install left behind."""
    sd = os.path.join(target, STATE_DIR)
    out = []
    for root, dirs, names in os.walk(sd):
        rel = os.path.relpath(root, target).replace(os.sep, "/")
        if rel == TXN:
            dirs[:] = []
            continue
        dirs[:] = [d for d in dirs if f"{rel}/{d}" != TXN]
        out += [f"{rel}/{n}" for n in names if f"{rel}/{n}" != STATE_FILE]
    return sorted(out)


def state_bytes(st: dict) -> bytes:
    return (json.dumps(st, indent=1, sort_keys=True) + "\n").encode()


def interrupted(target: str) -> bool:
    return os.path.isdir(os.path.join(target, TXN))


def pending(target: str) -> str:
    """What recovery of an interrupted transaction will do: 'roll forward', 'roll back', or 'clean up' (no journal:
    the tree was not touched yet, or the clean-up after the commit had already removed the journal)."""
    if os.path.lexists(os.path.join(target, TXN, COMMITTED)):
        return "roll forward"
    return "roll back" if os.path.lexists(os.path.join(target, TXN, "journal.json")) else "clean up"


# ---- counted file-system operations (and the fault-injection hook) ----------------------------------------------

_OPS = [0]
_COMMITTED_AT = [-1]  # the operation count right after COMMITTED became durable (for the crash-point tests)
_CRASH_AFTER = os.environ.get("COSMOS_OVERLAY_CRASH_AFTER")
_COUNT_FILE = os.environ.get("COSMOS_OVERLAY_COUNT_OPS")
_NO_FSYNC = bool(os.environ.get("COSMOS_OVERLAY_TEST_NO_FSYNC"))  # process-kill tests only: fsync is then counted
if _COUNT_FILE:                                                      # but skipped, to keep them fast
    atexit.register(lambda: open(_COUNT_FILE, "w").write(f"{_OPS[0]} {_COMMITTED_AT[0]}\n"))


def _crash_point() -> None:
    if _CRASH_AFTER is not None and _OPS[0] == int(_CRASH_AFTER):
        os.kill(os.getpid(), signal.SIGKILL)


def _fs(fn, *args, **kw):
    """Run one mutating file-system operation; counts it for the crash-point hook."""
    if _OPS[0] == 0:
        _crash_point()
    r = None if _NO_FSYNC and fn is os.fsync else fn(*args, **kw)
    _OPS[0] += 1
    _crash_point()
    return r


def _write_file(path: str, content: tuple) -> None:
    """A new file (or symlink) with exactly these bytes and mode, fsynced."""
    data, mode = content
    if stat.S_IFMT(mode) == SYMLINK:
        _fs(os.symlink, data.decode(), path)
        return
    fd = _fs(os.open, path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with open(fd, "wb", closefd=False) as f:
            f.write(data)
        _fs(os.fchmod, fd, mode & 0o7777)
        _fs(os.fsync, fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # gone (pruned): nothing to persist there
    try:
        _fs(os.fsync, fd)
    except OSError as e:  # some file systems cannot fsync a directory; the rename is as durable as they allow
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _atomic_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    if os.path.lexists(tmp):
        _fs(os.unlink, tmp)
    _write_file(tmp, (json.dumps(obj).encode(), 0o100644))
    _fs(os.replace, tmp, path)
    _fsync_dir(os.path.dirname(path))


def _unlink(path: str) -> None:
    if os.path.lexists(path):
        _fs(os.unlink, path)


def _rmdir(path: str) -> bool:
    try:
        _fs(os.rmdir, path)
        return True
    except OSError:
        return False  # not empty or gone: keep it


def _prune_dirs(target: str, dirs) -> None:
    for d in sorted(set(dirs), key=lambda x: (-x.count("/"), x)):
        full = os.path.join(target, d)
        if os.path.isdir(full) and not os.path.islink(full) and not os.listdir(full):
            _rmdir(full)


def _ancestors(p: str) -> list:
    out, d = [], posixpath.dirname(p)
    while d:
        out.append(d)
        d = posixpath.dirname(d)
    return out


# ---- recovery ---------------------------------------------------------------------------------------------------

def _read_journal(target: str) -> dict | None:
    path = os.path.join(target, TXN, "journal.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            j = json.load(f)
        ops = j["ops"]
        ok = all(isinstance(op, dict) and safe_rel(op.get("path")) and op["path"].split("/")[0] != ".git"
                 and not op["path"].startswith(TXN + "/") and isinstance(op.get("had_old"), bool) for op in ops)
        ok = ok and all(safe_rel(d) and d.split("/")[0] != ".git" for d in j.get("new_dirs", []) + j.get("prune", []))
    except (ValueError, OSError, KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        raise InstallerError("the journal of an interrupted operation is unreadable or lists paths outside the tree",
                             path, "nothing was changed; restore the tree from a backup or start from a fresh "
                                   "target directory")
    for op in ops:
        _check_inside(target, op["path"])
    return j


def _clean_txn(target: str, j: dict | None, forward: bool) -> None:
    """Remove the transaction directory in an order that never changes the recovery decision midway."""
    txn = os.path.join(target, TXN)
    for sub in ("old", "new"):
        d = os.path.join(txn, sub)
        if os.path.isdir(d):
            for n in sorted(os.listdir(d)):
                _unlink(os.path.join(d, n))
            _rmdir(d)
    if j is not None:
        _prune_dirs(target, j.get("prune", []) if forward else j.get("new_dirs", []))
    _unlink(os.path.join(txn, "journal.json.tmp"))
    _unlink(os.path.join(txn, "journal.json"))
    created = os.path.join(txn, "created-target")
    if forward:
        _unlink(created)
    _fsync_dir(txn)
    _unlink(os.path.join(txn, COMMITTED))  # the decision is gone only now, with nothing left to decide
    if not forward:  # a target this transaction created goes again: it holds nothing but the state directory
        if os.path.lexists(created):
            _unlink(created)
            if _rmdir(txn):
                _prune_dirs(target, [STATE_DIR])
                _rmdir(target)
                return
    _rmdir(txn)
    if not os.path.lexists(os.path.join(target, STATE_FILE)):
        prune_skeleton(target)
    _fsync_dir(os.path.join(target, STATE_DIR))
    _fsync_dir(target)


def prune_skeleton(target: str) -> None:
    """Empty directories under .cosmos-overlay/ (never a file), then the state directory itself if it is empty."""
    sd = os.path.join(target, STATE_DIR)
    if not os.path.isdir(sd) or os.path.islink(sd):
        return
    dirs = []
    for root, subdirs, _ in os.walk(sd):
        dirs += [os.path.relpath(os.path.join(root, d), target).replace(os.sep, "/") for d in subdirs]
    _prune_dirs(target, dirs + [STATE_DIR])


def recover(target: str) -> str | None:
    """Finish (COMMITTED present) or roll back (absent) an interrupted transaction. A message when one was found."""
    txn = os.path.join(target, TXN)
    if not os.path.isdir(txn):
        if not os.path.lexists(os.path.join(target, STATE_FILE)):
            prune_skeleton(target)  # empty directories a killed clean-up left; files are never removed here
        return None
    with _signals_held():
        j = _read_journal(target)
        if os.path.lexists(os.path.join(txn, COMMITTED)):
            _clean_txn(target, j, forward=True)
            return f"finished an interrupted {(j or {}).get('what', 'operation')} (it had completed)"
        if j is None:
            _clean_txn(target, None, forward=False)
            return "cleaned up after an interrupted operation (nothing in the tree to undo)"
        dirs = set()
        for i, op in enumerate(j["ops"]):
            full = os.path.join(target, op["path"])
            old = os.path.join(txn, "old", str(i))
            if os.path.lexists(old):
                os.makedirs(os.path.dirname(full), exist_ok=True)
                _fs(os.replace, old, full)
                dirs.add(os.path.dirname(full))
            elif not op["had_old"] and os.path.lexists(full) and not os.path.isdir(full):
                _fs(os.unlink, full)
                dirs.add(os.path.dirname(full))
        for d in sorted(dirs):
            _fsync_dir(d)
        _clean_txn(target, j, forward=False)
        return f"rolled back an interrupted {j.get('what', 'operation')}; the tree is as it was before it"


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


_HOLD = tuple(s for s in (getattr(signal, n, None) for n in ("SIGINT", "SIGTERM", "SIGHUP")) if s is not None)


@contextlib.contextmanager
def _signals_held():
    """Ctrl-C / SIGTERM / SIGHUP wait until the transaction (or its recovery) is complete, then take effect: blocked
    for this thread, and (in the main thread) caught by a recorder in case the kernel hands one to another thread."""
    import threading

    if _HELD.get("\0signals"):
        yield
        return
    block = getattr(signal, "pthread_sigmask", None)
    main = threading.current_thread() is threading.main_thread()
    got, handlers = [], {}
    if main:
        for s in _HOLD:
            handlers[s] = signal.signal(s, lambda sig, frame: got.append(sig))
    old = block(signal.SIG_BLOCK, _HOLD) if block else None
    _HELD["\0signals"] = True
    try:
        yield
    finally:
        _HELD.pop("\0signals", None)
        if block:
            block(signal.SIG_SETMASK, old)  # a blocked one is delivered now, to the recorder
        for s, h in handlers.items():
            signal.signal(s, signal.SIG_DFL if h is None else h)
        for s in dict.fromkeys(got):
            signal.raise_signal(s)  # now with the handler (or default action) the process had


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


def commit(target: str, ops: list, what: str, created_target: bool = False, keep_dirs=()) -> None:
    """ops: [(path, (bytes, mode) or None)] in order. All of them happen, or none (also across kill -9 and power
    loss). Directories that end up empty because of a deletion are removed too, except keep_dirs (upstream's)."""
    for path, _ in ops:
        if not safe_rel(path) or path.split("/")[0] == ".git" or path.startswith(TXN + "/"):
            raise InstallerError(f"refusing to write {path!r}: not a normalised path inside the tree", target,
                                 "report this as a bug")
        _check_inside(target, path)
        full = os.path.join(target, path)
        if os.path.isdir(full) and not os.path.islink(full):  # never swap (and later delete) a whole directory
            raise InstallerError(f"a directory is in the way of file {path}", target, "move that directory away")
    keep = set(keep_dirs)
    prune = {d for p, c in ops if c is None for d in _ancestors(p) if d not in keep and d != STATE_DIR}
    with locked(target), _signals_held():
        _commit(target, ops, what, created_target, sorted(prune))


def _commit(target: str, ops: list, what: str, created_target: bool, prune: list) -> None:
    txn = os.path.join(target, TXN)
    new_dirs = set()
    try:
        if created_target:
            if not os.path.isdir(target):
                _fs(os.makedirs, target)
            _fs(os.mkdir, os.path.join(target, STATE_DIR))
            _fs(os.mkdir, txn)  # so a roll-back also removes the directory we created
            _write_file(os.path.join(txn, "created-target"), (b"", 0o100644))
        else:
            if not os.path.isdir(os.path.join(target, STATE_DIR)):
                _fs(os.mkdir, os.path.join(target, STATE_DIR))
            _fs(os.mkdir, txn)
        _fs(os.mkdir, os.path.join(txn, "new"))
        _fs(os.mkdir, os.path.join(txn, "old"))
        for i, (path, content) in enumerate(ops):
            if content is not None:
                _write_file(os.path.join(txn, "new", str(i)), content)
            d = os.path.dirname(path)
            while d and not os.path.isdir(os.path.join(target, d)):
                new_dirs.add(d)
                d = os.path.dirname(d)
        _fsync_dir(os.path.join(txn, "new"))
        _atomic_json(os.path.join(txn, "journal.json"), {
            "what": what, "new_dirs": sorted(new_dirs), "prune": prune,
            "ops": [{"path": p, "had_old": os.path.lexists(os.path.join(target, p))} for p, _ in ops]})
        touched = {txn, os.path.join(txn, "old")}
        for i, (path, content) in enumerate(ops):
            _hook("COSMOS_OVERLAY_TEST_KILL_AT", i)
            _hook("COSMOS_OVERLAY_TEST_FAIL_AT", i)
            full = os.path.join(target, path)
            touched.add(os.path.dirname(full))
            if os.path.lexists(full):
                _fs(os.rename, full, os.path.join(txn, "old", str(i)))
            if content is not None:
                d = os.path.dirname(full)
                missing = []
                while not os.path.isdir(d):
                    missing.append(d)
                    d = os.path.dirname(d)
                for m in reversed(missing):
                    _fs(os.mkdir, m)
                    touched.add(os.path.dirname(m))
                _fs(os.rename, os.path.join(txn, "new", str(i)), full)
        for d in sorted(touched):
            _fsync_dir(d)
        fd = _fs(os.open, os.path.join(txn, COMMITTED), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        _COMMITTED_AT[0] = _OPS[0]  # from here on its presence means roll forward
        try:
            _fs(os.fsync, fd)
        finally:
            os.close(fd)
        _fsync_dir(txn)
    except OSError as e:
        where = getattr(e, "filename", None) or target
        try:
            recover(target)
        except OSError:
            raise InstallerError(f"cannot write the tree ({e.strerror}) and the roll-back failed too", str(where),
                                 "fix the cause, then run status: the next apply or revert rolls back") from None
        raise InstallerError(f"cannot write the tree: {e.strerror or e}", str(where),
                             "free disk space or fix permissions and retry; nothing was changed") from None
    _clean_txn(target, _read_journal(target), forward=True)
