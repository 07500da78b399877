"""Errors that are the user's to fix: a bad config value, a missing or unreadable file.

``medgen <task>`` prints a :class:`UserError` as one line (``medgen <task>: error: ...``) and exits
with status 2; any other exception is a bug and keeps its traceback. Library functions raise it
with a message that names the key, value or file and says what is allowed.
"""

from __future__ import annotations


class UserError(ValueError):
    """A mistake in the user's settings or input files; the message says what and where.

    Subclasses ``ValueError`` so library callers that catch ``ValueError`` keep working.
    """


class ConfigError(UserError):
    """A config key holds a value of the wrong type or outside its allowed range."""

    def __init__(self, key: str, value: object, allowed: str) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r} is not allowed: {allowed}")


class InputFileError(UserError):
    """An input file is missing, unreadable, corrupt or of the wrong kind."""


class MissingFileError(InputFileError, FileNotFoundError):
    """A file or folder the user named does not exist (also a ``FileNotFoundError``)."""


class OutputExistsError(UserError, FileExistsError):
    """An output is already there and may not be replaced (also a ``FileExistsError``)."""
