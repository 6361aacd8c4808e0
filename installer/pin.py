"""The upstream pins: one `patches/<commit>/upstream.toml` per upstream commit the overlay supports.

This module is the only reader of those files; everything that needs the commit, the sdist, the manifest or the
checkpoint revisions asks `active()` (the pin chosen with `apply --pin`, else the default: the PyPI-backed one).

upstream.toml uses a small TOML subset that `parse_toml` reads on Python 3.10 too (no tomllib there, and no
dependency is added for it): `[table]` / `[a.b]` headers, `key = value` with bare or "quoted" keys, values that
are "basic strings" (\\" \\\\ \\n \\t escapes), integers, true/false; `#` comments. Anything else is an error.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from .errors import InstallerError

PIN_FILE = "upstream.toml"
_HERE = os.path.dirname(os.path.abspath(__file__))


# ---- the TOML subset --------------------------------------------------------------------------------------------

_KEY = r'(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*")'
_ESC = {'"': '"', "\\": "\\", "n": "\n", "t": "\t"}


def _unquote(s: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESC.get(m.group(1), "\0bad"), s[1:-1]) if s.startswith('"') else s


def parse_toml(text: str, where: str = "upstream.toml") -> dict:
    """The subset described in the module docstring -> nested dicts. Raises InstallerError on anything else."""
    root: dict = {}
    table = root
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(rf"\[\s*({_KEY}(?:\s*\.\s*{_KEY})*)\s*\]\s*(?:#.*)?", line)
        if m:
            table = root
            for part in re.findall(_KEY, m.group(1)):
                table = table.setdefault(_unquote(part), {})
                if not isinstance(table, dict):
                    raise InstallerError(f"table [{m.group(1)}] redefines a value", f"{where}:{n}", "fix the file")
            continue
        m = re.fullmatch(rf'({_KEY})\s*=\s*("(?:[^"\\]|\\.)*"|-?[0-9]+|true|false)\s*(?:#.*)?', line)
        if not m:
            raise InstallerError(f"unsupported line {line[:60]!r}", f"{where}:{n}",
                                 "use only tables and key = \"string\" / integer / true / false")
        key, v = _unquote(m.group(1)), m.group(2)
        value = _unquote(v) if v.startswith('"') else (v == "true") if v in ("true", "false") else int(v)
        if isinstance(value, str) and "\0bad" in value:
            raise InstallerError(f"unsupported escape in {line[:60]!r}", f"{where}:{n}", "use only \\\" \\\\ \\n \\t")
        if key in table:
            raise InstallerError(f"duplicate key {key}", f"{where}:{n}", "keep one")
        table[key] = value
    return root


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t") + '"'


# ---- the pin ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pin:
    commit: str  # 40 hex digits: the upstream commit the series applies to
    version: str  # upstream's version string at that commit (pyproject.toml)
    git_url: str
    manifest: str  # file name inside the pin directory (TSV: mode, blob SHA-1, size, library?, path)
    directory: str  # patches/<commit>
    default: bool = False
    sdist_name: str | None = None  # e.g. cosmos_predict2-1.0.9.tar.gz; None: upstream published no sdist
    sdist_sha256: str | None = None
    pypi_name: str | None = None
    checkpoints: dict = field(default_factory=dict)  # Hugging Face repo id -> revision

    @property
    def short(self) -> str:
        return self.commit[:8]

    @property
    def has_sdist(self) -> bool:
        return bool(self.sdist_name and self.sdist_sha256 and self.pypi_name)

    def manifest_path(self) -> str:
        return os.path.join(self.directory, self.manifest)

    def to_toml(self) -> str:
        lines = ["# The upstream commit this series applies to. Read only by installer/pin.py.",
                 f"commit = {_q(self.commit)}", f"version = {_q(self.version)}", f"git_url = {_q(self.git_url)}",
                 f"manifest = {_q(self.manifest)}  # in this directory",
                 f"default = {'true' if self.default else 'false'}  # true on exactly one pin: the PyPI-backed one"]
        if self.has_sdist:
            lines += ["", "[sdist]", f"pypi_name = {_q(self.pypi_name)}", f"name = {_q(self.sdist_name)}",
                      f"sha256 = {_q(self.sdist_sha256)}"]
        else:
            lines += ["# no [sdist]: upstream published no release of this commit; use --source git or a clone"]
        lines += ["", "# Hugging Face revisions pinned by upstream's scripts/download_checkpoints.py at this commit",
                  "[checkpoints]"] + [f"{_q(k)} = {_q(v)}" for k, v in sorted(self.checkpoints.items())]
        return "\n".join(lines) + "\n"


def from_file(path: str) -> Pin:
    try:
        with open(path, encoding="utf-8") as f:
            data = parse_toml(f.read(), path)
    except OSError as e:
        raise InstallerError(f"cannot read the pin file: {e.strerror}", path, "restore it from the checkout") from None
    directory = os.path.dirname(os.path.abspath(path))
    try:
        sd = data.get("sdist", {})
        p = Pin(commit=data["commit"], version=data["version"], git_url=data["git_url"], manifest=data["manifest"],
                directory=directory, default=bool(data.get("default", False)), sdist_name=sd.get("name"),
                sdist_sha256=sd.get("sha256"), pypi_name=sd.get("pypi_name"),
                checkpoints=dict(data.get("checkpoints", {})))
    except KeyError as e:
        raise InstallerError(f"pin file lacks {e.args[0]}", path, "add it (see docs/DESIGN.md)") from None
    if not re.fullmatch(r"[0-9a-f]{40}", p.commit) or os.path.basename(directory) != p.commit:
        raise InstallerError(f"pin commit {p.commit!r} is not the 40-digit name of its directory", path,
                             "name the directory patches/<commit>/ and write the same commit in the file")
    return p


def patches_root() -> str:
    """patches/ of the checkout this runs from, else the copy shipped in the wheel (_data/patches)."""
    checkout = os.path.join(os.path.dirname(_HERE), "patches")
    if os.path.isdir(checkout) and any(os.path.isfile(os.path.join(checkout, d, PIN_FILE))
                                       for d in os.listdir(checkout)):
        return checkout
    return os.path.join(_HERE, "_data", "patches")


def available(root: str | None = None) -> list[Pin]:
    root = root or patches_root()
    out = []
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        f = os.path.join(root, name, PIN_FILE)
        if os.path.isfile(f):
            out.append(from_file(f))
    return out


def default(root: str | None = None) -> Pin:
    pins = [p for p in available(root) if p.default]
    if len(pins) != 1:
        raise InstallerError(f"{len(pins)} pins are marked default = true, not one", root or patches_root(),
                             "mark exactly one patches/<commit>/upstream.toml as the default")
    return pins[0]


def find(commit: str, root: str | None = None) -> Pin:
    """A pin by its commit or an unambiguous prefix of at least 7 hex digits."""
    c = commit.strip().lower()
    pins = available(root)
    hits = [p for p in pins if p.commit.startswith(c)] if re.fullmatch(r"[0-9a-f]{7,40}", c) else []
    if len(hits) != 1:
        known = ", ".join(p.short + (" (default)" if p.default else "") for p in pins) or "none"
        raise InstallerError(f"no {'unique ' if hits else ''}pin {commit!r}", root or patches_root(),
                             f"use one of: {known}")
    return hits[0]


_ACTIVE: list = []  # the pin chosen for this process (select()); empty: the default


def select(commit: str | None) -> Pin:
    """Choose the pin every later active() call returns (None: the default)."""
    p = find(commit) if commit else default()
    _ACTIVE[:] = [p]
    return p


def active() -> Pin:
    """The selected pin; before any select(): $COSMOS_OVERLAY_PIN when set, else the default."""
    if not _ACTIVE:
        select(os.environ.get("COSMOS_OVERLAY_PIN") or None)
    return _ACTIVE[0]
