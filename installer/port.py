"""Move the patch series to another upstream commit over a local upstream clone.

    python -m installer port --upstream CLONE --to REV [--from PIN] [--dry-run]
    python -m installer port --continue      (after resolving a conflict in the work tree)
    python -m installer port --abort
    python -m installer port --upstream CLONE --canonicalize [--from PIN]   (rewrite a series made with plain
                                                                           `git diff` so that it round-trips)

1. Import: a scratch repository (objects borrowed from CLONE through git alternates, nothing copied into CLONE)
   gets the FROM pin's commit and one commit per patch of its series. Every commit is exported again with
   `export_commit` (the code behind tools/export_series.py) and must equal the patch file byte for byte.
2. Replay onto REV, one patch at a time, each classified: clean / offset / fuzz / 3-way / conflict / drop
   (drop = the patch reverse-applies: upstream already has it). A conflict stops with the conflict markers left in
   the work tree; resolve them and run --continue (or --abort). A hand resolution is recorded in
   patches/<REV>/RESOLUTIONS (with the sha256 of the source patch) and reused when a later port of the very same
   source patch conflicts again, so re-running the port after new patches join the series needs no new work.
3. Export patches/<REV>/: the patches (canonical form, zero offset and fuzz on REV by construction), series,
   manifest.tsv (git blob SHA-1 and size of every file at REV), upstream.toml, TREE_DIGEST (the installer's own
   engine applies the new series to REV's library files plus the overlay) and PORT_REPORT.md (the table, the
   upstream commits that touched each patch's files, and a drift scan of REV against FROM).

Git runs with command-executing configuration disabled (hooks, fsmonitor, external diff, pager, system and
global config) and with a fixed author and date, so the same inputs give the same commits.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

from . import pin
from .errors import InstallerError, OneLineParser

LIBRARY_DIRS = ("cosmos_predict2/", "imaginaire/")  # what an sdist of upstream holds: the managed part
NAME_TRAILER = "Patch-Name: "
RESOLUTIONS = "RESOLUTIONS"  # in patches/<REV>/: patches resolved by hand, reused by the next port of the same source
STATE = "cosmos-port.json"  # inside the work repository's .git
_SAFE = ["-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=", "-c", "core.pager=cat", "-c", "diff.external=",
         "-c", "diff.noprefix=false", "-c", "diff.mnemonicPrefix=false", "-c", "diff.renames=false",
         "-c", "core.autocrlf=false", "-c", "core.safecrlf=false", "-c", "commit.gpgSign=false",
         "-c", "core.sparseCheckoutCone=false", "-c", "protocol.allow=never", "-c", "core.askPass=",
         "-c", "credential.helper=", "-c", "core.editor=false", "-c", "sequence.editor=false",
         "-c", "gc.auto=0", "-c", "maintenance.auto=false", "-c", "core.quotePath=false"]
_STAMP = "2000-01-01T00:00:00+0000"


def _env() -> dict:
    e = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    e.update(GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull, GIT_TERMINAL_PROMPT="0", LC_ALL="C",
             GIT_NO_REPLACE_OBJECTS="1", GIT_OPTIONAL_LOCKS="0", GIT_AUTHOR_NAME="cosmos-predict2-overlay port",
             GIT_AUTHOR_EMAIL="port@localhost", GIT_COMMITTER_NAME="cosmos-predict2-overlay port",
             GIT_COMMITTER_EMAIL="port@localhost", GIT_AUTHOR_DATE=_STAMP, GIT_COMMITTER_DATE=_STAMP)
    return e


def git(repo: str, *args: str, check: bool = True, stdin: bytes | None = None, text: bool = True):
    """Run git in repo (a work tree or a git dir) with the safe configuration; stdout, or the process if not check."""
    r = subprocess.run(["git", *_SAFE, "-C", repo, *args], capture_output=True, input=stdin, env=_env())
    if not check:
        return r
    if r.returncode != 0:
        last = ([ln for ln in r.stderr.decode(errors="replace").splitlines() if ln.strip()] or ["no output"])[-1]
        raise InstallerError(f"git {args[0]} failed: {last.strip()[:160]}", repo,
                             "check the repository (git fsck) and the revision names")
    return r.stdout.decode("utf-8", errors="surrogateescape") if text else r.stdout


# ---- export (tools/export_series.py) and import ----------------------------------------------------------------

def slug(subject: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", subject.lower()).strip("-")


def export_commit(repo: str, commit: str) -> tuple[str, bytes]:
    """(patch name or '' when the commit carries none, patch bytes): header = subject, blank, body; then the diff."""
    subject = git(repo, "log", "-1", "--format=%s", commit).strip()
    body = git(repo, "log", "-1", "--format=%b", commit).rstrip("\n")
    name = ""
    lines = body.split("\n")
    if lines and lines[-1].startswith(NAME_TRAILER):
        name = lines[-1][len(NAME_TRAILER):].strip()
        body = "\n".join(lines[:-1])
    body = body.strip()
    if not body:
        raise InstallerError(f"commit {commit[:10]} '{subject}' has no body", repo,
                             "write the why into the commit body: it is the patch header")
    diff = git(repo, "show", "--format=", "--no-color", "--no-renames", "--no-ext-diff", "--no-textconv", "-U3",
               "--full-index", "--src-prefix=a/", "--dst-prefix=b/", commit, text=False)
    return name, f"{subject}\n\n{body}\n\n".encode() + diff


def export_series(repo: str, base: str, out: str, upstream_commit: str, head: str = "HEAD") -> list[str]:
    """Every commit base..head -> out/NNNN-<slug>.patch (or its Patch-Name) and out/series. Returns the names."""
    commits = git(repo, "rev-list", "--reverse", f"{base}..{head}").split()
    os.makedirs(out, exist_ok=True)
    for old in os.listdir(out):
        if old.endswith(".patch"):
            os.remove(os.path.join(out, old))
    names = []
    for i, c in enumerate(commits, 1):
        name, data = export_commit(repo, c)
        name = name or f"{i:04d}-{slug(git(repo, 'log', '-1', '--format=%s', c).strip())}.patch"
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
        names.append(name)
    with open(os.path.join(out, "series"), "w", encoding="utf-8", newline="\n") as f:
        f.write(f"# Patch series over nvidia-cosmos/cosmos-predict2@{upstream_commit}, applied in order (-p1).\n")
        f.write("# Generated by tools/export_series.py / installer port; one concern per patch, header = why.\n")
        f.writelines(n + "\n" for n in names)
    return names


def split_patch(data: bytes, where: str) -> tuple[str, str]:
    """(subject, body) of a patch file's header."""
    i = data.find(b"\ndiff --git ")
    if i < 0:
        raise InstallerError("patch has no 'diff --git' section", where, "regenerate it with git diff")
    head = data[:i].decode("utf-8")
    subject, _, body = head.partition("\n")
    return subject.strip(), body.strip()


def import_series(work: str, base: str, series_dir: str, names: list[str], check: bool = True) -> list[str]:
    """One commit per patch on top of base (checked out in work); checks the byte-exact round trip."""
    commits = []
    for n in names:
        where = os.path.join(series_dir, n)
        with open(where, "rb") as f:
            data = f.read()
        subject, body = split_patch(data, where)
        r = git(work, "apply", "--index", "-p1", where, check=False)
        if r.returncode != 0:
            raise InstallerError(f"patch {n} does not apply to its own pin", where + ": "
                                 + r.stderr.decode(errors="replace").strip().splitlines()[-1][:120],
                                 "fix the series first (python -m installer digest --from-source pypi)")
        _commit(work, f"{subject}\n\n{body}\n\n{NAME_TRAILER}{n}\n")
        c = git(work, "rev-parse", "HEAD").strip()
        name, again = export_commit(work, c)
        if check and (name != n or again != data):
            a, b = data.split(b"\n"), again.split(b"\n")
            k = next((i for i in range(min(len(a), len(b))) if a[i] != b[i]), min(len(a), len(b)))
            raise InstallerError(f"patch {n} does not round-trip byte for byte (line {k + 1}: "
                                 f"{(a[k] if k < len(a) else b'<end>')[:50]!r} vs "
                                 f"{(b[k] if k < len(b) else b'<end>')[:50]!r})", where,
                                 "rewrite the series in canonical form with 'python -m installer port --upstream "
                                 "CLONE --canonicalize' (header: subject, blank line, why, blank line; then "
                                 "'git diff --full-index' output), then retry")
        commits.append(c)
    return commits


def _commit(work: str, message: str) -> None:
    """Commit the index verbatim (write-tree --missing-ok: a partial mirror may lack big media blobs)."""
    tree = git(work, "write-tree", "--missing-ok").strip()
    parent = git(work, "rev-parse", "HEAD").strip()
    c = git(work, "commit-tree", tree, "-p", parent, "-F", "-", stdin=message.encode()).strip()
    git(work, "update-ref", "HEAD", c)


# ---- the port ---------------------------------------------------------------------------------------------------

@dataclass
class Row:
    name: str
    status: str  # clean | offset | fuzz | 3-way | conflict | drop
    detail: str = ""
    upstream: str = ""  # upstream commits FROM..REV that touched the patch's files


def _clone_objects(clone: str) -> str:
    if not os.path.isdir(clone):
        raise InstallerError("upstream clone not found", clone, "pass --upstream PATH to a clone or bare mirror")
    r = git(clone, "rev-parse", "--git-common-dir", check=False)
    if r.returncode != 0:
        raise InstallerError("not a git repository", clone, "pass --upstream PATH to a clone or bare mirror")
    d = r.stdout.decode().strip()
    return os.path.join(os.path.abspath(os.path.join(clone, d)), "objects")


def _rev(clone: str, rev: str) -> str:
    r = git(clone, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", check=False)
    if r.returncode != 0:
        raise InstallerError(f"revision {rev!r} is not in the clone", clone,
                             f"fetch it into the clone (git -C {clone} fetch) or name another --to")
    return r.stdout.decode().strip()


def _patch_files(data: bytes) -> list[str]:
    out = []
    for m in re.finditer(rb"^diff --git a/(\S+) b/(\S+)$", data, re.M):
        for p in (m.group(1).decode(), m.group(2).decode()):
            if p not in out:
                out.append(p)
    return out


def _state_path(work: str) -> str:
    return os.path.join(work, ".git", STATE)


def _save(work: str, st: dict) -> None:
    with open(_state_path(work), "w", encoding="utf-8") as f:
        json.dump(st, f, indent=1)


def _load(work: str) -> dict:
    try:
        with open(_state_path(work), encoding="utf-8") as f:
            return json.load(f)
    except OSError:
        raise InstallerError("no port in progress", work, "start one with 'port --upstream CLONE --to REV'") from None


def default_work() -> str:
    from .fetch import cache_dir
    return os.path.join(cache_dir(), "port-work")


def canonicalize(clone: str, from_commit: str | None, root: str) -> int:
    """Rewrite patches/<pin>/ in the canonical form the port round-trips (same trees, same names)."""
    src = pin.find(from_commit, root) if from_commit else pin.default(root)
    from . import patch as patch_mod

    names = patch_mod.read_series(src.directory)
    work = tempfile.mkdtemp(prefix="cosmos-port-canon-")
    try:
        _prepare(work, clone, src, names)
        commits = import_series(work, src.commit, src.directory, names, check=False)
        changed = []
        for n, c in zip(names, commits):
            with open(os.path.join(src.directory, n), "rb") as f:
                before = f.read()
            after = export_commit(work, c)[1]
            if after != before:
                with open(os.path.join(src.directory, n), "wb") as f:
                    f.write(after)
                changed.append(n)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{len(changed)} of {len(names)} patches rewritten in canonical form in {src.directory}"
          + "".join(f"\n  {n}" for n in changed))
    return 0


def _prepare(work: str, clone: str, src: pin.Pin, names: list[str]) -> None:
    """A scratch repository borrowing CLONE's objects, at src.commit, with only the series' files checked out."""
    objects = _clone_objects(clone)
    if git(clone, "cat-file", "-e", f"{src.commit}^{{commit}}", check=False).returncode != 0:
        raise InstallerError(f"the clone lacks the from-pin's commit {src.short}", clone,
                             "fetch it into the clone or pass --from another pin")
    os.makedirs(work, exist_ok=True)
    git(work, "init", "-q")
    with open(os.path.join(work, ".git", "objects", "info", "alternates"), "w", encoding="utf-8") as f:
        f.write(objects + "\n")
    files: list[str] = []
    for n in names:
        with open(os.path.join(src.directory, n), "rb") as f:
            files += [p for p in _patch_files(f.read()) if p not in files]
    # only the series' files are checked out: a partial mirror may lack big media blobs the port never needs
    git(work, "sparse-checkout", "set", "--no-cone", "--stdin", stdin="".join(f"/{p}\n" for p in files).encode())
    git(work, "checkout", "-q", "--detach", src.commit)


def start(clone: str, to: str, from_commit: str | None, work: str, root: str, overlay_dir: str | None,
          dry_run: bool) -> int:
    src = pin.find(from_commit, root) if from_commit else pin.default(root)
    _clone_objects(clone)
    to_sha = _rev(clone, to)
    if os.path.exists(_state_path(work)):
        raise InstallerError("a port is already in progress", work, "run 'port --continue' or 'port --abort'")
    if dry_run:
        work = tempfile.mkdtemp(prefix="cosmos-port-dry-")
    elif os.path.exists(work) and os.listdir(work):
        raise InstallerError("work directory exists and is not empty", work, "remove it or pass another --work")
    from . import patch as patch_mod

    names = patch_mod.read_series(src.directory)
    try:
        _prepare(work, clone, src, names)
        commits = import_series(work, src.commit, src.directory, names)
        git(work, "checkout", "-q", "--detach", to_sha)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)  # nothing to continue from: leave no half-made work directory
        raise
    source_sha256 = {}
    for n in names:
        with open(os.path.join(src.directory, n), "rb") as f:
            source_sha256[n] = _sha256(f.read())
    st = {"from": src.commit, "to": to_sha, "clone": os.path.abspath(clone), "root": os.path.abspath(root),
          "series": names, "commits": commits, "source_sha256": source_sha256, "next": 0, "rows": [],
          "dry_run": dry_run,
          "overlay_dir": overlay_dir}
    _save(work, st)
    try:
        return _run(work, st)
    finally:
        if dry_run:
            shutil.rmtree(work, ignore_errors=True)


def _touched(work: str, st: dict, files: list[str]) -> str:
    out = git(work, "log", "--format=%h %s", f"{st['from']}..{st['to']}", "--", *files).strip().splitlines()
    return "; ".join(out)


def _classify(work: str, patch_file: str) -> tuple[str, str, list]:
    """(status, detail, git apply arguments to apply it) without changing anything; status '' = needs 3-way."""
    r = git(work, "apply", "--check", "-v", patch_file, check=False)
    if r.returncode == 0:
        offs = re.findall(r"offset (-?\d+) lines?", r.stderr.decode(errors="replace"))
        return ("offset", "offset " + ", ".join(offs), []) if offs else ("clean", "", [])
    if git(work, "apply", "--check", "-R", patch_file, check=False).returncode == 0:
        return "drop", "upstream already contains it (reverse applies)", []
    for c in (2, 1):
        if git(work, "apply", "--check", f"-C{c}", patch_file, check=False).returncode == 0:
            return "fuzz", f"fuzz {3 - c}", [f"-C{c}"]
    return "", "", []


def _run(work: str, st: dict) -> int:
    tmp = os.path.join(work, ".git", "port-patch")
    while st["next"] < len(st["series"]):
        i = st["next"]
        name, c = st["series"][i], st["commits"][i]
        _, data = export_commit(work, c)
        with open(tmp, "wb") as f:
            f.write(data)
        files = _patch_files(data)
        status, detail, args = _classify(work, tmp)
        if status and status != "drop":
            git(work, "apply", "--index", *args, tmp)
        elif not status:
            r = git(work, "apply", "--3way", "--index", tmp, check=False)
            err = r.stderr.decode(errors="replace")
            if r.returncode == 0 and "with conflicts" not in err:
                status, detail = "3-way", "merged without conflicts"
            elif _reuse_resolution(work, st, name, data, tmp):
                status, detail = "conflict", "resolved by the recorded resolution " + _rel(st, name)
            else:
                conflicted = sorted(set(re.findall(r"Applied patch to '([^']+)' with conflicts", err))) or files
                row = Row(name, "conflict", "in " + ", ".join(conflicted), _touched(work, st, files))
                if st["dry_run"]:  # go on without it; later patches on the same files may be misjudged
                    git(work, "reset", "-q", "--hard", "HEAD")
                    st.setdefault("skipped", {}).update({f: name for f in files})
                    st["rows"].append(row.__dict__)
                    st["next"] += 1
                    continue
                st["rows"].append(row.__dict__)
                st["pending"] = {"name": name, "commit": c, "files": conflicted}
                _save(work, st)
                print(table(st), flush=True)
                raise InstallerError(f"patch {name} conflicts with upstream {st['to'][:8]}",
                                     os.path.join(work, conflicted[0]),
                                     "resolve the conflict markers in the work tree, then run 'python -m installer "
                                     f"port --continue{_work_arg(work)}' (or --abort)")
        if status != "drop":
            _commit(work, git(work, "log", "-1", "--format=%B", c))
        after = sorted({st["skipped"][f] for f in files if f in st.get("skipped", {})})
        if after:
            detail = (detail + "; " if detail else "") + "dry run: judged without " + ", ".join(after)
        st["rows"].append(Row(name, status, detail, _touched(work, st, files)).__dict__)
        st["next"] += 1
        _save(work, st)
    if st["dry_run"]:
        print(table(st))
        return 0
    return _finish(work, st)


def _sha256(data: bytes) -> str:
    import hashlib
    return hashlib.sha256(data).hexdigest()


def _rel(st: dict, name: str) -> str:
    return f"patches/{st['to']}/{name}"


def read_resolutions(directory: str) -> dict:
    """name -> sha256 of the source patch that patches/<REV>/<name> resolves (RESOLUTIONS: '<name> <sha256>')."""
    out = {}
    try:
        with open(os.path.join(directory, RESOLUTIONS), encoding="utf-8") as f:
            for line in f:
                parts = line.split("#", 1)[0].split()
                if len(parts) == 2:
                    out[parts[0]] = parts[1]
    except OSError:
        pass
    return out


def _reuse_resolution(work: str, st: dict, name: str, source: bytes, tmp: str) -> bool:
    """A conflict already resolved by an earlier port of the same source patch: apply that result instead.

    Used only when patches/<REV>/RESOLUTIONS names the patch with the sha256 of the very same source patch, and
    the recorded patch applies with zero offset and fuzz where this port stands."""
    prior_dir = os.path.join(st["root"], st["to"])
    prior = os.path.join(prior_dir, name)
    git(work, "reset", "-q", "--hard", "HEAD")  # drop the failed 3-way attempt
    src_sha = st["source_sha256"][name]
    if read_resolutions(prior_dir).get(name) != src_sha or not os.path.isfile(prior):
        git(work, "apply", "--3way", "--index", tmp, check=False)  # leave the conflict for the maintainer
        return False
    r = git(work, "apply", "--check", "-v", prior, check=False)
    if r.returncode != 0 or b"offset" in r.stderr:
        git(work, "apply", "--3way", "--index", tmp, check=False)
        return False
    git(work, "apply", "--index", prior)
    st.setdefault("resolved", {})[name] = src_sha
    return True


def _work_arg(work: str) -> str:
    return "" if os.path.abspath(work) == os.path.abspath(default_work()) else f" --work {work}"


def resume(work: str) -> int:
    st = _load(work)
    pend = st.get("pending")
    if not pend:
        return _run(work, st) if st["next"] < len(st["series"]) else _finish(work, st)
    marked = []
    for p in pend["files"]:
        full = os.path.join(work, p)
        if os.path.isfile(full):
            with open(full, "rb") as f:
                if re.search(rb"^(<<<<<<<|>>>>>>>)( |$)", f.read(), re.M):
                    marked.append(p)
    if marked:
        raise InstallerError(f"conflict markers remain in {marked[0]}", os.path.join(work, marked[0]),
                             "resolve them, then run 'port --continue' again")
    git(work, "add", "-A", "--sparse", "--", *[p for p in pend["files"]])
    row = st["rows"][-1]
    if git(work, "diff", "--cached", "--quiet", check=False).returncode == 0:
        row["status"], row["detail"] = "drop", "conflict resolved to upstream's version (nothing left)"
    else:
        row["detail"] += " (resolved by hand)"
        _commit(work, git(work, "log", "-1", "--format=%B", pend["commit"]))
        st.setdefault("resolved", {})[pend["name"]] = st["source_sha256"][pend["name"]]
    del st["pending"]
    st["next"] += 1
    _save(work, st)
    return _run(work, st)


def abort(work: str) -> int:
    _load(work)  # only ever remove a directory that holds our state
    shutil.rmtree(work)
    print(f"port aborted; removed {work}")
    return 0


def table(st: dict) -> str:
    out = [f"port {st['from'][:8]} -> {st['to'][:8]}:",
           "| patch | result | detail | upstream commits touching its files |",
           "|---|---|---|---|"]
    for r in st["rows"]:
        out.append(f"| {r['name']} | {r['status']} | {r['detail']} | {r['upstream'] or '-'} |")
    for n in st["series"][len(st["rows"]):]:
        out.append(f"| {n} | (not yet) | | |")
    return "\n".join(out)


# ---- the exported pin -------------------------------------------------------------------------------------------

def manifest_tsv(work: str, commit: str) -> str:
    tree = git(work, "rev-parse", f"{commit}^{{tree}}").strip()
    rows = []
    for line in git(work, "ls-tree", "-r", "--full-tree", commit).splitlines():
        meta, path = line.split("\t", 1)
        mode, kind, sha = meta.split()
        if kind == "blob":
            rows.append((mode, sha, path))
    sizes = {}
    check = git(work, "cat-file", "--batch-check=%(objectname) %(objectsize)",
                stdin="".join(s + "\n" for _, s, _ in rows).encode()).splitlines()
    for ln in check:
        sha, size = ln.split(" ", 1)
        sizes[sha] = size if size.isdigit() else "-"  # "missing": a partial mirror; the SHA-1 is still checked
    out = [f"# cosmos-predict2 at commit {commit} (tree {tree}): one line per file",
           "# mode\tgit_blob_sha1\tsize\tlibrary\tpath"]
    out += [f"{m}\t{s}\t{sizes.get(s, '-')}\t{'yes' if p.startswith(LIBRARY_DIRS) else 'no'}\t{p}"
            for m, s, p in sorted(rows, key=lambda r: r[2])]
    return "\n".join(out) + "\n"


def _show(work: str, commit: str, path: str) -> str | None:
    r = git(work, "show", f"{commit}:{path}", check=False)
    return r.stdout.decode("utf-8", errors="replace") if r.returncode == 0 else None


def _pyproject_version(text: str | None) -> str:
    m = re.search(r'^\[project\][^\[]*?^version\s*=\s*"([^"]+)"', text or "", re.M | re.S)
    return m.group(1) if m else "unknown"


def _checkpoints(old: dict, script: str | None) -> dict:
    found = dict(re.findall(r'"([\w.-]+/[\w.-]+)"\s*:\s*"([0-9a-f]{40})"', script or ""))
    return {k: found.get(k, v) for k, v in old.items()}


DRIFT = [
    ("new \"cuda\" literal / torch.cuda call", re.compile(r"""["']cuda(:\d+)?["']|\.cuda\(|torch\.cuda\.""")),
    ("TransformerEngine", re.compile(r"transformer_engine|\bimport te\b|\bte\.pytorch")),
    ("apex", re.compile(r"\bapex\b")),
    ("flash-attn assert / import", re.compile(r"assert .*flash|flash_attn")),
    ("bare torch.load (no weights_only)", re.compile(r"torch\.load\((?!.*weights_only)")),
]


def drift_scan(work: str, st: dict, overlay_files: list[str]) -> list[str]:
    a, b = st["from"], st["to"]
    out = []
    diff = git(work, "diff", "-U0", "--no-color", "--no-ext-diff", "--no-renames", a, b, "--", *LIBRARY_DIRS)
    path, ln = "", 0
    hits: dict = {}
    for line in diff.splitlines():
        if line.startswith("+++ "):
            path = line[6:] if line.startswith("+++ b/") else ""
        elif line.startswith("@@"):
            m = re.search(r"\+(\d+)", line)
            ln = int(m.group(1)) if m else 0
        elif line.startswith("+") and path:
            code = line[1:]
            if not code.lstrip().startswith("#"):
                for what, rx in DRIFT:
                    if rx.search(code):
                        hits.setdefault(what, []).append(f"{path}:{ln}: `{code.strip()[:100]}`")
                if "checkpoint" in path and "flash" in code:
                    hits.setdefault("flash_attn-only checkpointing policy", []).append(
                        f"{path}:{ln}: `{code.strip()[:100]}`")
            ln += 1
    for what, _ in DRIFT + [("flash_attn-only checkpointing policy", None)]:
        found = hits.get(what, [])
        out.append(f"- {what}: {len(found)} new line(s)" + "".join(f"\n  - {h}" for h in found[:40])
                   + (f"\n  - ... and {len(found) - 40} more" if len(found) > 40 else ""))
    changed = set(git(work, "diff", "--name-only", "--no-renames", a, b).splitlines())
    replaced = sorted(p for p in overlay_files if p in changed)
    out.append(f"- overlay files replacing upstream files that changed: {len(replaced)}"
               + "".join(f"\n  - {p}" for p in replaced))
    deps = []
    old, new = _deps(_show(work, a, "pyproject.toml")), _deps(_show(work, b, "pyproject.toml"))
    for name in sorted(set(old) | set(new)):
        if old.get(name) != new.get(name):
            deps.append(f"{old.get(name, '(none)')} -> {new.get(name, '(removed)')}")
    out.append(f"- dependency changes in pyproject.toml: {len(deps)}" + "".join(f"\n  - `{d}`" for d in deps))
    return out


def _deps(text: str | None) -> dict:
    """'name[extra]' -> requirement string for every quoted requirement in dependency arrays of pyproject.toml."""
    out, inside, section = {}, False, ""
    for line in (text or "").splitlines():
        s = line.strip()
        if s.startswith("[") and not inside:
            section = s
        if re.match(r"^[\w-]+\s*=\s*\[", s) and (section in ("[project]", "[project.optional-dependencies]")):
            inside = True
            key = s.split("=")[0].strip()
        if inside:
            for req in re.findall(r'"([^"]+)"', s.split("=", 1)[1] if "=" in s and s.endswith("[") else s):
                m = re.match(r"[A-Za-z0-9_.\-\[\]]+", req)
                if m:
                    out[f"{key}:{m.group(0).lower()}"] = f"{key}: {req}"
            if s.endswith("]"):
                inside = False
    return out


def _finish(work: str, st: dict) -> int:
    from . import digest, engine, overlay, paths

    src = pin.find(st["from"], st["root"])
    out = os.path.join(st["root"], st["to"])
    os.makedirs(out, exist_ok=True)
    names = export_series(work, st["to"], out, st["to"])
    with open(os.path.join(out, RESOLUTIONS), "w", encoding="utf-8", newline="\n") as f:
        f.write("# Patches whose conflict was resolved by hand, with the sha256 of the source patch they resolve.\n"
                "# 'installer port' reuses such a patch when the same source patch conflicts again.\n")
        f.writelines(f"{n} {h}\n" for n, h in sorted(st.get("resolved", {}).items()) if n in names)
    with open(os.path.join(out, "manifest.tsv"), "w", encoding="utf-8", newline="\n") as f:
        f.write(manifest_tsv(work, st["to"]))
    new = pin.Pin(commit=st["to"], version=_pyproject_version(_show(work, st["to"], "pyproject.toml")),
                  git_url=src.git_url, manifest="manifest.tsv", directory=out, default=False,
                  checkpoints=_checkpoints(src.checkpoints, _show(work, st["to"], "scripts/download_checkpoints.py")))
    with open(os.path.join(out, pin.PIN_FILE), "w", encoding="utf-8", newline="\n") as f:
        f.write(new.to_toml())
    # TREE_DIGEST: the installer's own strict engine on REV's library files (zero offset, zero fuzz)
    overlay_dir = st.get("overlay_dir") or paths.overlay_dir()
    saved = list(pin._ACTIVE)
    pin._ACTIVE[:] = [pin.from_file(os.path.join(out, pin.PIN_FILE))]
    try:
        from . import manifest
        entries = manifest.load()
        lib = [p for p, e in entries.items() if e.in_sdist]
        blobs = _read_blobs(work, st["to"], lib)
        upstream = {p: (blobs[p], entries[p].mode) for p in lib}
        cfg = engine.Config(target=out, patch_dir=out, overlay_dir=overlay_dir)
        ours = engine.load_ours(cfg)
        _, managed = engine.build(upstream, cfg, ours)
        value = digest.tree_digest(managed)
    finally:
        pin._ACTIVE[:] = saved
    with open(os.path.join(out, "TREE_DIGEST"), "w", encoding="utf-8") as f:
        f.write(f"{value}\n")
    ov = sorted(overlay.load(overlay_dir))
    rows = st["rows"]
    counts = {s: sum(r["status"] == s for r in rows) for s in ("clean", "offset", "fuzz", "3-way", "conflict", "drop")}
    rep = [f"# Port of the series {src.short} -> {st['to'][:8]}", "",
           f"Generated by `python -m installer port --upstream CLONE --to {st['to']} --from {src.commit}`.",
           f"From `patches/{src.commit}/` ({len(st['series'])} patches) to `patches/{st['to']}/` "
           f"({len(names)} patches): " + ", ".join(f"{v} {k}" for k, v in counts.items() if v) + ".",
           "Every exported patch applies to the new commit with zero offset and zero fuzz (checked by the "
           "installer's engine while computing TREE_DIGEST).", "",
           "## Patches", "", table(st).split("\n", 1)[1], "",
           f"## Upstream commits {src.short}..{st['to'][:8]}", "",
           *[f"- {ln}" for ln in git(work, "log", "--format=%h %s", f"{src.commit}..{st['to']}").splitlines()], "",
           "## Drift scan (lines upstream added in the library, overlay, dependencies)", "",
           *drift_scan(work, st, ov), "",
           "## Checkpoint revisions", "",
           *[f"- {k}: {v}" + ("" if src.checkpoints.get(k) == v else f" (was {src.checkpoints.get(k)})")
             for k, v in sorted(new.checkpoints.items())], ""]
    with open(os.path.join(out, "PORT_REPORT.md"), "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(rep))
    print(table(st))
    print(f"wrote {out}: {len(names)} patches, series, manifest.tsv, upstream.toml, TREE_DIGEST {value[:12]}, "
          "PORT_REPORT.md")
    shutil.rmtree(work)
    return 0


def _read_blobs(work: str, commit: str, paths_: list[str]) -> dict:
    req = "".join(f"{commit}:{p}\n" for p in paths_).encode()
    raw = git(work, "cat-file", "--batch", stdin=req, text=False)
    out, pos = {}, 0
    for p in paths_:
        nl = raw.index(b"\n", pos)
        header = raw[pos:nl].split()
        if len(header) < 3 or header[1] != b"blob":
            raise InstallerError(f"library file {p} is missing at {commit[:8]}", work, "use a complete clone")
        size = int(header[2])
        out[p] = raw[nl + 1:nl + 1 + size]
        pos = nl + 1 + size + 1
    return out


# ---- command line -----------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    """`python -m installer port ...`; failures are raised, and printed as one line by cli.handled (the CLI's one
    error handler)."""
    p = OneLineParser(prog="python -m installer port", error_where="port", description=__doc__.split("\n\n")[0])
    p.add_argument("--upstream", metavar="CLONE", help="local clone or bare mirror of upstream with both commits")
    p.add_argument("--to", metavar="REV", help="upstream commit, tag or branch to move the series to")
    p.add_argument("--from", dest="from_pin", metavar="PIN",
                   help="the pin whose series moves (default: the default pin)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--dry-run", action="store_true", help="print the table only; write nothing")
    g.add_argument("--continue", dest="cont", action="store_true", help="go on after resolving a conflict")
    g.add_argument("--abort", action="store_true", help="drop the port in progress")
    g.add_argument("--canonicalize", action="store_true",
                   help="rewrite the --from series in the canonical form the round trip needs (full blob ids, "
                        "header 'subject, blank, why, blank'), then stop")
    p.add_argument("--work", default=None, help="scratch repository (default: <cache>/port-work)")
    p.add_argument("--patches-root", default=None, help=argparse.SUPPRESS)  # tests: another patches/ folder
    p.add_argument("--overlay-dir", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    work = os.path.abspath(a.work or default_work())
    if a.cont:
        return resume(work)
    if a.abort:
        return abort(work)
    if a.canonicalize and a.upstream:
        return canonicalize(os.path.abspath(a.upstream), a.from_pin,
                            os.path.abspath(a.patches_root or pin.patches_root()))
    if not a.upstream or not a.to:
        raise InstallerError("--upstream and --to are needed", "port",
                             "run 'python -m installer port --upstream CLONE --to REV'")
    root = os.path.abspath(a.patches_root or pin.patches_root())
    return start(os.path.abspath(a.upstream), a.to, a.from_pin, work, root,
                 os.path.abspath(a.overlay_dir) if a.overlay_dir else None,
                 a.dry_run)
