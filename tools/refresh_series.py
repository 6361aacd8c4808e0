"""Maintainer tool: re-derive the hunks of patches that only apply to the series with an offset.

    python tools/refresh_series.py SDIST [--pin COMMIT | --patches-dir patches/<commit>] [--check]

Patches written on separate branches each fit the series they were made on; once merged, a later patch may find its
context a few lines away (an earlier patch added lines above it). The installer refuses offsets, so this applies the
series in order with GNU patch (zero fuzz, offsets allowed) to the sdist's library files in a scratch git repository
and, for each patch that needed an offset, rewrites its diff from what it did there (header and file name kept).
A patch that needs fuzz or does not apply is an error: resolve it by hand. --check only reports.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from installer import pin  # noqa: E402


def _git(repo: str, *args: str) -> str:
    env = dict(os.environ, GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull, GIT_AUTHOR_NAME="refresh",
               GIT_AUTHOR_EMAIL="refresh@localhost", GIT_COMMITTER_NAME="refresh",
               GIT_COMMITTER_EMAIL="refresh@localhost")
    return subprocess.run(["git", "-C", repo, "-c", "core.hooksPath=/dev/null", *args], check=True,
                          capture_output=True, text=True, env=env).stdout


def _split(text: str) -> tuple[str, str]:
    i = text.find("\ndiff --git ")
    if i < 0:
        raise SystemExit("error: patch has no 'diff --git' section. Write it with git diff.")
    return text[: i + 1], text[i + 1:]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sdist")
    p.add_argument("--pin", default=None, help="the pin whose series to refresh (default: the default pin)")
    p.add_argument("--patches-dir", default=None)
    p.add_argument("--check", action="store_true")
    a = p.parse_args(argv)
    pdir = a.patches_dir or os.path.join(HERE, "..", "patches", pin.select(a.pin).commit)
    names = [l.strip() for l in open(os.path.join(pdir, "series")) if l.strip() and not l.startswith("#")]
    changed = []
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(a.sdist) as tf:
            top = tf.getnames()[0].split("/")[0]
            members = [m for m in tf.getmembers() if m.isfile()
                       and m.name.split("/")[1:2][0:1] and m.name.split("/")[1] in ("cosmos_predict2", "imaginaire")]
            for m in members:
                m.name = m.name[len(top) + 1:]
            tf.extractall(tmp, members=members)  # noqa: S202 - our own cached, hash-checked sdist
        _git(tmp, "init", "-q")
        _git(tmp, "add", "-A")
        _git(tmp, "commit", "-q", "-m", "upstream")
        for name in names:
            path = os.path.join(pdir, name)
            text = open(path, encoding="utf-8").read()
            r = subprocess.run(["patch", "-p1", "--fuzz=0", "--no-backup-if-mismatch", "-i", path], cwd=tmp,
                               capture_output=True, text=True)
            if r.returncode != 0:
                print(f"error: {name} does not apply without fuzz ({r.stdout.strip()}). Resolve it by hand.",
                      file=sys.stderr)
                return 1
            _git(tmp, "add", "-A")
            if "offset" in r.stdout:
                header, _ = _split(text)
                diff = _git(tmp, "diff", "--cached", "--no-color", "--no-renames", "-U3", "--full-index")
                changed.append(name)
                if not a.check:
                    with open(path, "w", encoding="utf-8", newline="\n") as f:
                        f.write(header + diff)
            _git(tmp, "commit", "-q", "--allow-empty", "-m", name)
    for name in changed:
        print(f"{'needs offset' if a.check else 'refreshed'}: {name}")
    return 1 if (a.check and changed) else 0


if __name__ == "__main__":
    sys.exit(main())
