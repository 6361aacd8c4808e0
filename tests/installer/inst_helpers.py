"""Helpers for the installer tests: run the CLI as a user would, snapshot directories byte-exact."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# a local clone of upstream with its full history, beside the checkout (COSMOS_OVERLAY_TEST_MIRROR: elsewhere); the
# tests that need one skip without it
MIRROR = Path(os.environ.get("COSMOS_OVERLAY_TEST_MIRROR", REPO.parent / ".mirror/nvidia-cosmos+cosmos-predict2/repo"))


def cli(*args, env=None, cwd=REPO, timeout=120) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    for k in ("COSMOS_OVERLAY_TEST_FAIL_AT", "COSMOS_OVERLAY_TEST_KILL_AT", "COSMOS_OVERLAY_CRASH_AFTER",
              "COSMOS_OVERLAY_COUNT_OPS", "COSMOS_OVERLAY_TEST_NO_FSYNC"):
        e.pop(k, None)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "installer", *map(str, args)], cwd=cwd, env=e,
                          capture_output=True, text=True, timeout=timeout)


def one_error_line(r: subprocess.CompletedProcess) -> str:
    """The failure contract: non-zero exit, exactly one 'error: ...' line on stderr."""
    assert r.returncode != 0, r.stdout + r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def snapshot(root) -> dict | None:
    """relative path -> (bytes, executable?) of every file, or None if the directory does not exist."""
    root = Path(root)
    if not root.exists():
        return None
    out = {}
    for dirpath, dirs, names in os.walk(root):
        for n in names + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]:
            full = os.path.join(dirpath, n)
            rel = os.path.relpath(full, root)
            if os.path.islink(full):
                out[rel] = (b"symlink:" + os.readlink(full).encode(), False)
            else:
                out[rel] = (Path(full).read_bytes(), bool(os.stat(full).st_mode & 0o111))
        out.update({os.path.relpath(os.path.join(dirpath, d), root) + "/": (b"", False) for d in dirs})
    return out


def sdist_members(sdist) -> dict:
    import tarfile

    out = {}
    with tarfile.open(sdist) as t:
        for m in t:
            if m.isfile():
                out[m.name.split("/", 1)[1]] = t.extractfile(m).read()
    return out


def edit_as_user(tree, st: dict, patched: str, launcher_link: str) -> str:
    """The user's edits `apply --force` must keep: append to the patched file `patched`, rewrite an overlay module
    with mode 0600, and replace train.sh by a symlink to `launcher_link`. Returns the overlay module's path."""
    with open(Path(tree) / patched, "ab") as f:
        f.write(b"# my edit\n")
    ours = next(p for p in st["created"] if p.endswith(".py"))
    (Path(tree) / ours).write_bytes(b"# my version\n")
    os.chmod(Path(tree) / ours, 0o600)
    (Path(tree) / "train.sh").unlink()
    os.symlink(launcher_link, Path(tree) / "train.sh")
    return ours
