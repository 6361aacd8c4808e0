"""The one exception type every user-facing failure goes through (printed as one line by the CLI), and the URL
redaction every message goes through."""

from __future__ import annotations

import re

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


class InstallerError(Exception):
    """`error: <what> (<where>). <what to do>.` — the message is the whole line after 'error: '."""

    def __init__(self, what: str, where: str = "", todo: str = ""):
        what, where, todo = one_line(what), one_line(where), one_line(todo)
        self.what, self.where, self.todo = what, where, todo
        msg = what + (f" ({where})" if where else "")
        if todo:
            msg += ". " + todo[0].upper() + todo[1:].rstrip(".")
        super().__init__(msg.rstrip(".") + ".")
