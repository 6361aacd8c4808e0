"""Get the pristine upstream bytes of the pinned commit into memory, from PyPI, git, or a local PATH.

Every source ends in the same thing: {path: (bytes, mode)} of manifest files, each verified against the manifest.
Library files (the sdist part) must all be there; git-only files are verified when present (a missing one is a
warning: public mirrors drop blobs of 4 MiB and more).
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field

from . import manifest, pin
from .errors import InstallerError


def _offline_hint() -> str:
    p = pin.active()
    if not p.has_sdist:
        return (f"upstream {p.short} has no sdist: on an offline host run "
                f"'apply --pin {p.short} --source /path/to/clone'")
    return (f"on an offline host copy {p.sdist_name} (sha256 {p.sdist_sha256[:16]}...) here and run "
            f"'apply --source /path/to/{p.sdist_name}'")


@dataclass
class Upstream:
    files: dict[str, tuple[bytes, int]]  # path -> (bytes, git mode)
    kind: str  # "pypi" | "git" | "tree"
    identity: str  # sha256 of the sdist, commit id, or the directory
    warnings: list[str] = field(default_factory=list)


def cache_dir() -> str:
    return os.environ.get("COSMOS_OVERLAY_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                                   "cosmos-predict2-overlay")


def fetch(source: str) -> Upstream:
    """source: 'pypi', 'git', or a PATH (sdist .tar.gz, unpacked sdist/tree directory, git clone or bare repo)."""
    if source == "pypi":
        return from_sdist(download_sdist())
    if source == "git":
        return from_git(clone_git())
    path = os.path.abspath(os.path.expanduser(source))
    if os.path.isfile(path):
        return from_sdist(path)
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, ".git")) or _is_bare(path):
            return from_git(path)
        return from_directory(path, kind="tree")
    raise InstallerError("source not found", source,
                         "use --source pypi, --source git, or --source PATH to an sdist, a directory or a git clone")


# ---- PyPI sdist -------------------------------------------------------------------------------------------------

def download_sdist() -> str:
    """The sdist in the cache dir, downloaded with pip when absent."""
    p = pin.active()
    if not p.has_sdist:
        raise InstallerError(f"upstream {p.short} was never released on PyPI", f"pin {p.commit}",
                             f"use 'apply --pin {p.short} --source git' or --source PATH to a clone")
    SDIST_NAME, SDIST_SHA256, PYPI_NAME, PYPI_VERSION = p.sdist_name, p.sdist_sha256, p.pypi_name, p.version
    d = cache_dir()
    path = os.path.join(d, SDIST_NAME)
    if os.path.isfile(path) and _sha256_file(path) == SDIST_SHA256:
        return path
    os.makedirs(d, exist_ok=True)
    print(f"downloading {PYPI_NAME}=={PYPI_VERSION} (sdist) from PyPI into {d}", flush=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--disable-pip-version-check",
           "-d", d, f"{PYPI_NAME}=={PYPI_VERSION}"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0 or not os.path.isfile(path):
        last = ([ln for ln in (r.stderr + r.stdout).splitlines() if ln.strip()] or ["no output"])[-1].strip()
        raise InstallerError(f"cannot download {PYPI_NAME}=={PYPI_VERSION} from PyPI", f"pip: {last[:160]}",
                             _offline_hint() + ", or try --source git")
    return path


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_tar(path: str) -> dict[str, bytes]:
    """Regular files of a .tar.gz, top directory stripped. Refuses links, devices and names escaping the root."""
    out: dict[str, bytes] = {}
    SDIST_NAME, SDIST_SHA256 = pin.active().sdist_name or "the sdist", pin.active().sdist_sha256 or "-"
    try:
        with tarfile.open(path, "r:*") as tar:
            for m in tar:
                name = m.name
                if name.startswith("/") or ".." in name.split("/") or "\\" in name:
                    raise InstallerError("unsafe archive member escapes the root", f"{path}: {name}",
                                         f"use the genuine {SDIST_NAME} from PyPI")
                if m.isdir():
                    continue
                if not m.isfile():
                    raise InstallerError("archive member is a link or special file", f"{path}: {name}",
                                         f"use the genuine {SDIST_NAME} from PyPI")
                parts = name.split("/", 1)
                if len(parts) != 2 or not parts[1]:
                    continue
                f = tar.extractfile(m)
                out[posixpath.normpath(parts[1])] = f.read() if f else b""
                out.setdefault("\0top", parts[0].encode())
    except (tarfile.TarError, OSError, EOFError) as e:
        raise InstallerError("cannot read the sdist archive", f"{path}: {e}",
                             f"download {SDIST_NAME} again (sha256 {SDIST_SHA256[:16]}...)") from None
    return out


def from_sdist(path: str) -> Upstream:
    p = pin.active()
    SDIST_NAME, SDIST_SHA256, PYPI_NAME, PYPI_VERSION, PIN = (p.sdist_name or "a cosmos-predict2 sdist",
                                                              p.sdist_sha256 or "-", p.pypi_name, p.version, p.commit)
    digest = _sha256_file(path)
    members = read_tar(path)
    top = members.pop("\0top", b"").decode()
    if digest != SDIST_SHA256:
        m = re.match(r"cosmos[_-]predict2-(.+)$", top)
        if m and m.group(1) != PYPI_VERSION:
            raise InstallerError(f"sdist is {PYPI_NAME} {m.group(1)}, not {PYPI_VERSION} (sha256 mismatch)", path,
                                 f"use {SDIST_NAME} (sha256 {SDIST_SHA256[:16]}...) or --source pypi")
        bad = [p for p in sorted(members) if p in manifest.load() and not manifest.matches(p, members[p])]
        missing = [p for p in manifest.library_paths() if p not in members]
        what = (f"sdist file {bad[0]} differs from upstream {PIN[:8]}" if bad else
                f"sdist lacks {missing[0]}" if missing else "sdist sha256 mismatch")
        more = f" and {len(bad) + len(missing) - 1} more" if len(bad) + len(missing) > 1 else ""
        raise InstallerError(what + more, f"{path} sha256 {digest[:16]}..., expected {SDIST_SHA256[:16]}...",
                             f"download the genuine {SDIST_NAME} again (--source pypi)")
    up = _verified(members, "pypi", digest, where=path)
    return up


def from_directory(path: str, kind: str) -> Upstream:
    files: dict[str, bytes] = {}
    for p in manifest.load():
        full = os.path.join(path, p)
        if os.path.isfile(full) and not os.path.islink(full):
            with open(full, "rb") as f:
                files[p] = f.read()
    return _verified(files, kind, path, where=path)


def _verified(files: dict[str, bytes], kind: str, identity: str, where: str) -> Upstream:
    """Keep manifest files only; every one must match; every library file must be there."""
    entries = manifest.load()
    out: dict[str, tuple[bytes, int]] = {}
    for p, data in files.items():
        e = entries.get(p)
        if e is None:
            continue  # PKG-INFO and such: not part of the upstream tree
        if not manifest.matches(p, data):
            raise InstallerError(f"{p} differs from upstream commit {pin.active().short} (git blob {manifest.git_blob_sha1(data)[:10]}, "
                                 f"expected {e.sha1[:10]})", where,
                                 "use pristine upstream bytes: a fresh download (--source pypi) or a clean clone")
        out[p] = (data, e.mode)
    missing = [p for p in manifest.library_paths() if p not in out]
    if missing:
        raise InstallerError(f"upstream library file {missing[0]} is missing"
                             + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""), where,
                             f"point --source at {pin.active().sdist_name or 'a clone'}, its unpacked directory, "
                             f"or a clone at {pin.active().short}")
    return Upstream(out, kind, identity)


# ---- git --------------------------------------------------------------------------------------------------------

def _is_bare(path: str) -> bool:
    return all(os.path.exists(os.path.join(path, n)) for n in ("HEAD", "objects", "refs"))


def _last_line(stderr) -> str:
    lines = [ln.strip(" '\"") for ln in str(stderr or "").splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("warning:")]
    return lines[-1] if lines else "no message"


def clone_git() -> str:
    """A bare clone of upstream in the cache dir (COSMOS_OVERLAY_GIT_URL overrides the URL, e.g. a mirror)."""
    import git  # GitPython; imported here so the other sources work without it

    PIN = pin.active().commit
    url = os.environ.get("COSMOS_OVERLAY_GIT_URL", pin.active().git_url)
    dest = os.path.join(cache_dir(), "cosmos-predict2.git")
    try:
        if os.path.isdir(dest):
            repo = git.Repo(dest)
            try:
                repo.commit(PIN)
                return dest
            except (ValueError, git.BadName):
                repo.git.fetch(url, "+refs/heads/*:refs/heads/*")
        else:
            # blobs >= 4 MiB are git-only media (assets/*.mp4) that training never reads
            git.Repo.clone_from(url, dest, bare=True, multi_options=["--filter=blob:limit=4m"])
    except git.GitCommandError as e:
        last = _last_line(e.stderr)
        raise InstallerError(f"cannot clone {url}", f"git: {last[:160]}",
                             _offline_hint() + " (the default --source pypi needs only PyPI)") from None
    return dest


def from_git(path: str) -> Upstream:
    import git

    try:
        return _from_git(path)
    except git.GitCommandError as e:
        last = _last_line(e.stderr)
        raise InstallerError("git failed reading the clone", f"{path}: {last[:160]}",
                             "check the clone with 'git fsck' or use --source pypi") from None


def _from_git(path: str) -> Upstream:
    import git

    PIN, GIT_URL = pin.active().commit, pin.active().git_url
    try:
        repo = git.Repo(path)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise InstallerError("not a git repository", path,
                             "point --source at a clone of " + pin.active().git_url) from None
    # a mirror may lack core.bare=true: no work tree means there is nothing to be dirty or checked out
    bare = repo.bare or repo.working_tree_dir is None or not os.path.exists(os.path.join(path, ".git"))
    if bare:  # otherwise GitPython runs git in the parent directory, which git may reject or misread
        repo.git.update_environment(GIT_DIR=os.path.abspath(path))
    if not bare:
        if repo.is_dirty(untracked_files=False):
            changed = [d.a_path for d in repo.index.diff(None)] + [d.a_path for d in repo.index.diff("HEAD")]
            raise InstallerError("git clone has uncommitted changes" + (f" in {changed[0]}" if changed else ""), path,
                                 f"commit/stash them or use a clean clone at {PIN[:8]}")
        try:
            head = repo.head.commit.hexsha
        except ValueError:
            head = "(none)"
        if head != PIN:
            raise InstallerError(f"git clone is at commit {head[:12]}, not the pinned {PIN[:12]}", path,
                                 f"run 'git -C {path} checkout {PIN}' or use a clone at that commit")
    try:
        commit = repo.commit(PIN)
    except (ValueError, git.BadName):
        raise InstallerError(f"git repository lacks the pinned commit {PIN[:12]}", path,
                             f"fetch it ('git -C {path} fetch {GIT_URL}') or use --source pypi") from None
    files: dict[str, bytes] = {}
    warnings = []
    entries = manifest.load()
    for item in commit.tree.traverse():
        if item.type != "blob":
            continue
        e = entries.get(item.path)
        if e is not None and not e.in_sdist and (e.size < 0 or e.size >= 4 << 20):
            warnings.append(item.path)  # big git-only media: a partial clone lacks them, reading would fetch
            continue
        try:
            files[item.path] = item.data_stream.read()
        except Exception:  # a mirror without big blobs: only git-only assets are affected
            if e is not None and e.in_sdist:
                raise InstallerError(f"git object of library file {item.path} is missing", path,
                                     "use a complete clone or --source pypi") from None
            warnings.append(item.path)
    up = _verified(files, "git", PIN, where=path)
    if warnings:
        up.warnings.append(f"warning: {len(warnings)} git-only media file(s) not materialised from {path} "
                           f"(e.g. {warnings[0]}); training does not need them")
    return up
