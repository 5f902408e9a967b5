"""Error types that the CLI turns into a one-line message and exit code 2.

Raise :class:`UserError` (or a subclass) for anything the *user* can fix: a missing
file, a corrupt image, a wrong CSV column, an impossible config value. The message
must name the culprit (file, row, key) and say what to do. Programming errors stay
ordinary exceptions and keep their traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input that the user can fix; printed as one line, exit code 2."""

    exit_code = 2


class ConfigError(UserError):
    """An invalid configuration value or key."""


class DataError(UserError):
    """A dataset problem: missing/corrupt file, wrong column, unknown class, ..."""


class CheckpointError(UserError):
    """A model directory or weights file that cannot be loaded safely."""
