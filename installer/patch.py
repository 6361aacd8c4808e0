"""Strict quilt-style series engine: -p1 unified diffs, zero fuzz, zero offset, byte-exact, all in memory.

A series file lists patch names in order ('#' comments and blank lines ignored). Each patch is free text (why)
followed by git-style diffs. Supported: edits, new files (/dev/null), deleted files, mode changes, CRLF content,
'\\ No newline at end of file'. Refused: binary patches, renames/copies, paths escaping the tree, any hunk whose
lines are not exactly at the stated line numbers.
"""

from __future__ import annotations

import io
import os
import posixpath
from dataclasses import dataclass

import unidiff

from .errors import InstallerError

Files = dict  # path -> (bytes, mode)
RESERVED = (".git", ".cosmos-overlay")


class PatchError(InstallerError):
    pass


@dataclass
class Hunk:
    number: int  # 1-based within the file
    source_start: int
    source: list  # list[bytes], each with its own line ending
    target: list


@dataclass
class FilePatch:
    patch: str  # patch file name (for messages)
    path: str  # target path (source path for deletions)
    kind: str  # "modify" | "add" | "delete"
    hunks: list
    old_mode: int | None = None
    new_mode: int | None = None


def read_series(patch_dir: str) -> list[str]:
    series = os.path.join(patch_dir, "series")
    if not os.path.isfile(series):
        raise PatchError("series file not found", series, "reinstall cosmos-predict2-overlay or restore patches/")
    names = []
    with open(series, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            name = line.split("#", 1)[0].strip()
            if not name:
                continue
            if "/" in name or "\\" in name or name.startswith(".") or not os.path.isfile(os.path.join(patch_dir, name)):
                raise PatchError(f"series line {n} names a missing patch '{name}'", series,
                                 "fix the series file or restore the patch")
            names.append(name)
    return names


def safe_path(raw: str, patch: str) -> str:
    """-p1 strip and refuse anything that could leave the tree or touch our state."""
    if raw.startswith("/"):  # -p1 would turn /etc/x into etc/x; an absolute name is a broken or hostile patch
        p = raw
    else:
        p = raw.split("/", 1)[1] if "/" in raw else raw
    norm = posixpath.normpath(p)
    if (not p or p.startswith("/") or "\\" in p or norm != p or norm.split("/")[0] in ("..", *RESERVED)
            or ".." in norm.split("/")):
        raise PatchError(f"path '{raw}' escapes the tree or touches reserved files", patch,
                         "refusing this patch; fix the series")
    return norm


def _mode(line: str) -> int:
    return int(line.rsplit(" ", 1)[1].strip(), 8)


def parse_patch(path: str) -> list[FilePatch]:
    name = os.path.basename(path)
    with open(path, "rb") as f:
        raw = f.read()
    try:
        # latin-1 maps bytes 1:1 so content round-trips byte-exact (CRLF, non-UTF-8)
        ps = unidiff.PatchSet(io.BytesIO(raw), encoding="latin-1")
    except unidiff.UnidiffParseError as e:
        raise PatchError(f"patch {name} is not a valid unified diff: {e}", path, "regenerate it") from None
    out = []
    for pf in ps:
        info = [str(x).rstrip("\r\n") for x in pf.patch_info or []]
        if pf.is_binary_file or any(i.startswith(("GIT binary patch", "Binary files")) for i in info):
            raise PatchError(f"binary patch refused for {pf.path}", name, "ship binary files through overlay/ instead")
        if any(i.startswith(("rename from", "copy from", "similarity index")) for i in info):
            raise PatchError(f"rename/copy refused for {pf.path}", name, "export the series with --no-renames")
        kind = "add" if pf.is_added_file else "delete" if pf.is_removed_file else "modify"
        fp = FilePatch(name, safe_path(pf.source_file if kind == "delete" else pf.target_file, name), kind, [])
        if kind == "modify" and safe_path(pf.source_file, name) != fp.path:
            raise PatchError(f"source and target paths differ for {pf.path}", name, "renames are not supported")
        for i in info:
            if i.startswith("old mode "):
                fp.old_mode = _mode(i)
            elif i.startswith(("new mode ", "new file mode ")):
                fp.new_mode = _mode(i)
            elif i.startswith("deleted file mode "):
                fp.old_mode = _mode(i)
        for n, h in enumerate(pf, 1):
            src, tgt = [], []
            last = None
            for ln in h:
                b = ln.value.encode("latin-1")
                if ln.line_type == "\\":  # '\ No newline at end of file' applies to the line before it
                    if last is not None:
                        for lst in last:
                            if lst and lst[-1].endswith(b"\n"):
                                lst[-1] = lst[-1][:-1]
                    continue
                if ln.line_type == " ":
                    src.append(b), tgt.append(b)
                    last = (src, tgt)
                elif ln.line_type == "-":
                    src.append(b)
                    last = (src,)
                elif ln.line_type == "+":
                    tgt.append(b)
                    last = (tgt,)
            fp.hunks.append(Hunk(n, h.source_start, src, tgt))
        out.append(fp)
    if not out:
        raise PatchError(f"patch {name} contains no diff", path, "remove it from the series or regenerate it")
    return out


def split_lines(data: bytes) -> list:
    """Lines split on b'\\n' only, each keeping its ending (so CR of CRLF stays part of the line)."""
    parts = data.split(b"\n")
    out = [p + b"\n" for p in parts[:-1]]
    if parts[-1]:
        out.append(parts[-1])
    return out


def _where_else(lines: list, block: list) -> int | None:
    if not block:
        return None
    for i in range(len(lines) - len(block) + 1):
        if lines[i:i + len(block)] == block:
            return i + 1
    return None


def apply_file_patch(fp: FilePatch, files: Files) -> None:
    """Apply one file's diff to `files` in place, or raise naming patch, file and hunk."""
    where = f"{fp.patch}: {fp.path}"
    todo = "regenerate the series for this upstream (zero fuzz, zero offset)"
    if fp.kind == "add":
        if fp.path in files:
            raise PatchError(f"patch {fp.patch} creates {fp.path}, which already exists", where, todo)
        if any(h.source for h in fp.hunks):
            raise PatchError(f"patch {fp.patch} adds {fp.path} with context lines", where, todo)
        files[fp.path] = (b"".join(b for h in fp.hunks for b in h.target), fp.new_mode or 0o100644)
        return
    if fp.path not in files:
        raise PatchError(f"patch {fp.patch} changes {fp.path}, which does not exist", where, todo)
    data, mode = files[fp.path]
    if fp.old_mode is not None and fp.old_mode != mode:
        raise PatchError(f"patch {fp.patch} expects mode {fp.old_mode:o} for {fp.path}, found {mode:o}", where, todo)
    lines = split_lines(data)
    if fp.kind == "delete":
        if b"".join(b for h in fp.hunks for b in h.source) != data:
            raise PatchError(f"patch {fp.patch} deletes {fp.path} but its content differs", where, todo)
        del files[fp.path]
        return
    out, pos = [], 0  # pos: 0-based index of the next unconsumed original line
    for h in fp.hunks:
        start = h.source_start - 1 if h.source else h.source_start  # a pure insertion goes after source_start
        if start < pos:
            raise PatchError(f"hunk #{h.number} of {fp.path} overlaps the previous hunk", where, todo)
        if lines[start:start + len(h.source)] != h.source:
            found = _where_else(lines, h.source)
            hint = f"; its context is at line {found} (offset {found - h.source_start:+d} refused)" if found else ""
            raise PatchError(f"patch {fp.patch} does not apply: {fp.path} hunk #{h.number} at line "
                             f"{h.source_start} does not match{hint}", where, todo)
        out.extend(lines[pos:start])
        out.extend(h.target)
        pos = start + len(h.source)
    out.extend(lines[pos:])
    files[fp.path] = (b"".join(out), fp.new_mode if fp.new_mode is not None else mode)


def apply_series(patch_dir: str, files: Files, names: list | None = None) -> Files:
    """New dict: `files` after every patch of the series. The input is not modified."""
    result = dict(files)
    for name in names if names is not None else read_series(patch_dir):
        for fp in parse_patch(os.path.join(patch_dir, name)):
            apply_file_patch(fp, result)
    return result
