"""The project's own errors: what a user can fix (a config value, a data file, a checkpoint, a busy folder).

The command-line scripts print these as one line and exit non-zero; anything else is a bug and keeps its
traceback. Each subclasses ``ValueError`` too, so callers that caught ``ValueError`` still do.
"""


class UserError(ValueError):
    """Base of every error whose message tells the user what to change."""


class ConfigError(UserError):
    """A configuration key, value or override is invalid; the message names the key and what is allowed."""
