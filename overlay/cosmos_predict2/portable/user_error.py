"""The one user-error type and its one-line formatter, shared by the installer, the overlay scripts and the ops.

Every user-facing failure is ONE line on stderr, `error: <what> (<where>). <What to do>.`, and an exit status != 0:

    raise UserError("dataset directory X does not exist", "--dataset", "pass --dataset=<a directory with videos/>")
    -> error: dataset directory X does not exist (--dataset). Pass --dataset=<a directory with videos/>.

A message already phrased as a whole line goes in as `what` alone (`UserError("no *.mp4 files in X. Put the
videos there first.")`). str(e) is the line without the `error: ` prefix (what the installer's CLI and callers that
add context print); e.line() is the whole line. UserValueError / UserRuntimeError / UserNotImplementedError are
UserErrors that callers also catch as the builtin type (the ops, the device layer); their str is the whole line,
since they reach the user as the last line of a traceback. Credentials in URLs are redacted and newlines folded in
all three parts. `OneLineParser` is the argparse parser whose usage errors are that one line (exit 2);
`run_main(main, ...)` runs a main() and turns a UserError (or Ctrl-C) into its line and exit status; `die(text)`
prints one and exits.

Errors raised inside DataLoader workers stay builtin types holding `line(...)`: torch rebuilds a worker's
exception as `type(text)` from its traceback text, which a UserError would fold into one line.

Standard library only. ONE module object per process (sys.modules key `cosmos_predict2.portable.user_error`), so
`except UserError` catches every subclass: imported as a package module (training, the ops, the data pipeline) or
loaded by file path under that same key (installer/errors.py from the installer's resources; device.py,
autoload.py and precision.py when they are themselves loaded by path; the scripts, which tests also load by path).
Do not define a second exception class or formatter for user errors: subclass UserError
(tests/installer/test_one_error.py fails otherwise).
"""

from __future__ import annotations

import argparse
import re
import sys

# scheme://user:password@host -> scheme://***@host ; ?token=... / &password=... -> ?token=***
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@'\"]+@")
_SECRET_QUERY = re.compile(r"(?i)([?&;](?:access_token|token|key|api_key|apikey|password|passwd|secret|sig|"
                           r"signature|auth|x-amz-signature|x-amz-credential)=)[^&;#\s'\"]+")


def redact_url(text) -> str:
    """The text with credentials in any URL inside it replaced by *** (user:password@, token=... query values)."""
    if text is None:
        return ""
    return _SECRET_QUERY.sub(r"\1***", _USERINFO.sub(r"\1***@", str(text)))


def one_line(text) -> str:
    """Redacted, and newlines (e.g. in a wrapped library message) folded so the error stays one line."""
    return " ".join(redact_url(text).split())


def message(what, where="", todo="") -> str:
    """THE formatter: `<what> (<where>). <What to do>.` (no `error: ` prefix; empty parts left out)."""
    what, where, todo = one_line(what), one_line(where), one_line(todo)
    msg = what + (f" ({where})" if where else "")
    if todo:
        msg += ". " + todo[0].upper() + todo[1:].rstrip(".")
    return msg.rstrip(".") + "."


def line(what, where="", todo="") -> str:
    """The whole line the user sees: `error: ` + message(what, where, todo)."""
    return "error: " + message(what, where, todo)


class UserError(Exception):
    """A failure the user can fix: `error: <what> (<where>). <What to do>.` str(e) is the message without the
    `error: ` prefix (or the whole line when the class sets `prefixed`: errors that reach the user as the last line
    of a traceback, e.g. the device layer's); e.line() is always the whole line; e.exit_code the status run_main
    returns (default 1)."""

    exit_code = 1
    prefixed = False

    def __init__(self, what: str, where: str = "", todo: str = ""):
        self.what, self.where, self.todo = one_line(what), one_line(where), one_line(todo)
        self.message = message(what, where, todo)
        super().__init__(self.line() if self.prefixed else self.message)

    def line(self) -> str:
        return "error: " + self.message

    def __reduce__(self):  # pickled (e.g. back from a worker process) without formatting the text a second time
        return _restore, (type(self), self.args), self.__dict__


def _restore(cls, args):
    obj = cls.__new__(cls)
    obj.args = args
    return obj


class UserValueError(UserError, ValueError):
    """A UserError that callers catch as ValueError (the ops' argument checks); str is the whole line."""

    prefixed = True


class UserRuntimeError(UserError, RuntimeError):
    """A UserError that callers catch as RuntimeError (the ops, the data loader); str is the whole line."""

    prefixed = True


class UserNotImplementedError(UserError, NotImplementedError):
    """A UserError for an input the ops do not support (caught as NotImplementedError); str is the whole line."""

    prefixed = True


class OneLineParser(argparse.ArgumentParser):
    """argparse with usage errors as ONE line (naming what argparse names, e.g. the valid choices) and exit 2:
    `error: <argparse's message> (<error_where, default the prog>). <error_todo, default Run '<prog> --help'>.`"""

    def __init__(self, *args, error_where: str | None = None, error_todo: str | None = None, **kwargs):
        self.error_where, self.error_todo = error_where, error_todo
        super().__init__(*args, **kwargs)

    def usage_error(self, text: str) -> UserError:
        return UserError(text, self.error_where or self.prog, self.error_todo or f"Run '{self.prog} --help'")

    def error(self, text):  # argparse's default prints usage + message over several lines
        self.exit(2, self.usage_error(text).line() + "\n")


def report(exc: UserError, file=None) -> int:
    """Print the error's line on stderr (or file); return its exit status."""
    print(exc.line(), file=sys.stderr if file is None else file, flush=True)
    return exc.exit_code


def die(text, code: int = 1):
    """Print `error: <text>` for a message already phrased as the whole line (through UserError) and exit."""
    report(UserError(text))
    sys.exit(code)


def run_main(main, *args, interrupted: str | None = None, interrupted_code: int = 1, **kwargs) -> int:
    """main(*args, **kwargs) with a UserError turned into its one line and exit status; Ctrl-C into the line
    `error: <interrupted>` and interrupted_code when `interrupted` says what the user should know (else it
    propagates)."""
    try:
        return main(*args, **kwargs)
    except UserError as exc:
        return report(exc)
    except KeyboardInterrupt:
        if interrupted is None:
            raise
        report(UserError(interrupted))
        return interrupted_code
