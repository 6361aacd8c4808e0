"""The one exception type every user-facing failure goes through (printed as one line by the CLI)."""


class InstallerError(Exception):
    """`error: <what> (<where>). <what to do>.` — the message is the whole line after 'error: '."""

    def __init__(self, what: str, where: str = "", todo: str = ""):
        self.what, self.where, self.todo = what, where, todo
        msg = what + (f" ({where})" if where else "")
        if todo:
            msg += ". " + todo[0].upper() + todo[1:].rstrip(".")
        super().__init__(msg.rstrip(".") + ".")
