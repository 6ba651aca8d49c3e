"""The project's own errors: what a user can fix (a config value, a data file, a checkpoint, a busy folder).

The command-line scripts print these as one line and exit non-zero; anything else is a bug and keeps its
traceback. Each subclasses ``ValueError`` too, so callers that caught ``ValueError`` still do.
"""


class UserError(ValueError):
    """Base of every error whose message tells the user what to change."""


class ConfigError(UserError):
    """A configuration key, value or override is invalid; the message names the key and what is allowed."""


def decode_utf8(data: bytes, where: str, error_cls: type[UserError]) -> str:
    """``data`` as UTF-8 text (a leading BOM dropped), or ``error_cls`` naming the line of the first bad byte:
    a user finds a line in an editor, not a byte offset."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        byte = data[e.start : e.start + 1]
        message = f"{where}:{line}: not UTF-8 text (byte {byte!r} on line {line}); save it as UTF-8"
        raise error_cls(message) from None
