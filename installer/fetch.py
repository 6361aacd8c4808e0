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
import shutil
import subprocess
import sys
import tarfile
import zlib
from dataclasses import dataclass, field

from . import manifest, pin
from .errors import InstallerError, redact_url


def _offline_hint() -> str:
    p = pin.active()
    if not p.has_sdist:
        return (f"upstream {p.short} has no sdist: on an offline host run "
                f"'apply --pin {p.short} --source /path/to/clone'")
    return (f"on an offline host copy {p.sdist_name} (sha256 {p.sdist_sha256[:16]}...) here and run "
            f"'apply --source /path/to/{p.sdist_name}'")


def _sdist_ids() -> tuple[str, str, str, str]:
    """(sdist file name, its sha256, PyPI name, version) of the active pin, with stand-ins for a git-only pin."""
    p = pin.active()
    return p.sdist_name or "the sdist", p.sdist_sha256 or "-", p.pypi_name or "cosmos-predict2", p.version


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


SDIST_EXTRAS = {"PKG-INFO": 64 << 10}  # sdist members that are not upstream git files, with their size cap


def _archive_error(what: str, path: str, member: str = "") -> InstallerError:
    SDIST_NAME, SDIST_SHA256, _, _ = _sdist_ids()
    return InstallerError(what, f"{path}: {member}" if member else path,
                          f"use the genuine {SDIST_NAME} from PyPI (sha256 {SDIST_SHA256[:16]}...)")


def _check_archive_file(path: str) -> None:
    """An empty file or one that is not gzip data is named as such, before tarfile sees it."""
    SDIST_NAME, SDIST_SHA256, _, _ = _sdist_ids()
    with open(path, "rb") as f:
        head = f.read(2)
    if not head:
        raise InstallerError("source file is empty", path,
                             f"download {SDIST_NAME} again (sha256 {SDIST_SHA256[:16]}...) or use --source pypi")
    if head != b"\x1f\x8b":
        raise InstallerError("source file is not a .tar.gz archive (no gzip header)", path,
                             f"point --source at {SDIST_NAME}, its unpacked directory, or a git clone")


class _Bounded:
    """A gzip stream that refuses to inflate past `limit` bytes (tar headers, pax records included)."""

    def __init__(self, path: str, limit: int):
        import gzip
        self._f, self._left, self.path = gzip.open(path, "rb"), limit, path

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self._left + 1
        data = self._f.read(min(n, self._left + 1))
        self._left -= len(data)
        if self._left < 0:
            raise _archive_error("archive inflates to more than any cosmos-predict2 sdist can", self.path)
        return data

    def close(self) -> None:
        self._f.close()


def _inflate_limit() -> int:
    """Twice the library bytes plus 8 MiB: room for tar headers, PKG-INFO and padding, far from a bomb."""
    return 2 * sum(max(e.size, 0) for e in manifest.load().values() if e.in_sdist) + (8 << 20)


def read_tar(path: str) -> dict[str, bytes]:
    """Regular files of a .tar.gz, top directory stripped, streamed: every member is checked against the manifest
    (its declared size must be the upstream file's; the only other member allowed is a small PKG-INFO) BEFORE a
    byte of it is read, so a hostile archive costs at most the size of the real sdist in memory. Refuses links,
    devices, names escaping the root and a second top directory."""
    SDIST_NAME, SDIST_SHA256, PYPI_NAME, PYPI_VERSION = _sdist_ids()
    _check_archive_file(path)
    entries = manifest.load()
    out: dict[str, bytes] = {}
    top = None
    stream = None
    try:
        stream = _Bounded(path, _inflate_limit())
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for m in tar:
                name = m.name
                if name.startswith("/") or ".." in name.split("/") or "\\" in name:
                    raise _archive_error("unsafe archive member escapes the root", path, name)
                parts = name.split("/", 1)
                if top is None:
                    top = parts[0]
                    v = re.match(r"cosmos[_-]predict2-(.+)$", top)
                    if v and v.group(1) != PYPI_VERSION:
                        raise InstallerError(f"sdist is {PYPI_NAME} {v.group(1)}, not {PYPI_VERSION}", path,
                                             f"use {SDIST_NAME} (sha256 {SDIST_SHA256[:16]}...) or --source pypi")
                elif parts[0] != top:
                    raise _archive_error(f"archive has a second top directory {parts[0]!r}", path, name)
                if m.isdir():
                    continue
                if not m.isfile():
                    raise _archive_error("archive member is a link or special file", path, name)
                if len(parts) != 2 or not parts[1]:
                    raise _archive_error("archive member outside the top directory", path, name)
                rel = posixpath.normpath(parts[1])
                e = entries.get(rel)
                limit = (e.size if e.size >= 0 else 16 << 20) if e is not None else SDIST_EXTRAS.get(rel)
                if limit is None:
                    raise _archive_error(f"archive member {rel} is not a file of {PYPI_NAME} {PYPI_VERSION}", path,
                                         name)
                exact = e is not None and e.size >= 0
                if (m.size != limit) if exact else (m.size > limit):
                    raise _archive_error(f"archive member {rel} declares {m.size} bytes, upstream has "
                                         f"{'' if exact else 'at most '}{limit}", path, name)
                if rel in out:
                    raise _archive_error(f"archive member {rel} appears twice", path, name)
                f = tar.extractfile(m)
                out[rel] = f.read(limit + 1) if f else b""
                if len(out[rel]) != m.size:
                    raise _archive_error(f"archive member {rel} holds {len(out[rel])} bytes, not the {m.size} "
                                         "it declares", path, name)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        why = " ".join(str(e).split()) or type(e).__name__
        raise InstallerError("cannot read the sdist archive (corrupt or truncated)", f"{path}: {why}",
                             f"download {SDIST_NAME} again (sha256 {SDIST_SHA256[:16]}...)") from None
    finally:
        if stream is not None:
            stream.close()
    out["\0top"] = (top or "").encode()
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

# Repository config can run commands (core.fsmonitor on any worktree scan, hooks, ssh/proxy/askpass/credential
# helpers on transport, external diff, pager). git itself trusts only "protected" config (system, global, command
# line, environment) for safe.directory; we do the same the other way round: every git run here gets these keys
# from the command line AND the environment (both win over .git/config), no network transport at all, no
# terminal prompt, and never a command that scans the work tree (dirtiness is checked in Python below).
SAFE_GIT_CONFIG = {
    "core.fsmonitor": "false", "core.hooksPath": os.devnull, "core.sshCommand": "false", "core.gitProxy": "",
    "core.askPass": "", "credential.helper": "", "diff.external": "", "core.pager": "cat", "core.editor": "false",
    "core.alternateRefsCommand": "", "gc.auto": "0", "maintenance.auto": "false", "protocol.allow": "never",
    "uploadpack.packObjectsHook": "", "core.untrackedCache": "false", "fetch.recurseSubmodules": "false",
}


def safe_git_env(allow_network: bool = False) -> dict:
    cfg = dict(SAFE_GIT_CONFIG)
    if allow_network:  # our own cache clone from COSMOS_OVERLAY_GIT_URL: transports allowed, config still pinned
        del cfg["protocol.allow"], cfg["core.sshCommand"]
    env = {"GIT_TERMINAL_PROMPT": "0", "GIT_NO_LAZY_FETCH": "1", "GIT_CONFIG_COUNT": str(len(cfg)),
           "GIT_OPTIONAL_LOCKS": "0"}
    for i, (k, v) in enumerate(cfg.items()):
        env[f"GIT_CONFIG_KEY_{i}"], env[f"GIT_CONFIG_VALUE_{i}"] = k, v
    return env


def _harden(repo, allow_network: bool = False) -> None:
    cfg = dict(SAFE_GIT_CONFIG)
    if allow_network:
        del cfg["protocol.allow"], cfg["core.sshCommand"]
    repo.git.update_environment(**safe_git_env(allow_network))
    repo.git.set_persistent_git_options(c=[f"{k}={v}" for k, v in cfg.items()])


def _git_error(e, path: str) -> InstallerError:
    text = e if isinstance(e, str) else str(getattr(e, "stderr", "") or e)
    if "dubious ownership" in text:
        return InstallerError("git refuses the clone: it is owned by another user (dubious ownership)", path,
                              f"use a clone you own, or if you trust it run 'git config --global --add "
                              f"safe.directory {path}' and retry")
    return InstallerError("git failed reading the clone", f"{path}: {_last_line(text)[:160]}",
                          "check the clone with 'git fsck' or use --source pypi")


def _is_bare(path: str) -> bool:
    return all(os.path.exists(os.path.join(path, n)) for n in ("HEAD", "objects", "refs"))


def _last_line(stderr) -> str:
    lines = [ln.strip(" '\"") for ln in str(stderr or "").splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("warning:")]
    return lines[-1] if lines else "no message"


def clone_git() -> str:
    """A bare clone of upstream in the cache dir (COSMOS_OVERLAY_GIT_URL overrides the URL, e.g. a mirror).
    The clone is made under a temporary name and renamed into place complete, so a killed clone is retried."""
    import git  # GitPython; imported here so the other sources work without it

    PIN = pin.active().commit
    url = os.environ.get("COSMOS_OVERLAY_GIT_URL", pin.active().git_url)
    dest = os.path.join(cache_dir(), "cosmos-predict2.git")
    try:
        repo = None
        if os.path.isdir(dest):
            try:
                repo = git.Repo(dest)
            except (git.InvalidGitRepositoryError, git.NoSuchPathError):
                shutil.rmtree(dest)  # our own cache entry, left empty or half-written: start again
        if repo is not None:
            _harden(repo, allow_network=True)
            try:
                repo.commit(PIN)
                return dest
            except (ValueError, git.BadName):
                repo.git.fetch(url, "+refs/heads/*:refs/heads/*")
        else:
            os.makedirs(cache_dir(), exist_ok=True)
            tmp = f"{dest}.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            # blobs >= 4 MiB are git-only media (assets/*.mp4) that training never reads
            try:
                git.Repo.clone_from(url, tmp, bare=True, multi_options=["--filter=blob:limit=4m"],
                                    env=safe_git_env(allow_network=True))
                os.replace(tmp, dest)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except git.GitCommandError as e:
        last = _last_line(e.stderr)
        raise InstallerError(f"cannot clone {redact_url(url)}", f"git: {redact_url(last)[:160]}",
                             _offline_hint() + " (the default --source pypi needs only PyPI)") from None
    return dest


def from_git(path: str) -> Upstream:
    import git

    try:
        return _from_git(path)
    except git.GitCommandError as e:
        raise _git_error(e, path) from None


def _changed_library_files(worktree: str, head) -> list:
    """Library files whose work-tree bytes differ from HEAD, hashed here in Python: `git status`/`git diff` would
    run the clone's fsmonitor and clean filters."""
    entries = manifest.load()
    blobs = {item.path: item.hexsha for item in head.tree.traverse() if item.type == "blob"}
    out = []
    for p in sorted(blobs):
        e = entries.get(p)
        if e is None or not e.in_sdist:
            continue
        full = os.path.join(worktree, p)
        if os.path.islink(full) or not os.path.isfile(full):
            out.append(p)
            continue
        with open(full, "rb") as f:
            if manifest.git_blob_sha1(f.read()) != blobs[p]:
                out.append(p)
    return out


def _preflight(path: str) -> None:
    """Let git itself judge the repository first (ownership, format) with the safe config, in one short run."""
    cfg = [a for k, v in SAFE_GIT_CONFIG.items() for a in ("-c", f"{k}={v}")]
    try:
        r = subprocess.run(["git", *cfg, "-C", path, "rev-parse", "--git-dir"], capture_output=True, text=True,
                           env={**os.environ, **safe_git_env()}, stdin=subprocess.DEVNULL, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        raise InstallerError(f"cannot run git: {e}", path, "install git, or use --source pypi") from None
    if r.returncode != 0:
        raise _git_error(r.stderr, path)


def _from_git(path: str) -> Upstream:
    PIN, GIT_URL = pin.active().commit, pin.active().git_url
    import git

    _preflight(path)
    try:
        repo = git.Repo(path)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise InstallerError("not a git repository", path, "point --source at a clone of " + GIT_URL) from None
    # a mirror may lack core.bare=true: no work tree means there is nothing to be dirty or checked out
    bare = repo.bare or repo.working_tree_dir is None or not os.path.exists(os.path.join(path, ".git"))
    _harden(repo)
    if bare:  # otherwise GitPython runs git in the parent directory, which git may reject or misread
        repo.git.update_environment(GIT_DIR=os.path.abspath(path))
    if not bare:
        try:
            head_commit = repo.head.commit
            head = head_commit.hexsha
        except ValueError:
            head_commit, head = None, "(none)"
        changed = _changed_library_files(repo.working_tree_dir, head_commit) if head_commit is not None else []
        if changed:
            raise InstallerError(f"git clone has uncommitted changes in {changed[0]}", path,
                                 f"commit/stash them or use a clean clone at {PIN[:8]}")
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
