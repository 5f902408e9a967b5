"""Error types that the CLI turns into a one-line message and exit code 2.

Raise :class:`UserError` (or a subclass) for anything the *user* can fix: a missing
file, a corrupt image, a wrong CSV column, an impossible config value. The message
must name the culprit (file, row, key) and say what to do. Programming errors stay
ordinary exceptions and keep their traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input that the user can fix; printed as one line, exit code 2.

    Messages quote what the user gave (file names, CSV cells, keys of a damaged JSON file), which
    may hold any character: control characters (a newline) are written as escapes, so the message
    stays one line.
    """

    exit_code = 2

    def __init__(self, message: object = "", *args: object) -> None:
        super().__init__(one_line(str(message)), *args)


def one_line(text: str) -> str:
    """``text`` with its non-printable characters escaped (``"a\\nb"`` for a newline)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class ConfigError(UserError):
    """An invalid configuration value or key."""


class DataError(UserError):
    """A dataset problem: missing/corrupt file, wrong column, unknown class, ..."""


class CheckpointError(UserError):
    """A model directory or weights file that cannot be loaded safely."""
