"""Command line: apply, status, verify, revert, recover, digest, doctor, download, port.

Every failure prints one line `error: <what> (<where>). <what to do>.` and exits non-zero; argparse usage
errors exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from . import engine, pin
from .errors import InstallerError, OneLineParser, one_line

DEFAULT_TARGET = "cosmos-predict2"


_Parser = OneLineParser  # one line instead of usage + message


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m installer" if __package__ == "installer" else "cosmos-predict2-overlay",
                description="Patch overlay over nvidia-cosmos/cosmos-predict2 (pins: "
                            + ", ".join(p.short + (" default" if p.default else "") for p in pin.available())
                            + ") for Ascend NPU, CUDA without TransformerEngine, and CPU.")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=_Parser)

    def common(sp, target=True):
        if target:
            sp.add_argument("--target", default=DEFAULT_TARGET, help="upstream tree (default: ./cosmos-predict2)")
        sp.add_argument("--pin", default=None, metavar="COMMIT",
                        help="upstream commit (a patches/<commit>/ directory; default: the one the target was "
                             "applied with, else the PyPI-backed pin)")
        # hidden: let tests and maintainers point at another series / overlay
        sp.add_argument("--patches-dir", default=None, help=argparse.SUPPRESS)
        sp.add_argument("--overlay-dir", default=None, help=argparse.SUPPRESS)

    a = sub.add_parser("apply", help="fetch upstream (if needed), apply the series and the overlay")
    common(a)
    a.add_argument("--source", default=None,
                   help="pypi (the pin's sdist; default when it has one), git (GitHub clone of the pinned commit; "
                        "default otherwise), or PATH: an sdist .tar.gz, its unpacked directory, or a git clone/mirror")
    a.add_argument("--dry-run", action="store_true", help="show what would change; write nothing")
    a.add_argument("--force", action="store_true",
                   help="overwrite your edits of managed files (discarded) and foreign files in the way "
                        "(backed up; revert restores them)")
    s = sub.add_parser("status", help="pristine / applied / drifted / interrupted")
    common(s)
    rc = sub.add_parser("recover", help="finish or roll back an interrupted apply/revert, then print the status")
    common(rc)
    v = sub.add_parser("verify", help="exit 0 only if the tree equals exactly what the series produces")
    common(v)
    r = sub.add_parser("revert", help="restore pristine upstream bytes; your own files stay")
    common(r)
    r.add_argument("--force", action="store_true", help="discard user edits of managed files")
    r.add_argument("--dry-run", action="store_true")
    r.add_argument("--source", default=None,
                   help="where to take pristine bytes from if the state's backups are gone (pypi, git or PATH)")
    d = sub.add_parser("digest", help="print the tree digest (of --target, or of a fresh apply with --from-source)")
    common(d)
    d.add_argument("--from-source", default=None, metavar="SOURCE",
                   help="apply in memory from pypi/git/PATH instead of reading --target")
    g = d.add_mutually_exclusive_group()
    g.add_argument("--write", action="store_true", help="write patches/<commit>/TREE_DIGEST (with --from-source)")
    g.add_argument("--check", action="store_true", help="exit 1 if it differs from patches/<commit>/TREE_DIGEST")
    doc = sub.add_parser("doctor", help="check Python, torch, torch_npu, CANN, devices and libraries")
    doc.add_argument("--json", action="store_true", help="machine-readable output")
    doc.add_argument("--table", action="store_true", help="print the support table (Markdown) and exit")
    sub.add_parser("download", help="download checkpoints / datasets (see 'download --help')", add_help=False)
    sub.add_parser("port", help="move the series to another upstream commit (see 'port --help')", add_help=False)
    return p


def _select_pin(ns) -> None:
    """--pin, else the commit recorded in the target's state, else the default pin."""
    chosen = getattr(ns, "pin", None)
    target = getattr(ns, "target", None)
    applied = None
    if target and not getattr(ns, "from_source", None):  # digest --from-source reads no target
        import json
        try:
            with open(os.path.join(target, ".cosmos-overlay", "state.json"), encoding="utf-8") as f:
                applied = json.load(f).get("commit")
        except (OSError, ValueError, AttributeError):
            applied = None  # no or unreadable state: the engine reports it where it matters
    if applied and not chosen and not any(p.commit == applied for p in pin.available()):
        raise InstallerError(f"the target was applied over upstream {str(applied)[:12]}, which this overlay "
                             "version has no series for", target, "pass --pin explicitly or revert with the "
                             "overlay version that applied it")
    selected = pin.select(chosen or applied)
    if applied and selected.commit != applied and ns.cmd in ("apply", "revert"):
        raise InstallerError(f"the target was applied over upstream {str(applied)[:8]}, not {selected.short}",
                             target, f"run 'revert --target {target}' first, then 'apply --pin {selected.short}'")


def _source(ns) -> str:
    return ns.source or ("pypi" if pin.active().has_sdist else "git")


def _config(ns) -> engine.Config:
    cfg = engine.Config(target=getattr(ns, "target", DEFAULT_TARGET))
    if ns.patches_dir:
        cfg.patch_dir = os.path.abspath(ns.patches_dir)
    if ns.overlay_dir:
        cfg.overlay_dir = os.path.abspath(ns.overlay_dir)
    cfg.force = getattr(ns, "force", False)
    cfg.dry_run = getattr(ns, "dry_run", False)
    return cfg


def _digest(ns) -> int:
    from . import digest, fetch

    cfg = _config(ns)
    recorded_path = os.path.join(cfg.patch_dir, "TREE_DIGEST")
    if ns.from_source:
        _, managed = engine.build(fetch.fetch(ns.from_source).files, cfg, engine.load_ours(cfg))
        value = digest.tree_digest(managed)
    else:
        if ns.write:
            raise InstallerError("--write needs --from-source", "digest", "run 'digest --from-source pypi --write'")
        value = engine.tree_digest_of(os.path.abspath(cfg.target))
    if ns.write:
        with open(recorded_path, "w", encoding="utf-8") as f:
            f.write(f"{value}\n")
        print(f"{value}  (written to {recorded_path})")
        return 0
    print(value)
    if ns.check:
        rec = digest.read_recorded(recorded_path)
        if rec is None:
            raise InstallerError("no recorded tree digest", recorded_path,
                                 "run 'digest --from-source pypi --write' and commit the file")
        if rec != value:
            print(f"error: tree digest {value[:12]} differs from the recorded {rec[:12]} ({recorded_path}). "
                  "Regenerate with 'digest --from-source pypi --write' if the series changed on purpose.",
                  file=sys.stderr)
            return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "download":
        try:
            from .download import main as download_main
        except ImportError as e:
            print(f"error: the download command is unavailable ({e}). Reinstall cosmos-predict2-overlay.",
                  file=sys.stderr)
            return 1
        prog = "python -m installer" if __package__ == "installer" else "cosmos-predict2-overlay"
        return download_main(argv[1:], prog=f"{prog} download")
    if argv and argv[0] == "port":
        from .port import main as port_main
        return handled("port", lambda: port_main(argv[1:]))
    ns = _parser().parse_args(argv)
    if ns.cmd is None:
        _parser().print_help()
        return 2
    return handled(ns.cmd, lambda: _run(ns))


def _run(ns) -> int:
    if ns.cmd not in ("doctor",):
        _select_pin(ns)
    if ns.cmd == "apply":
        return engine.apply(_config(ns), _source(ns))
    if ns.cmd == "status":
        return engine.status(_config(ns))
    if ns.cmd == "recover":
        return engine.recover(_config(ns))
    if ns.cmd == "verify":
        return engine.verify(_config(ns))
    if ns.cmd == "revert":
        return engine.revert(_config(ns), ns.source)
    if ns.cmd == "digest":
        return _digest(ns)
    if ns.cmd == "doctor":
        from . import doctor
        return doctor.main(as_json=ns.json, table=ns.table)
    return 2


_INTERRUPTED = {  # what to do after Ctrl-C, per command
    "port": "Run 'python -m installer port --abort' to drop what the port left, then start it again.",
}


def handled(cmd: str, run) -> int:
    """The one error handler of every command (port too): run(), each failure as one line on stderr."""
    try:
        return run()
    except InstallerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # e.g. an unreadable source file: still one line
        print(InstallerError(e.strerror or e, e.filename or cmd, "check permissions and free space, then retry")
              .line(), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"error: interrupted (Ctrl-C) ({cmd}). " + _INTERRUPTED.get(cmd, "Run status: a write is never left "
              "half done (an interrupted one is finished or rolled back by recover, apply or revert)."),
              file=sys.stderr)
        return 130
    except Exception as e:  # a bug: keep the one-line contract, full traceback on request
        if os.environ.get("COSMOS_OVERLAY_DEBUG"):
            raise
        print(f"error: internal error {type(e).__name__}: {one_line(e)} ({cmd}). Rerun with "
              "COSMOS_OVERLAY_DEBUG=1 and report the traceback.", file=sys.stderr)
        return 1
