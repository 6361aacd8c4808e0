"""One user-error type and formatter: overlay/cosmos_predict2/portable/user_error.py.

The installer (installer/errors.py loads it by path), the overlay scripts and the portable ops all raise a UserError
(or a thin subclass) and print `error: <what> (<where>). <What to do>.` through its one formatter. The grep tests
fail when a second exception base class, argparse parser class or line formatter for user errors, or a builtin
exception raised with a hand-written `error: ...` line, appears in installer/ or overlay/. No test doubles.
"""

from __future__ import annotations

import ast
import importlib.util
import io
import re
import sys
from pathlib import Path

import pytest

from installer import errors

REPO = Path(__file__).resolve().parents[2]
USER_ERROR = REPO / "overlay" / "cosmos_predict2" / "portable" / "user_error.py"
ue = errors._user_error  # the module object every loader shares (sys.modules key below)


def _sources():
    return [p for p in [*(REPO / "installer").rglob("*.py"), *(REPO / "overlay").rglob("*.py")]
            if "__pycache__" not in p.parts]


def test_formatter_parts_and_folding():
    assert str(ue.UserError("x is missing", "--flag", "pass --flag=Y")) == "x is missing (--flag). Pass --flag=Y."
    assert ue.UserError("x", "w", "do it.").line() == "error: x (w). Do it."
    assert ue.line("x", "", "do it") == "error: x. Do it."
    assert ue.line("x", "w") == "error: x (w)."
    # a message already phrased as the whole line goes in as `what` and comes out unchanged
    whole = "no *.mp4 files in /d/videos. Put the videos there first."
    assert ue.message(whole) == whole and ue.message(ue.message(whole)) == whole
    # one line whatever the parts hold; credentials in URLs redacted in every part
    e = ue.UserError("cannot clone\nhttps://u:pw@h/x.git", "git:\n  fatal", "retry with https://h/?token=abc")
    assert str(e) == "cannot clone https://***@h/x.git (git: fatal). Retry with https://h/?token=***."
    assert (e.what, e.where, e.todo) == ("cannot clone https://***@h/x.git", "git: fatal",
                                         "retry with https://h/?token=***")
    assert e.exit_code == 1 and isinstance(e, Exception)


def test_prefixed_subclass_and_exit_code():
    class OpError(ue.UserError, ValueError):
        prefixed = True
        exit_code = 2

    e = OpError("bad shape", "portable.rope", "use sbhd")
    assert str(e) == e.line() == "error: bad shape (portable.rope). Use sbhd."
    assert isinstance(e, ValueError)
    # what pickle does with it (e.g. back from a worker process; pickling itself needs the package importable)
    rebuild, args, state = ue.UserRuntimeError("lost\nrank", "w", "retry").__reduce__()
    again = rebuild(*args)
    again.__dict__.update(state)
    assert str(again) == "error: lost rank (w). Retry." and again.what == "lost rank"
    err = io.StringIO()
    assert ue.report(e, file=err) == 2 and err.getvalue() == "error: bad shape (portable.rope). Use sbhd.\n"


def test_run_main_turns_user_errors_and_ctrl_c_into_one_line(capsys):
    def main(flag):
        if flag == "fail":
            raise ue.UserError("it failed", "here", "fix it")
        if flag == "stop":
            raise KeyboardInterrupt
        return 0

    assert ue.run_main(main, "ok") == 0
    assert ue.run_main(main, "fail") == 1
    assert capsys.readouterr().err == "error: it failed (here). Fix it.\n"
    assert ue.run_main(main, "stop", interrupted="interrupted (keyboard). Run again.") == 1
    assert capsys.readouterr().err == "error: interrupted (keyboard). Run again.\n"
    with pytest.raises(KeyboardInterrupt):
        ue.run_main(main, "stop")
    with pytest.raises(SystemExit) as ex:
        ue.die("gone (x). Do y.", code=3)
    assert ex.value.code == 3 and capsys.readouterr().err == "error: gone (x). Do y.\n"


def test_parser_usage_error_is_one_line(capsys):
    p = ue.OneLineParser(prog="tool")
    p.add_argument("--kind", choices=("a", "b"))
    with pytest.raises(SystemExit) as ex:
        p.parse_args(["--kind", "c"])
    assert ex.value.code == 2
    assert capsys.readouterr().err == ("error: argument --kind: invalid choice: 'c' (choose from 'a', 'b') (tool). "
                                       "Run 'tool --help'.\n")
    q = ue.OneLineParser(prog="train.sh", error_where="train.sh arguments", error_todo="Run `bash train.sh --help`")
    with pytest.raises(SystemExit):
        q.parse_args(["--nope"])
    assert capsys.readouterr().err == ("error: unrecognized arguments: --nope (train.sh arguments). "
                                       "Run `bash train.sh --help`.\n")


def test_one_module_object_for_every_loader():
    """installer/errors.py, the device layer (loaded by path, as doctor and preflight do) and a by-path load of a
    script share ONE UserError class, so `except UserError` catches every subclass."""
    assert sys.modules["cosmos_predict2.portable.user_error"] is ue
    assert Path(ue.__file__).resolve() == USER_ERROR
    assert issubclass(errors.InstallerError, ue.UserError)
    from installer.download import DownloadError
    from installer.patch import PatchError
    assert issubclass(DownloadError, ue.UserError) and issubclass(PatchError, ue.UserError)
    spec = importlib.util.spec_from_file_location("_device_one_error", USER_ERROR.parent / "device.py")
    dev = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dev)
    assert dev.UserError is ue.UserError and issubclass(dev.ForcedDeviceAbsent, ue.UserError)
    assert issubclass(dev.ForcedDeviceAbsent, RuntimeError)
    # the scripts' one loader (overlay/scripts/user_errors.py), loaded by path as train.sh's scripts import it
    spec = importlib.util.spec_from_file_location("_scripts_user_errors",
                                                  REPO / "overlay" / "scripts" / "user_errors.py")
    scripts_errors = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scripts_errors)
    assert scripts_errors.UserError is ue.UserError and scripts_errors.OneLineParser is ue.OneLineParser


def _bases(node: ast.ClassDef) -> set[str]:
    return {ast.unparse(b) for b in node.bases}


EXC_BASES = {"Exception", "BaseException", "RuntimeError", "ValueError", "OSError"}
TEMPLATE = re.compile(r"""["']error: \{[^}]+\} \(\{""")  # `error: {what} ({where})`: a line formatter's shape
# a builtin exception holding a hand-written error line (use a UserError subclass, or the builtin around line(...))
HAND_WRITTEN = re.compile(r"""raise [A-Za-z]*(Error|Exception)\(\s*f?["']error: """)


def _scan(paths):
    """(exception classes for user errors not built on UserError, argparse parser classes, own line formatters)."""
    error_classes, parsers, formatters = [], [], []
    for path in paths:
        text = path.read_text(encoding="utf-8")
        rel = str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                bases = _bases(node)
                if node.name.endswith("Error") and bases & EXC_BASES and not any("UserError" in b for b in bases):
                    error_classes.append(f"{rel}:{node.name}")
                if any(b.endswith("ArgumentParser") for b in bases):
                    parsers.append(f"{rel}:{node.name}")
            if isinstance(node, ast.FunctionDef) and node.name in ("die", "_err", "_fail", "fail", "error_line"):
                body = ast.unparse(node)
                if "error: " in body and "UserError" not in body and "_user_error" not in body:
                    formatters.append(f"{rel}:{node.name}")
        if path != USER_ERROR and TEMPLATE.search(text):
            formatters.append(f"{rel}: an `error: {{...}} ({{...}})` template")
        formatters += [f"{rel}: raise ...(\"error: ...\")" for _ in HAND_WRITTEN.finditer(text)]
    return error_classes, parsers, formatters


def test_no_second_error_type_parser_class_or_formatter():
    error_classes, parsers, formatters = _scan(_sources())
    assert error_classes == ["overlay/cosmos_predict2/portable/user_error.py:UserError"], error_classes
    assert parsers == ["overlay/cosmos_predict2/portable/user_error.py:OneLineParser"], parsers
    assert formatters == [], formatters


def test_the_scan_sees_a_second_type(tmp_path):
    """The scan above is not vacuous: the patterns this module replaced are each caught."""
    bad = tmp_path / "bad.py"
    bad.write_text('import argparse\n'
                   'class ScriptError(Exception):\n    pass\n'
                   'class P(argparse.ArgumentParser):\n    pass\n'
                   'def die(msg):\n    print(f"error: {msg}")\n'
                   'def report(what, where, todo):\n    return f"error: {what} ({where}). {todo}."\n'
                   'def check(x):\n    raise ValueError(\n        f"error: {x} is bad (here). Fix it.")\n')
    error_classes, parsers, formatters = _scan([bad])
    assert error_classes == ["bad.py:ScriptError"] and parsers == ["bad.py:P"]
    assert formatters == ["bad.py:die", "bad.py: an `error: {...} ({...})` template",
                          'bad.py: raise ...("error: ...")']
